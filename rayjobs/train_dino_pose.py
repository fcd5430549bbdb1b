r"""Train the DINO pose model (frozen DINOv2/DINOv3 + stem + UNet heatmap head) on COCO keypoints with Ray Train.

    python rayjobs/train_dino_pose.py \
        --train_image_dir /coco/images/train2017 \
        --train_annotation_file /coco/annotations/person_keypoints_train2017.json \
        --val_image_dir /coco/images/val2017 \
        --val_annotation_file /coco/annotations/person_keypoints_val2017.json \
        --model_name facebook/dinov2-base --image_size 512 512 --heatmap_size 512 512 \
        --lr 1e-4 --batch_size 16 --epochs 100 --num_workers 4 --checkpoint_dir checkpoints_human_pose \
        --set scaling.num_workers=4 --set scaling.use_gpu=true   # 4 GPUs (DDP over NCCL)

Without `scaling.use_gpu=true` (the preset says false) the workers train on CPUs (gloo). Before Ray starts, the
COCO paths must exist and be readable, and a private local Ray (no --address / RAY_ADDRESS) must have the GPUs asked
for: one `error:` line, exit status 2 (with a cluster, a path the driver cannot see is a warning: the workers check).
The guide's flags are shortcuts for config fields (file < flags < --set). The run folder is
checkpoint_dir/run.name: Ray Train checkpoints (best by val/AP + latest), logs/ (TensorBoard, W&B offline,
vis/*.png skeletons), config.yaml, and best_model.pth (when val/AP improves) and latest_checkpoint.pth (with every
checkpoint), written during training. Re-running the same command continues from the latest checkpoint.

With no COCO paths at all (`python rayjobs/train_dino_pose.py`) it runs a SMOKE RUN: a tiny random DINOv2 built
from a config (nothing downloaded), 2 epochs on the 4 shared COCO images (../shared/data/coco) or drawn stick
figures, to check that the job runs; see recognizer_core/coco_pose/demo.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from recognizer_core.coco_pose.demo import smoke_run_overrides, wants_smoke_run  # noqa: E402
from recognizer_core.config import ConfigError  # noqa: E402
from recognizer_core.config_args import add_config_args, config_from_args  # noqa: E402
from recognizer_core.storage import exists, join_uri, write_text  # noqa: E402
from recognizer_core.train.cpu_malloc import require_tcmalloc  # noqa: E402
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dino_pose_base.yaml"
# The DINO pose guide's train_human_pose.py flags -> config fields.
GUIDE_FLAGS = {
    "train_image_dir": "data.train_image_dir", "train_annotation_file": "data.train_annotation_file",
    "val_image_dir": "data.val_image_dir", "val_annotation_file": "data.val_annotation_file",
    "model_name": "model.backbone", "image_size": "data.image_size", "heatmap_size": "data.heatmap_size",
    "lr": "optim.lr", "batch_size": "train.batch_size", "epochs": "train.epochs", "num_workers": "data.num_workers",
    "checkpoint_dir": "run.storage_path", "wandb_project": "wandb.project", "wandb_run_name": "wandb.run_name",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser, DinoPoseJobConfig, default_config=str(DEFAULT_CONFIG))
    g = parser.add_argument_group("the DINO pose guide's flags (shortcuts for config fields)")
    for flag in ("train_image_dir", "train_annotation_file", "val_image_dir", "val_annotation_file", "model_name",
                 "checkpoint_dir", "wandb_project", "wandb_run_name"):
        g.add_argument(f"--{flag}", help=GUIDE_FLAGS[flag])
    g.add_argument("--image_size", type=int, nargs=2, metavar=("H", "W"), help="data.image_size")
    g.add_argument("--heatmap_size", type=int, nargs=2, metavar=("H", "W"), help="data.heatmap_size")
    g.add_argument("--lr", type=float, help="optim.lr")
    for flag in ("batch_size", "epochs", "num_workers"):
        g.add_argument(f"--{flag}", type=int, help=GUIDE_FLAGS[flag])
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    return parser


def guide_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    for flag, field in GUIDE_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{field}={json.dumps(value)}")  # JSON is YAML: paths stay strings, sizes stay lists
    if args.wandb_project or args.wandb_run_name:
        out.append("wandb.enabled=true")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.overrides = guide_overrides(args) + list(args.overrides)
    try:
        cfg = config_from_args(DinoPoseJobConfig, args)
        if wants_smoke_run(cfg):  # no COCO paths at all: a tiny smoke run that says so
            args.overrides = smoke_run_overrides(cfg) + list(args.overrides)
            cfg = config_from_args(DinoPoseJobConfig, args)
        cfg.require_data()
        require_tcmalloc(cfg.scaling.cpu_malloc, cfg.scaling.tcmalloc_path)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import ray.train

    from recognizer_core.ray_runtime import start_ray_or_exit
    from recognizer_core.train.dino_pose.job import build_trainer, check_coco_inputs, default_run_config, \
        resolve_paths
    from recognizer_core.train.dino_pose.loop import BEST_FILE, LATEST_FILE
    from recognizer_core.train.ray_run import check_local_gpus, private_ray, run_uri

    cfg = resolve_paths(cfg)
    try:  # before Ray starts: a missing COCO folder or a GPU this machine lacks is one line, not a worker traceback
        check_local_gpus(cfg.scaling, args.address)
        check_coco_inputs(cfg, private_ray=private_ray(args.address))
    except (ValueError, OSError) as err:  # ConfigError, FileNotFoundError
        print(f"error: {err}", file=sys.stderr)
        return 2
    start_ray_or_exit("dino_pose", args.address)
    try:
        trainer = build_trainer(cfg)
    except (ValueError, OSError) as err:  # ConfigError (what the started Ray lacks), run.resume_from not found
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = run_uri(default_run_config(cfg))
    write_text(join_uri(run_dir, "config.yaml"), yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    def guide_files() -> dict[str, str]:  # written by the loop during training, so also after a failure
        return {name: uri for name, uri in (("best_model", join_uri(run_dir, BEST_FILE)),
                                            ("latest_checkpoint", join_uri(run_dir, LATEST_FILE))) if exists(uri)}

    try:
        result = trainer.fit()
    except Exception as err:  # noqa: BLE001 - Ray Train V2 raises what failed the run: one JSON line, exit 1
        print(json.dumps({"run_dir": str(run_dir), "error": f"{type(err).__name__}: {err}"[:2000], **guide_files()}))
        return 1
    metrics = result.metrics or {}
    print(json.dumps({
        "run_dir": str(run_dir), "epoch": metrics.get("epoch"),
        **{k: metrics.get(k) for k in ("train/loss", "val/loss", "val/AP", "val/AP50", "val/AR", "best/AP")},
        **guide_files(), "latest_ray_checkpoint": result.checkpoint.path if result.checkpoint else None,
    }))
    return 0


if __name__ == "__main__":
    from recognizer_core.ray_runtime import run_job

    sys.exit(run_job(main))
