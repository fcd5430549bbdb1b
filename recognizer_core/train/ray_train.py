"""Ray Train glue for the STGCN++ jobs: `build_trainer` (training) and `build_test_trainer` (testing).

The same TorchTrainer runs on a laptop (gloo, CPU workers) and on a GPU cluster (NCCL, one worker per GPU).
Fault tolerance is Ray Train's: FailureConfig restarts a failed worker group from the latest reported
checkpoint, and re-running a job with the same run name and storage path restores the run's checkpoint
manager snapshot, so `ray.train.get_checkpoint()` hands the loop the latest checkpoint in both cases.
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path

import ray.train
import ray.train.torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from recognizer_core.config import ConfigError
from recognizer_core.train.config import TrainJobConfig
from recognizer_core.skeleton.clip import SkeletonDataError
from recognizer_core.skeleton.store import SkeletonDataset
from recognizer_core.skeleton.validate import validate_dataset
from recognizer_core.storage import output_uri
from recognizer_core.train.data import prepare_dataset, split_info
from recognizer_core.train.worker import FAULT_ENV, check_resumable

_SNAPSHOT_GLOB = "checkpoint_manager_snapshot.json"


class _RayContext:
    def __init__(self):
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model):
        return ray.train.torch.prepare_model(model)  # moves to the device, wraps in DDP when world_size > 1

    def report(self, metrics, checkpoint_dir=None):
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        name = f"checkpoint_epoch_{int(metrics['epoch']):04d}" if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)

    def checkpoint_dir(self):
        ckpt = ray.train.get_checkpoint()
        return ckpt.as_directory() if ckpt is not None else nullcontext(None)


def _train_fn(config: dict) -> None:
    from recognizer_core.train.loop import train_loop

    cfg = TrainJobConfig.model_validate(config["cfg"])
    summary = train_loop(cfg, config["dataset_path"], config["run_dir"], _RayContext())
    if cfg.train.test_after_train:
        from recognizer_core.train.evaluate import test_after_training

        test_after_training(cfg, config["dataset_path"], config["run_dir"], _RayContext(), summary)


def _test_fn(config: dict) -> None:
    from recognizer_core.train.evaluate import test_loop

    cfg = TrainJobConfig.model_validate(config["cfg"])
    test_loop(cfg, config["dataset_path"], config["checkpoint"], config["out_dir"], _RayContext(),
              split=config["split"])


def scaling_config(cfg: TrainJobConfig) -> ScalingConfig:
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources,
                         placement_strategy=s.placement_strategy)


def _storage(cfg: TrainJobConfig) -> str:
    return output_uri(cfg.run.storage_path)  # never inside a `ray job submit` package (Ray deletes it)


def run_dir_of(run_config: RunConfig, cfg: TrainJobConfig | None = None) -> Path:
    """Folder of a run's files besides the Ray checkpoints (logs, exported best model, plots, summary): the run
    folder itself for local/NFS storage; for cloud storage (a Tune-made RunConfig with s3://...), a local
    mirror under cfg.run.storage_path/remote_runs on the rank-0 node."""
    storage = str(run_config.storage_path)
    if "://" in storage:
        base = Path(_storage(cfg)) if cfg is not None else Path(output_uri("work_dirs"))
        return base / "remote_runs" / storage.split("://", 1)[1].strip("/") / run_config.name
    return Path(storage) / run_config.name


def default_run_config(cfg: TrainJobConfig) -> RunConfig:
    env = {FAULT_ENV: os.environ[FAULT_ENV]} if os.environ.get(FAULT_ENV) else {}
    return RunConfig(
        name=cfg.run.name, storage_path=_storage(cfg),
        failure_config=FailureConfig(max_failures=cfg.run.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep,
                                           checkpoint_score_attribute=cfg.checkpoint.score_attribute,
                                           checkpoint_score_order="max"),
        worker_runtime_env={"env_vars": env} if env else None,
        logging_config=LoggingConfig(log_level=cfg.run.ray_log_level),
    )


def existing_run(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(run_dir.rglob(_SNAPSHOT_GLOB))


def preflight(cfg: TrainJobConfig, dataset_path: str | Path) -> None:
    """Checks on the driver that need only the light columns (empty splits, labels outside num_classes), so a
    deterministic data error fails at once instead of being retried by FailureConfig on every worker."""
    ds = SkeletonDataset(dataset_path)
    info = split_info(ds, cfg.data.train_split, cfg.model.num_classes)
    if len(info) < cfg.scaling.num_workers:
        raise SkeletonDataError(f"{dataset_path}: split {cfg.data.train_split!r} has {len(info)} clip(s), fewer "
                                f"than scaling.num_workers={cfg.scaling.num_workers}")
    split_info(ds, cfg.data.val_split, cfg.model.num_classes)
    # one streamed pass over the keypoints (NaN, T=0, list lengths, far coordinates), cached per dataset version
    validate_dataset(dataset_path, [cfg.data.train_split, cfg.data.val_split, cfg.data.test_split],
                     cfg.model.num_classes, cfg.data.nan_policy, num_joints=cfg.model.num_joints,
                     skip_empty=cfg.data.skip_empty_clips)


def build_trainer(cfg: TrainJobConfig, *, run_config: RunConfig | None = None) -> TorchTrainer:
    """A TorchTrainer for `cfg`. Without `run_config`, one is built from cfg.run / cfg.checkpoint (name, storage,
    FailureConfig, keep the best by val/acc_top1 and the latest); a given one (e.g. from Ray Tune, with its
    callbacks, storage and name) is used as is. Data (demo / pkl) is prepared here, on the driver."""
    if "://" in cfg.run.storage_path:
        raise ConfigError(f"run.storage_path={cfg.run.storage_path!r}: the STGCN++ job keeps its datasets, logs and "
                          "exported model in the run folder, so storage must be a local or shared (NFS) path")
    if run_config is None:
        run_config = default_run_config(cfg)
        if existing_run(run_dir_of(run_config)):
            if cfg.run.resume == "never":
                raise ConfigError(f"run.resume=never but run {run_dir_of(run_config)} already exists: choose a "
                                  "new run.name or set run.resume=auto to continue it")
            ckpts = sorted(run_dir_of(run_config).glob("checkpoint_epoch_*"))
            if ckpts:
                try:
                    check_resumable(cfg, ckpts[-1])
                except ValueError as err:
                    raise ConfigError(str(err)) from None
    run_dir = run_dir_of(run_config, cfg)
    dataset_path = prepare_dataset(cfg.data, Path(_storage(cfg)) / "datasets")
    preflight(cfg, dataset_path)
    backend = "nccl" if cfg.scaling.use_gpu else "gloo"
    return TorchTrainer(
        _train_fn,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "dataset_path": str(Path(dataset_path).resolve()),
                           "run_dir": str(run_dir)},
        torch_config=TorchConfig(backend=backend),
        scaling_config=scaling_config(cfg),
        run_config=run_config,
    )


def build_test_trainer(cfg: TrainJobConfig, checkpoint: str | Path, out_dir: str | Path,
                       split: str | None = None) -> TorchTrainer:
    """Sharded multi-clip test of `checkpoint` (mmaction2 .pth, or a Ray checkpoint dir) on `split`."""
    dataset_path = prepare_dataset(cfg.data, Path(_storage(cfg)) / "datasets")
    out_dir = Path(out_dir).resolve()
    return TorchTrainer(
        _test_fn,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "dataset_path": str(Path(dataset_path).resolve()),
                           "checkpoint": str(Path(checkpoint).resolve()), "out_dir": str(out_dir),
                           "split": split or cfg.data.test_split},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(name=f"test_{out_dir.name}_{int(time.time())}",
                             storage_path=str(out_dir.parent / ".ray_test_runs")),
    )
