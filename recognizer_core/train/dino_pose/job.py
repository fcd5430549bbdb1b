"""Ray Train job of DINO pose: `build_trainer(cfg, run_config=None) -> TorchTrainer` and the guide's files.

DDP over the workers (NCCL on GPUs, gloo on CPUs), on the shared core (`recognizer_core.train.ray_run`): a
checkpoint with every validated epoch (full training state + inference weights); Ray keeps the best
`checkpoint.num_to_keep` by val/AP and always the latest, and re-running a run of the same name continues from
its latest checkpoint.
"""
from __future__ import annotations

from pathlib import Path

from ray.train import Result, RunConfig
from ray.train.torch import TorchConfig, TorchTrainer

from recognizer_core.storage import is_remote, join_uri, output_uri, to_uri, write_bytes
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
from recognizer_core.train.dino_pose.loop import MODEL_FILE, run_dino_pose_training
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


def build_trainer(cfg: DinoPoseJobConfig, *, run_config: RunConfig | None = None) -> TorchTrainer:
    """The DINO pose TorchTrainer. `run_config` (the tuner's) replaces the one derived from cfg.run."""
    cfg = resolve_paths(cfg)
    cfg.require_data()
    if cfg.run.resume_from and not is_remote(cfg.run.resume_from) and not Path(cfg.run.resume_from).exists():
        raise FileNotFoundError(f"run.resume_from={cfg.run.resume_from}: no such checkpoint directory or file")
    run_config = run_config or default_run_config(cfg)
    return TorchTrainer(
        _train_fn,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "run_uri": run_uri(run_config)},
        torch_config=TorchConfig(backend=backend(cfg.scaling)),
        scaling_config=scaling_config(cfg.scaling),
        run_config=for_workers(run_config, cfg.scaling),
    )


def export_checkpoints(result: Result, out_uri: str) -> dict[str, str]:
    """The guide's files from a finished run, written into `out_uri` (local, NFS or s3://): best_model.pth
    (inference weights of the best val/AP checkpoint) and latest_checkpoint.pth (full training state of the last
    checkpoint; `--set run.resume_from=` takes it)."""
    written = {}
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if m.get(SCORE_ATTRIBUTE) is not None]
    for name, ckpt, inner in (("best_model", max(ranked, key=lambda cm: cm[1][SCORE_ATTRIBUTE])[0] if ranked
                               else None, MODEL_FILE),
                              ("latest_checkpoint", result.checkpoint, STATE_FILE)):
        if ckpt is None:
            continue
        with ckpt.as_directory() as d:
            target = join_uri(out_uri, f"{name}.pth")
            write_bytes(target, (Path(d) / inner).read_bytes())
        written[name] = target
    return written
