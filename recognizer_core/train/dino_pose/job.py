"""Ray Train glue of the DINO pose job: `build_trainer(cfg, run_config=None) -> TorchTrainer`.

DDP over the workers (NCCL on GPUs, gloo on CPUs); the frozen backbone is excluded from DDP's parameter
broadcast and gradient buckets (identical on every rank, never trained). Checkpoints: every epoch's report
carries one (full training state + inference weights); Ray keeps the best `checkpoint.num_to_keep` by val/AP and
always the latest, and re-running a run of the same name continues from its latest checkpoint.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path

import ray
import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
from recognizer_core.train.dino_pose.loop import MODEL_FILE, WorkerContext, run_dino_pose_training
from recognizer_core.train.state import STATE_FILE

SCORE_ATTRIBUTE = "val/AP"
log = logging.getLogger("recognizer")


def _is_local(path: str) -> bool:
    return "://" not in path


def _absolute(path: str | None) -> str | None:
    # Workers do not share the driver's working directory: hand them absolute paths.
    return str(Path(path).expanduser().resolve()) if path and _is_local(path) else path


def resolve_paths(cfg: DinoPoseJobConfig) -> DinoPoseJobConfig:
    data = cfg.data.model_copy(update={k: _absolute(getattr(cfg.data, k)) for k in (
        "train_image_dir", "train_annotation_file", "val_image_dir", "val_annotation_file", "val_bbox_file")})
    run = cfg.run.model_copy(update={"storage_path": _absolute(cfg.run.storage_path),
                                     "resume_from": _absolute(cfg.run.resume_from)})
    model = cfg.model
    if Path(model.backbone).expanduser().exists():  # a local checkpoint folder, not a Hub name
        model = model.model_copy(update={"backbone": _absolute(model.backbone)})
    return cfg.model_copy(update={"data": data, "run": run, "model": model})


def resume_source(path: str) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """run.resume_from may be a checkpoint directory or an exported latest_checkpoint.pth file."""
    p = Path(path)
    if p.is_dir():
        return p, None
    if not p.is_file():
        raise FileNotFoundError(f"run.resume_from={path}: no such checkpoint directory or file")
    tmp = tempfile.TemporaryDirectory(prefix="dino_pose_resume_")
    (Path(tmp.name) / STATE_FILE).symlink_to(p)
    return Path(tmp.name), tmp


def _train_fn(loop_config: dict) -> None:
    from torch.nn.parallel import DistributedDataParallel

    cfg = DinoPoseJobConfig.model_validate(loop_config["cfg"])
    ctx = ray.train.get_context()
    world = ctx.get_world_size()

    def wrap(model):
        if world > 1:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, model.backbone_parameter_names())
        return ray.train.torch.prepare_model(model)

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None)

    checkpoint = ray.train.get_checkpoint()
    explicit, tmp = (None, None)
    if checkpoint is None and cfg.run.resume_from:
        explicit, tmp = resume_source(cfg.run.resume_from)
    try:
        with (checkpoint.as_directory() if checkpoint is not None else nullcontext(explicit)) as resume:
            run_dino_pose_training(cfg, WorkerContext(
                rank=ctx.get_world_rank(), world_size=world, device=ray.train.torch.get_device(), wrap_model=wrap,
                report=report, resume_dir=Path(resume) if resume else None, log_dir=Path(loop_config["log_dir"])))
    finally:
        if tmp is not None:
            tmp.cleanup()


def _use_gpu(cfg: DinoPoseJobConfig) -> bool:
    if cfg.scaling.use_gpu is not None:
        return cfg.scaling.use_gpu
    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def _warn_if_unschedulable(num_workers: int, per_worker: dict[str, float]) -> None:
    # Ray Train waits (forever, on a fixed cluster) for resources it cannot get: say so up front.
    if not ray.is_initialized():
        return
    have = ray.cluster_resources()
    for name, amount in per_worker.items():
        if amount * num_workers > have.get(name, 0):
            log.warning("scaling: %d workers x %s %s = %s, but the Ray cluster has %s %s; the run will wait for an "
                        "autoscaler (lower scaling.num_workers / scaling.cpus_per_worker on a fixed cluster)",
                        num_workers, amount, name, amount * num_workers, have.get(name, 0), name)


def default_run_config(cfg: DinoPoseJobConfig) -> RunConfig:
    return RunConfig(
        name=cfg.run.name, storage_path=cfg.run.storage_path,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep,
                                           checkpoint_score_attribute=SCORE_ATTRIBUTE, checkpoint_score_order="max"),
        failure_config=FailureConfig(max_failures=cfg.run.max_failures))


def build_trainer(cfg: DinoPoseJobConfig, *, run_config: RunConfig | None = None) -> TorchTrainer:
    """The DINO pose TorchTrainer. `run_config` (the tuner's) replaces the one derived from cfg.run."""
    cfg = resolve_paths(cfg)
    cfg.require_data()
    run_config = run_config or default_run_config(cfg)
    storage = run_config.storage_path or cfg.run.storage_path
    name = run_config.name or cfg.run.name
    log_dir = (Path(storage) / name / "logs") if _is_local(str(storage)) else \
        Path(tempfile.gettempdir()) / "dino_pose_logs" / name
    use_gpu = _use_gpu(cfg)
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    _warn_if_unschedulable(cfg.scaling.num_workers, resources)
    return TorchTrainer(
        _train_fn,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "log_dir": str(log_dir)},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=run_config,
    )


def export_checkpoints(result, out_dir: str | Path) -> dict[str, str]:
    """The guide's files from a finished run: best_model.pth (inference weights of the best val/AP checkpoint)
    and latest_checkpoint.pth (full training state of the last epoch; `--set run.resume_from=` takes it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if m.get(SCORE_ATTRIBUTE) is not None]
    if ranked:
        best = max(ranked, key=lambda cm: cm[1][SCORE_ATTRIBUTE])[0]
        with best.as_directory() as d:
            shutil.copyfile(Path(d) / MODEL_FILE, out_dir / "best_model.pth")
        written["best_model"] = str(out_dir / "best_model.pth")
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            shutil.copyfile(Path(d) / STATE_FILE, out_dir / "latest_checkpoint.pth")
        written["latest_checkpoint"] = str(out_dir / "latest_checkpoint.pth")
    return written
