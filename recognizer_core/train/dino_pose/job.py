"""Ray Train job of DINO pose: `build_trainer(cfg, run_config=None) -> TorchTrainer`.

DDP over the workers (NCCL on GPUs, gloo on CPUs), on the shared core (`recognizer_core.train.ray_run`): a
checkpoint with every validated epoch (full training state + inference weights); Ray keeps the best
`checkpoint.num_to_keep` by val/AP and always the latest, and re-running a run of the same name continues from
its latest checkpoint. The guide's best_model.pth / latest_checkpoint.pth are written by the loop during training
(`loop.write_guide_files`), so a run that fails later still has them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ray.train import RunConfig
from ray.train.torch import TorchConfig, TorchTrainer

from recognizer_core.storage import is_remote, output_uri, to_uri
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
from recognizer_core.train.dino_pose.loop import remote_state_uri, run_dino_pose_training
from recognizer_core.train.ray_run import RayTrainContext, backend, for_workers, run_config, run_uri, \
    scaling_config
from recognizer_core.train.state import STATE_FILE

SCORE_ATTRIBUTE = "val/AP"


def _absolute(path: str | None) -> str | None:
    # Workers do not share the driver's working directory: hand them absolute paths (or URIs), resolved once.
    return to_uri(path) if path else path


def resolve_paths(cfg: DinoPoseJobConfig) -> DinoPoseJobConfig:
    data = cfg.data.model_copy(update={k: _absolute(getattr(cfg.data, k)) for k in (
        "train_image_dir", "train_annotation_file", "val_image_dir", "val_annotation_file", "val_bbox_file")})
    run = cfg.run.model_copy(update={"storage_path": output_uri(cfg.run.storage_path),
                                     "resume_from": _absolute(cfg.run.resume_from)})
    model = cfg.model
    if Path(model.backbone).expanduser().exists():  # a local checkpoint folder, not a Hub name
        model = model.model_copy(update={"backbone": _absolute(model.backbone)})
    return cfg.model_copy(update={"data": data, "run": run, "model": model})


def _train_fn(loop_config: dict) -> None:
    cfg = DinoPoseJobConfig.model_validate(loop_config["cfg"])
    run_dino_pose_training(cfg, RayTrainContext(cfg.scaling.use_gpu), loop_config["run_uri"])


def default_run_config(cfg: DinoPoseJobConfig) -> RunConfig:
    return run_config(name=cfg.run.name, storage_path=cfg.run.storage_path, max_failures=cfg.run.max_failures,
                      num_to_keep=cfg.checkpoint.num_to_keep, score_attribute=SCORE_ATTRIBUTE)


def check_resume_from(resume_from: str | None) -> None:
    """On the driver, before any worker starts: run.resume_from names a checkpoint file or folder that exists,
    local or remote (the workers download a remote one)."""
    if not resume_from:
        return
    try:
        found = remote_state_uri(resume_from) is not None if is_remote(resume_from) else Path(resume_from).exists()
    except OSError as err:  # unreachable store, no credentials: one line, not a pyarrow traceback
        raise FileNotFoundError(f"run.resume_from={resume_from}: cannot be read ({err})") from err
    if not found:
        raise FileNotFoundError(f"run.resume_from={resume_from}: no checkpoint file or folder with {STATE_FILE}")


# data.* COCO inputs: (field, whether it is a folder)
COCO_INPUTS = (("train_image_dir", True), ("train_annotation_file", False), ("val_image_dir", True),
               ("val_annotation_file", False), ("val_bbox_file", False))


def coco_input_problems(cfg: DinoPoseJobConfig) -> list[str]:
    """The data.* COCO paths that are missing or unreadable on this machine, one phrase each. Only existence and
    read access: parsing train2017's annotations takes a worker tens of seconds and about 1 GB."""
    problems = []
    for field, is_dir in COCO_INPUTS:
        value = getattr(cfg.data, field)
        if not value or is_remote(value):  # unset (require_data's case), or a URI this check cannot list
            continue
        path, kind = Path(value).expanduser(), "folder" if is_dir else "file"
        if not path.exists():
            problems.append(f"data.{field}={value}: {kind} not found")
        elif path.is_dir() != is_dir:
            problems.append(f"data.{field}={value}: not a {kind}")
        elif not os.access(path, os.R_OK | (os.X_OK if is_dir else 0)):
            problems.append(f"data.{field}={value}: {kind} not readable (permissions)")
    return problems


def check_coco_inputs(cfg: DinoPoseJobConfig, *, private_ray: bool) -> None:
    """Before Ray starts. A private local Ray's workers read the paths on this machine, so a missing one is a
    FileNotFoundError here (it was a traceback in a Ray worker); a cluster's workers may see storage this driver
    does not, so there it is a warning and the workers check."""
    problems = coco_input_problems(cfg)
    if problems and private_ray:
        raise FileNotFoundError("; ".join(problems))
    if problems:
        print(f"warning: not visible on this driver (the cluster's workers must see them): {'; '.join(problems)}",
              file=sys.stderr, flush=True)


def build_trainer(cfg: DinoPoseJobConfig, *, run_config: RunConfig | None = None) -> TorchTrainer:
    """The DINO pose TorchTrainer. `run_config` (the tuner's) replaces the one derived from cfg.run."""
    cfg = resolve_paths(cfg)
    cfg.require_data()
    check_resume_from(cfg.run.resume_from)
    run_config = run_config or default_run_config(cfg)
    return TorchTrainer(
        _train_fn,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "run_uri": run_uri(run_config)},
        torch_config=TorchConfig(backend=backend(cfg.scaling)),
        scaling_config=scaling_config(cfg.scaling),
        run_config=for_workers(run_config, cfg.scaling),
    )

