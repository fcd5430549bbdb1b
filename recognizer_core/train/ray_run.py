"""Ray Train glue both products share: the worker context, scaling, the RunConfig and the run's folder.

The same TorchTrainer runs on a laptop (gloo, CPU workers) and on a GPU cluster (NCCL, one worker per GPU).
Fault tolerance is Ray Train's: FailureConfig restarts a failed worker group from the latest reported
checkpoint, and re-running a job with the same run name and storage path restores the run's checkpoint manager
snapshot, so `get_checkpoint()` hands the loop the latest checkpoint in both cases.
"""
from __future__ import annotations

import inspect
import logging
import os
from contextlib import nullcontext

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, UserCallback

from recognizer_core.config import ConfigError
from recognizer_core.ray_runtime import PRIVATE_RAY_ENV
from recognizer_core.skeleton.clip import SkeletonDataError
from recognizer_core.storage import join_uri, output_uri, to_uri
from recognizer_core.train.cpu_malloc import worker_env
from recognizer_core.train.faults import FAULT_ENV
from recognizer_core.train.sections import ScalingSection

log = logging.getLogger("recognizer")
# torch 2.13 renamed DDP's broadcast_buffers (deprecated, a FutureWarning in every worker) to forward_sync_buffers;
# a CUDA image with an older torch has only the old name
_NO_FORWARD_BUFFER_SYNC = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
    torch.nn.parallel.DistributedDataParallel.__init__).parameters else "broadcast_buffers")


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint_epoch_{int(epoch):04d}"


def _report_log_at_run_level() -> None:
    """Ray 2.60's worker context logs every report ("Reporting training result N: TrainingReport(...)", the whole
    metrics dict) at INFO on a logger named after its FILE (`logging.getLogger(__file__)` in
    ray/train/v2/_internal/execution/context.py). RunConfig's LoggingConfig filters only loggers named
    "ray.train*", and the worker's root logger is at INFO, so that line reached the console whatever the run's
    log level. Give that one logger the run's level: at WARNING (the default) its INFO goes, warnings stay."""
    try:
        from ray.train.v2._internal.execution import context as train_context

        level = train_context.get_train_context().train_run_context.get_run_config().logging_config.log_level
    except (ImportError, AttributeError):  # another Ray layout: nothing to adjust
        return
    logging.getLogger(train_context.__file__).setLevel(level)


class RayTrainContext:
    """`WorkerContext` of a Ray Train worker."""

    def __init__(self, use_gpu: bool):
        _report_log_at_run_level()
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        if use_gpu and self.device.type != "cuda":  # never train on the CPU when GPUs were asked for
            raise RuntimeError(f"scaling.use_gpu=true but worker {self.rank} got device {self.device}")

    def prepare_model(self, model):
        # Moves to the device and wraps in DDP when world_size > 1. No buffer broadcast before each forward, as
        # mmengine's broadcast_buffers=False (deprecated in torch 2.13, whose forward_sync_buffers=False still syncs
        # them once at construction): each rank's BatchNorm statistics follow its own batches and the loops average
        # them after every training epoch (collectives.sync_buffers). DDP's default copied rank 0's before each
        # forward, but not after the last one: every rank then validated its shard with its own statistics.
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={_NO_FORWARD_BUFFER_SYNC: False})

    def report(self, metrics, checkpoint_dir=None):
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt,
                         checkpoint_dir_name=checkpoint_name(metrics["epoch"]) if checkpoint_dir else None)

    def checkpoint_dir(self):
        ckpt = ray.train.get_checkpoint()
        return ckpt.as_directory() if ckpt is not None else nullcontext(None)


class DataErrorInWorker(RuntimeError):
    """A worker met bad data (SkeletonDataError): the run ends, it is not retried."""


def _data_error(err: BaseException | None) -> BaseException | None:
    seen = 0
    while err is not None and seen < 10:  # Ray wraps the worker's exception; look through the chain
        if isinstance(err, SkeletonDataError) or type(err).__name__ == "SkeletonDataError":
            return err
        err, seen = err.__cause__ or getattr(err, "cause", None), seen + 1
    return None


class StopOnDataError(UserCallback):
    """Ends the run at once when a worker raised a SkeletonDataError. Ray Train V2 retries every worker error
    up to FailureConfig.max_failures times from the latest checkpoint, and a data error fails the same way each
    time (minutes of restarts, then the same error). An exception raised by a controller callback is a
    controller error, which the default failure policy does not retry."""

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        for rank, err in sorted(worker_exceptions.items()):
            found = _data_error(err)
            if found is not None or "SkeletonDataError" in str(err):
                msg = str(found) if found is not None else str(err).strip().splitlines()[-1]
                raise DataErrorInWorker(f"worker {rank}: {msg} (a data error: not retried)")


