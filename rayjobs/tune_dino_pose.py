r"""Tune the DINO pose head (frozen DINOv2/v3) with Ray Tune + Optuna (TPE) + ASHA on val/AP over Ray Train trials.

examples:
  python rayjobs/tune_dino_pose.py                              # demo: the DINO job's smoke run, 4 trials
  python rayjobs/tune_dino_pose.py --train_image_dir /coco/images/train2017 \
      --train_annotation_file /coco/annotations/person_keypoints_train2017.json \
      --val_image_dir /coco/images/val2017 \
      --val_annotation_file /coco/annotations/person_keypoints_val2017.json \
      --model_name /models/dinov2-base --epochs 20 --num-samples 20 --max-concurrent-trials 4 \
      --gpus-per-worker 1 --cpus-per-worker 8                   # one GPU per trial, four trials at once
  ray job submit --working-dir . -- python rayjobs/tune_dino_pose.py --train_image_dir /shared/coco/train2017 \
      --train_annotation_file /shared/coco/person_keypoints_train2017.json --val_image_dir /shared/coco/val2017 \
      --val_annotation_file /shared/coco/person_keypoints_val2017.json --storage-path s3://bucket/tune

Every trial is `rayjobs/train_dino_pose.py`'s Ray Train job (configs/dino_pose_base.yaml + the guide's flags below +
--set + the sampled params of search_spaces/dino_pose.yaml: lr, decoder width, heatmap sigma, occlusion), validated
with COCO AP (every train.val_interval epochs); ASHA stops the trials whose val/AP falls behind. The guide's values
of those params are the space's first trial (start_with), so the summary puts the winner next to them. With no COCO
paths every trial is the DINO job's smoke run (a tiny random DINOv2 built from a config, nothing downloaded, 2
epochs on 4 images): it shows that the search runs here; its AP means nothing. Re-running the same command resumes
the experiment. At the end, <storage>/<name>/summary/ holds results.parquet/.csv, best_config.yaml (a ready config
for `python rayjobs/train_dino_pose.py --config ...`), best_checkpoint/ (the training state and model.pt Ray Train
kept), best_model.pth (the guide's format, which loop.load_pose_model loads), plots/*.png and summary.json (the
search's compute, the preset's val/AP next to the winner's).
Not for this job (STGCN++ only, refused): --data, --folds, --objective, --mo-sampler.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recognizer_core.config import ConfigError  # noqa: E402
from recognizer_core.tune.cli import (STGCN_ONLY_OPTIONS, JobCli, TunePlan, _overrides_dict,  # noqa: E402
                                      add_tune_args, finish, plan_from_args, print_plan)

JOB = "dino_pose"
METRICS = ("val/AP", "val/AP50", "val/AP75", "val/AR", "val/loss", "train/loss")
DEFAULT_SPACE = "search_spaces/dino_pose.yaml"
# The guide's flags of train_dino_pose.py that make sense for a search (--lr is searched; --checkpoint_dir and the
# W&B names are per trial: --storage-path / --name).
FLAGS = ("train_image_dir", "train_annotation_file", "val_image_dir", "val_annotation_file", "model_name",
         "image_size", "heatmap_size", "batch_size", "epochs", "num_workers")
PATH_FIELDS = ("data.train_image_dir", "data.train_annotation_file", "data.val_image_dir", "data.val_annotation_file",
               "data.val_bbox_file", "run.resume_from")
REFUSED = {
    "data": "--data names an STGCN++ skeleton dataset; the DINO pose job reads COCO: give --train_image_dir, "
            "--train_annotation_file, --val_image_dir and --val_annotation_file (or --set data.<field>=...)",
    "folds": "--folds is STGCN++ only (folds of a skeleton dataset by source video); DINO pose trials are scored "
             "on the COCO val set",
    "objectives": "--objective is STGCN++ only (its latency / parameter measure); tune DINO pose on val/AP alone",
    "mo_sampler": "--mo-sampler is for multi-objective searches (--objective), which are STGCN++ only",
}


def _demo(space, args: argparse.Namespace) -> tuple[dict, str]:
    """No COCO paths: the DINO job's own smoke run (`coco_pose.demo`), then the space's `demo:` overrides. Its
    tiny backbone is built once beside the experiments (a local folder the trials read; with a remote storage, the
    job's local outputs folder)."""
    from recognizer_core.coco_pose.demo import SHARED_COCO, smoke_run_overrides
    from recognizer_core.storage import is_remote, output_uri
    from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
    from recognizer_core.tune.tuner import default_storage

    storage = output_uri(args.storage_path or default_storage())
    root = storage if not is_remote(storage) else output_uri("work_dirs/tune_datasets")
    # Its SMOKE RUN line is the train job's (the DEMO line says it here); transformers' save bar is noise.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        items = smoke_run_overrides(DinoPoseJobConfig.model_validate({"run": {"storage_path": root}}))
    what = (f"the 4 COCO val2017 images in {SHARED_COCO}" if (SHARED_COCO / "test_coco.json").is_file()
            else "4 drawn stick figures")
    return {**_overrides_dict(items, DinoPoseJobConfig), **space.demo}, (
        f"no COCO data given (--train_image_dir ...), so every trial is the DINO pose job's smoke run: a tiny random "
        f"DINOv2 (2 layers, width 32, nothing downloaded), 64x48 crops, 2 epochs on {what}. It shows that the "
        "search runs here; its val/AP means nothing")


CLI = JobCli(data_fields=PATH_FIELDS[:4], demo=_demo, smoke_overrides={}, refused=REFUSED)


def build_parser() -> argparse.ArgumentParser:
    from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
    from train_dino_pose import GUIDE_FLAGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tune_args(parser, DEFAULT_SPACE, DinoPoseJobConfig, hidden=STGCN_ONLY_OPTIONS)
    g = parser.add_argument_group("the DINO pose guide's flags (shortcuts for --set of every trial)")
    for flag in FLAGS:
        kind = {"image_size": dict(type=int, nargs=2, metavar=("H", "W")),
                "heatmap_size": dict(type=int, nargs=2, metavar=("H", "W")),
                "batch_size": dict(type=int), "epochs": dict(type=int), "num_workers": dict(type=int)}.get(flag, {})
        g.add_argument(f"--{flag}", help=GUIDE_FLAGS[flag], **kind)
    return parser


def prepare(args: argparse.Namespace) -> TunePlan:
    """Everything before Ray starts: the plan, the trials' starting config checked as a trial would use it
    (data present, paths absolute, resume_from readable), and a resumed experiment's request matched."""
    from recognizer_core.storage import exists, is_remote, to_uri
    from recognizer_core.train.cpu_malloc import require_tcmalloc
    from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
    from recognizer_core.train.dino_pose.job import check_resume_from
    from recognizer_core.train.ray_run import private_ray
    from recognizer_core.tune.search_space import get_dotted
    from recognizer_core.tune.tuner import check_resumable
    from train_dino_pose import GUIDE_FLAGS

    repo = Path(__file__).resolve().parents[1]
    if not Path(args.space).exists() and (repo / args.space).exists():  # the default runs from any directory
        args.space = str(repo / args.space)
    flags = [f"{GUIDE_FLAGS[f]}={json.dumps(getattr(args, f))}" for f in FLAGS if getattr(args, f) is not None]
    args.overrides = flags + list(args.overrides)  # file < flags < --set, as in train_dino_pose.py
    plan = plan_from_args(args, config_cls=DinoPoseJobConfig, job=JOB, metrics=METRICS, cli=CLI)
    base = plan.space.build_config(DinoPoseJobConfig, {}, plan.extra)
    try:
        base.require_data()  # a partly given set of COCO paths is an error, not a demo
        check_resume_from(base.run.resume_from)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None
    data = base.model_dump()
    # On a cluster (--address / RAY_ADDRESS) the workers may see storage this driver does not (a shared mount on
    # the GPU nodes only): there a path missing here is a warning, as in train_dino_pose.py, and the trial checks.
    local = private_ray(args.address)
    missing_here = []
    for key in PATH_FIELDS:
        value = get_dotted(data, key, None)
        try:
            missing = bool(value) and key != "run.resume_from" and not exists(value)
        except OSError as err:  # an unreachable store, no credentials: one line, not a pyarrow traceback
            raise ConfigError(f"{key}={value}: cannot be read ({err})") from None
        if missing and local:
            raise ConfigError(f"{key}={value}: no such file or folder")
        if missing:
            missing_here.append(f"{key}={value}")
        elif value and not is_remote(value):
            plan.extra[key] = to_uri(value)  # a trial's working directory is not this one
    backbone = base.model.backbone
    if Path(backbone).expanduser().exists():
        plan.extra["model.backbone"] = to_uri(backbone)
    elif backbone.startswith(("/", ".", "~")) and local:  # a Hub name is checked by the download, in the trial
        raise ConfigError(f"model.backbone={backbone}: no such folder (a local DINO checkpoint, or a Hub name such "
                          "as facebook/dinov2-base)")
    elif backbone.startswith(("/", ".", "~")):
        missing_here.append(f"model.backbone={backbone}")
    if missing_here:
        print(f"warning: not visible on this driver (the cluster's workers must see them): {'; '.join(missing_here)}",
              file=sys.stderr, flush=True)
    require_tcmalloc(base.scaling.cpu_malloc, base.scaling.tcmalloc_path)
    plan.space.build_config(DinoPoseJobConfig, {}, plan.extra)
    check_resumable(plan.space, DinoPoseJobConfig, plan.options, extra_overrides=plan.extra)
    return plan


def export_best(cfg, checkpoint_dir: Path, out_dir: Path, *, trial_path: str = "") -> list[Path]:
    """The best trial's model as the guide's `best_model.pth`: the trial's own (written when val/AP improved, so
    the first epoch to reach its best) when it holds the score of the checkpoint Ray kept; else (a remote run
    folder, or a trial stopped before the loop wrote it) that checkpoint's model.pt, the same format."""
    import torch

    from recognizer_core.storage import is_remote
    from recognizer_core.train.dino_pose.loop import BEST_FILE, MODEL_FILE

    def val_ap(path: Path) -> float | None:
        return torch.load(path, map_location="cpu", weights_only=True)["metrics"].get("val/AP")

    kept = Path(checkpoint_dir) / MODEL_FILE
    own = Path(trial_path) / "train" / BEST_FILE if trial_path and not is_remote(trial_path) else None
    source = own if own is not None and own.is_file() and val_ap(own) == val_ap(kept) else kept
    return [Path(shutil.copy2(source, Path(out_dir) / BEST_FILE))]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        plan = prepare(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_plan(plan)

    from recognizer_core.ray_runtime import start_ray_or_exit
    from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
    from recognizer_core.train.dino_pose.job import build_trainer
    from recognizer_core.tune.tuner import run_tuning

    start_ray_or_exit("tune", args.address, num_cpus=args.num_cpus)
    try:
        run = run_tuning(plan.space, DinoPoseJobConfig, build_trainer, plan.options, extra_overrides=plan.extra)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = finish(run, plan, DinoPoseJobConfig, export_best=export_best)
    return 0 if "best_trial" in summary else 1


if __name__ == "__main__":
    from recognizer_core.ray_runtime import run_job

    sys.exit(run_job(main))