def for_workers(rc: RunConfig, scaling: ScalingSection) -> RunConfig:
    """`rc` as a trainer of `scaling` runs it (a Tune-made RunConfig too): StopOnDataError among its callbacks,
    the workers' allocator (scaling.cpu_malloc) in their runtime environment."""
    callbacks = list(rc.callbacks or [])
    if not any(isinstance(c, StopOnDataError) for c in callbacks):
        rc.callbacks = callbacks + [StopOnDataError()]
    env = worker_env(scaling.cpu_malloc, scaling.tcmalloc_path, scaling.use_gpu)
    if env:
        runtime_env = dict(rc.worker_runtime_env or {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env}
        rc.worker_runtime_env = runtime_env
    return rc


def private_ray(address: str | None) -> bool:
    """Whether a job given `address` (--address) starts a private local Ray, by start_ray's rule: no address and no
    $RAY_ADDRESS (or "local"). Its workers run on this machine only, and no autoscaler adds a node."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return not address or address == "local"


def _shortage(s: ScalingSection, name: str, found: str) -> str:
    per = s.gpus_per_worker if name == "GPU" else s.cpus_per_worker
    fix = ("set scaling.use_gpu=false, lower scaling.num_workers, or give --address of a cluster with GPUs"
           if name == "GPU" else "lower scaling.num_workers / scaling.cpus_per_worker")
    field = "scaling.use_gpu=true: " if name == "GPU" else ""
    return (f"{field}scaling.num_workers={s.num_workers} x {per:g} {name} asks for {s.num_workers * per:g} {name}, "
            f"but {found}, and a private local Ray cannot add any: {fix}")


def check_local_gpus(s: ScalingSection, address: str | None) -> None:
    """Before Ray starts: GPUs asked of a private local Ray (no `address`) that this machine does not have
    (torch's count, which honours CUDA_VISIBLE_DEVICES and is 0 for a CPU build of torch). Ray Train would wait
    for them forever, a WorkerGroupStartupTimeoutError traceback every minute. A cluster keeps waiting (its
    autoscaler may add GPU nodes)."""
    if not s.use_gpu or not private_ray(address):
        return
    import torch

    have = torch.cuda.device_count()  # NVML when it can: no CUDA context in the driver
    if s.num_workers * s.gpus_per_worker > have:
        raise ConfigError(_shortage(s, "GPU", f"this machine has {have} CUDA device(s) (torch's count)"))


def scaling_config(s: ScalingSection) -> ScalingConfig:
    """Explicit CPU or GPU workers. With use_gpu the trainer waits until the cluster has the GPUs (an autoscaler
    adds GPU nodes); it never decides by what the cluster has at the moment, which on a fresh autoscaling
    cluster is no GPU at all. A private local Ray (PRIVATE_RAY_ENV, also set in the processes it runs) has no
    autoscaler: there a shortage is a ConfigError instead of a wait that never ends."""
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    if ray.is_initialized():
        have = ray.cluster_resources()
        for name, amount in resources.items():
            if amount * s.num_workers > have.get(name, 0):
                if os.environ.get(PRIVATE_RAY_ENV):
                    raise ConfigError(_shortage(s, name, f"the private local Ray has {have.get(name, 0):g}"))
                log.warning("scaling: %d workers x %s %s, but the Ray cluster has %s %s now: the run waits for an "
                            "autoscaler to add them (on a fixed cluster lower scaling.num_workers / "
                            "scaling.cpus_per_worker, or set scaling.use_gpu=false)", s.num_workers, amount, name,
                            have.get(name, 0), name)
    return ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources,
                         placement_strategy=s.placement_strategy)


def backend(s: ScalingSection) -> str:
    return "nccl" if s.use_gpu else "gloo"


def run_config(*, name: str, storage_path: str, max_failures: int, num_to_keep: int, score_attribute: str,
               log_level: str = "WARNING") -> RunConfig:
    """Checkpoints ranked by `score_attribute` (higher is better; only validated epochs carry one), the latest
    always kept; the fault-injection test hook forwarded to the workers."""
    env = {FAULT_ENV: os.environ[FAULT_ENV]} if os.environ.get(FAULT_ENV) else {}
    return RunConfig(
        name=name, storage_path=output_uri(storage_path),  # never inside a `ray job submit` package
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep, checkpoint_score_attribute=score_attribute,
                                           checkpoint_score_order="max"),
        worker_runtime_env={"env_vars": env} if env else None,
        logging_config=LoggingConfig(log_level=log_level),
        callbacks=[StopOnDataError()],
    )


def run_uri(rc: RunConfig) -> str:
    """The run's folder in its storage (local/NFS path or s3://...): checkpoints, logs, plots, exports."""
    return join_uri(to_uri(str(rc.storage_path)), rc.name)
