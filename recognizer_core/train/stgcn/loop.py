"""The STGCN++ training loop run by every worker (Ray Train or one local process).

Ray stays outside: the loop talks to a `WorkerContext` (rank, device, DDP wrapping, report, latest checkpoint).
Randomness of an epoch (shuffle, augmentation, dropout) derives from (seed, epoch, rank), so a run resumed from
a checkpoint continues exactly as the uninterrupted run would. The loss stays on the device: the workers sync
once per log interval and once per epoch, never per step.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from recognizer_core.config import dump_config
from recognizer_core.export.mmaction import export_best_model, remove_previous_best
from recognizer_core.models.recognizer import build_recognizer
from recognizer_core.skeleton.store import SkeletonDataset
from recognizer_core.skeleton.transforms_torch import compiled_features, model_inputs
from recognizer_core.train.stgcn import data as tdata
from recognizer_core.train.amp import AmpPlan, amp_plan
from recognizer_core.train.collectives import all_reduce, all_reduce_max, distributed, sync_buffers
from recognizer_core.train.stgcn.config import CUDA_GRAPH_MODES, TrainJobConfig
from recognizer_core.train.context import WorkerContext
from recognizer_core.models import bn_act
from recognizer_core.train.cpu_malloc import malloc_in_use
from recognizer_core.train.epochs import should_validate
from recognizer_core.train.experiment_log import ExperimentLogger, console
from recognizer_core.train.faults import maybe_inject_fault
from recognizer_core.train.nonfinite import LossMeter, NonFiniteGuard
from recognizer_core.train.run_files import RunFiles
from recognizer_core.train.state import place_and_resume, save_training_state
from recognizer_core.train.stgcn.evaluate import evaluate, label_names
from recognizer_core.train.stgcn.metrics import flat_metrics
from recognizer_core.train.stgcn.optim import align_schedule, build_optimizer, build_scheduler, scaled_lr, schedule_step
from recognizer_core.train.stgcn.plots import plot_confusion_matrix, plot_curves
from recognizer_core.train.stgcn.run_state import DatasetIdentity, EarlyStopper, RunState, check_resumable

log = logging.getLogger("recognizer")


@dataclass
class Data:
    train_loader: Any
    train_sampler: Any
    val_loader: Any
    val_sampler: Any
    num_batches: int
    names: list[str]
    counts: tuple[int, int, int, int]  # train clips, skipped all-zero train clips, val clips, skipped val clips
    dataset: DatasetIdentity | None = None  # what the store opened here is: saved with checkpoints, checked at resume


@dataclass
class Trainer:
    model: torch.nn.Module  # placed (DDP-wrapped where distributed): validation, checkpoints, export
    step_model: torch.nn.Module  # what the training steps call: `model`, or it under torch.compile (train.compile)
    features: Callable | None  # compiled features_of for pipeline.device=worker under train.compile; else eager
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp: AmpPlan
    class_weight: torch.Tensor | None
    guard: NonFiniteGuard
    lr: float
    compile_s: float | None = None  # the first compiled step's seconds, once this process has run it


def load_data(cfg: TrainJobConfig, dataset_path: str, ctx: WorkerContext) -> Data:
    """This worker's shards of the train and val splits, batched for DDP (same step count on every rank)."""
    d_cfg, t_cfg, k = cfg.data, cfg.train, cfg.model.num_classes
    ds = SkeletonDataset(dataset_path)
    names = label_names(cfg, ds)
    train_info, val_info = tdata.split_info(ds, d_cfg.train_split, k), tdata.split_info(ds, d_cfg.val_split, k)
    if ctx.rank == 0 and len(val_info.label_counts) < 2:  # label counts: no per-clip index read
        log.warning("validation split %r has a single class (%s): val/mean_class_accuracy is not informative",
                    d_cfg.val_split, names[next(iter(val_info.label_counts))])
    train_clips, skipped = tdata.load_shard(ds, tdata.shard_positions(train_info, ctx.rank, ctx.world_size), d_cfg,
                                            k, cfg.model.num_joints, f"{dataset_path} [{d_cfg.train_split}]")
    val_clips, val_valid, val_skipped = tdata.eval_shard(ds, val_info, ctx.rank, ctx.world_size, d_cfg, k, cfg.model.num_joints,
                                            f"{dataset_path} [{d_cfg.val_split}]")
    if skipped:
        log.warning("rank %d: skipped %d all-zero skeleton clip(s) in %r: %s", ctx.rank, len(skipped),
                    d_cfg.train_split, skipped[:10])
    counts = tuple(int(v) for v in all_reduce([len(train_clips), len(skipped), val_valid, val_skipped]))
    # DDP needs the same number of steps on every rank: the largest shard decides. Training epochs have its size
    # on every rank (a smaller shard repeats a clip or so, as mmengine's DefaultSampler pads), the last batch
    # short as mmengine's DataLoader leaves it; evaluation wraps to full batches and masks the padding.
    bs, vbs = t_cfg.batch_size, t_cfg.val_batch_size or t_cfg.batch_size
    n_train, n_val = (int(v) for v in all_reduce_max([len(train_clips), len(val_clips)]))
    nb, nvb = tdata.num_batches_for(n_train, bs), tdata.num_batches_for(n_val, vbs)
    train_set = tdata.ShardBatches(train_clips, nb, bs, cfg.pipeline, train=True, seed=t_cfg.seed, rank=ctx.rank,
                                   epoch_clips=n_train)
    val_set = tdata.ShardBatches(val_clips, nvb, vbs, cfg.pipeline, train=False, seed=t_cfg.seed, rank=ctx.rank,
                                 num_valid=val_valid)
    pin = ctx.device.type == "cuda"
    train_loader, train_sampler = tdata.make_loader(train_set, d_cfg.loader_workers, d_cfg.prefetch_batches, pin)
    val_loader, val_sampler = tdata.make_loader(val_set, d_cfg.loader_workers, d_cfg.prefetch_batches, pin)
    return Data(train_loader, train_sampler, val_loader, val_sampler, nb, names, counts,
                DatasetIdentity.of(ds, dataset_path, len(train_info), len(val_info)))


def build_trainer_parts(cfg: TrainJobConfig, ctx: WorkerContext, num_batches: int,
                        dataset: DatasetIdentity | None = None) -> tuple[Trainer, RunState]:
    """Model, optimizer, schedule and scaler, placed on the device and then restored from the latest checkpoint."""
    t_cfg, device = cfg.train, ctx.device
    torch.manual_seed(t_cfg.seed)  # identical initial weights on every rank
    model = build_recognizer(cfg.model)
    lr = scaled_lr(cfg.optim, ctx.world_size, t_cfg.batch_size)
    optimizer = build_optimizer(model.parameters(), cfg.optim, lr, fused=device.type == "cuda")
    # the schedule counts batches, as mmengine's iteration-based one does, accumulation or not
    scheduler = build_scheduler(optimizer, cfg.schedule, iters_per_epoch=num_batches, cosine_t_max=cfg.cosine_t_max)
    amp = amp_plan(t_cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp.scaler,
                                  init_scale=2.0 ** 16 if t_cfg.loss_scale == "dynamic" else float(t_cfg.loss_scale))
    model, restored = place_and_resume(ctx, model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                       check=lambda ckpt: check_resumable(cfg, ckpt, dataset))
    state = RunState.from_checkpoint(restored, num_batches=num_batches, early_stopping=t_cfg.early_stopping)
    align_schedule(scheduler, state.global_step)  # a checkpoint whose schedule counted optimizer steps
    step_model = compile_for_training(model, t_cfg.compile)
    features = compiled_features(cfg.pipeline) if t_cfg.compile != "none" and cfg.pipeline.device == "worker" \
        else None
    class_weight = torch.tensor(t_cfg.class_weight, dtype=torch.float32, device=device) if t_cfg.class_weight \
        else None
    guard = NonFiniteGuard(device, t_cfg.max_nonfinite_steps, state.nonfinite_in_a_row)
    return Trainer(model, step_model, features, optimizer, scheduler, scaler, amp, class_weight, guard, lr), state


def cudagraph_skips() -> int:
    """How many compiled graphs inductor left without CUDA graphs in this process (e.g. a CPU op in the graph)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def compile_for_training(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """`model` under torch.compile for the training steps (train.compile), or itself when off.

    The compiled module shares the parameters and buffers, so the eager `model` stays what validation, checkpoints
    (no `_orig_mod.` keys) and export use, and its train()/eval() state is the one the compiled graph guards on.
    dynamic=False: every training batch has one shape but an epoch's short last one (data.py), so the run compiles
    one static graph at its first step and a second at the first epoch's last step, and never again. The CPU
    kernels step aside while dynamo traces (cpu_kernels.enabled)."""
    if mode == "none":
        return model
    return torch.compile(model, mode=mode, dynamic=False)


@contextmanager
def kernel_choice(deterministic: bool, device: torch.device):
    """torch's global kernel settings for one training run, restored afterwards (a process may run several)."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    if deterministic:
        # On a GPU, cuDNN's autotuned algorithms and atomic-add backward kernels differ run to run, so a resumed
        # run drifts from an uninterrupted one (seen on an H200: bench/results/gpu_check_cuda.jsonl). cuBLAS is
        # deterministic only with a fixed workspace, read when its first handle is made (after this).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)  # an op with no deterministic kernel raises, naming itself
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes (clip_len, num_person): autotune the convs once
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]


def train_loop(cfg: TrainJobConfig, dataset_path: str, run_uri: str, ctx: WorkerContext) -> dict:
    """Train (resuming from ctx's latest checkpoint if any); returns the final summary (rank 0's view)."""
    with kernel_choice(cfg.train.deterministic, ctx.device):
        return _train(cfg, dataset_path, run_uri, ctx)


def _train(cfg: TrainJobConfig, dataset_path: str, run_uri: str, ctx: WorkerContext) -> dict:
    files = RunFiles(run_uri)
    data = load_data(cfg, dataset_path, ctx)
    tr, state = build_trainer_parts(cfg, ctx, data.num_batches, data.dataset)
    stopper = EarlyStopper(cfg.train.early_stopping.patience, cfg.train.early_stopping.min_delta,
                           state.early_stopping)
    # a resumed run logs from the checkpoint's next step on, in the same W&B run (experiment_log.py)
    logger = ExperimentLogger(files.local / "logs", config=json.loads(cfg.model_dump_json()), wandb=cfg.wandb,
                              enabled=ctx.rank == 0, run_name=cfg.run.name, first_step=state.global_step + 1,
                              resume=state.epoch > 0, saved_log_dir=files.uri_of("logs"))
    if ctx.rank == 0:
        _announce(cfg, ctx, data, tr, state, files)
    stopped_early, last_ckpt_epoch = state.stopped_early, state.epoch
    try:
        # a run that stopped early and is started again (the same command, or Ray Train restarting a worker
        # lost after that checkpoint) stays stopped: training on would add epochs and could change the best model
        for ep in range(state.epoch + 1, cfg.train.epochs + 1) if not stopped_early else ():
            metrics = train_epoch(tr, data, cfg, ctx, state, logger, ep)
            sync_buffers(tr.model)  # BatchNorm statistics averaged (SyncBuffersHook): one model validated, saved
            report = None
            if should_validate(ep, cfg.train.epochs, cfg.train.val_interval, cfg.train.val_begin):
                report = validate(tr, data, cfg, ctx, state, files, ep)
                metrics.update(flat_metrics(report, "val"))
                if cfg.train.early_stopping.enabled:
                    stopped_early = stopper.update(metrics[cfg.train.early_stopping.monitor])
            state.epoch, state.early_stopping, state.stopped_early = ep, stopper.state(), stopped_early
            state.history.append(metrics)
            if ctx.rank == 0:
                logger.log(metrics, state.global_step, console=False)
                console(_epoch_line(metrics, cfg.train.epochs))
            if report is not None or stopped_early or ep == cfg.train.epochs:
                _checkpoint(tr, cfg, ctx, state, metrics, report, data.names, files, data.dataset)
                last_ckpt_epoch = ep
            else:
                ctx.report(metrics, None)
            maybe_inject_fault(ep, ctx.rank, files.uri, last_ckpt_epoch)
            if stopped_early:
                if ctx.rank == 0:
                    console(f"[recognizer] early stopping at epoch {ep}: {cfg.train.early_stopping.monitor} did not "
                            f"improve by more than {cfg.train.early_stopping.min_delta} for {stopper.patience} "
                            "validations")
                break
        summary = {"epochs_run": state.epoch, "stopped_early": stopped_early,
                   "best": {k: v for k, v in state.best.items() if k != "confusion_matrix"},
                   "history": state.history, "label_names": data.names, "world_size": ctx.world_size,
                   # rank 0's allocator (scaling.cpu_malloc) and BatchNorm path (models/bn_act.py), next to its samples/s
                   "malloc": malloc_in_use(), "batch_norm": bn_act.describe(ctx.device, cfg.train.compile),
                   "compile": {"mode": cfg.train.compile, "first_step_s": tr.compile_s}}
        if ctx.rank == 0:
            _write_summary(files, summary, state.best, data.names, logger, state.global_step)
    finally:
        logger.close()
        files.close(upload=ctx.rank == 0)  # the last upload; a remote run's staging folder is removed
    return summary


def train_epoch(tr: Trainer, data: Data, cfg: TrainJobConfig, ctx: WorkerContext, state: RunState,
                logger: ExperimentLogger, ep: int) -> dict[str, Any]:
    """One epoch of DDP steps (accumulation, clipping, AMP, non-finite guard); advances state.global_step and
    returns the epoch's train metrics (reduced over the workers)."""
    t_cfg, device, model = cfg.train, ctx.device, tr.model
    torch.manual_seed(int(np.random.SeedSequence([t_cfg.seed, ep, ctx.rank]).generate_state(1)[0]))  # dropout
    data.train_sampler.set_epoch(ep - 1)
    model.train()
    epoch_loss, interval_loss, samples, data_wait = LossMeter(device), LossMeter(device), 0, 0.0
    compile_s = None  # the first step's seconds where it compiles (the first epoch this process runs)
    graphs = t_cfg.compile in CUDA_GRAPH_MODES
    t0 = time.time()
    tr.optimizer.zero_grad(set_to_none=True)
    batches = iter(data.train_loader)
    for i in range(data.num_batches):
        # this iteration's lr, the one its optimizer step (if it has one) uses, read before the schedule moves on:
        # what lr_iter and the epoch's lr (its last iteration's, always a step) report, as mmengine logs it
        step_lr = tr.optimizer.param_groups[0]["lr"]
        t_fetch = time.time()
        x, y, valid = next(batches)
        data_wait += time.time() - t_fetch  # ~0 when the loader keeps up: the input pipeline is not the bottleneck
        x, y = model_inputs(x, device, cfg.pipeline, tr.features), y.to(device, non_blocking=True)
        # Accumulation groups restart every epoch, so a checkpoint (at an epoch's end) holds no pending gradient
        # and a resume is exact. mmengine counts groups over the whole run instead: where num_batches is not a
        # multiple of accumulative_counts, each epoch here ends with a short group (docs/training.md), whose mean
        # gradient divides by its own size (mmengine's scale_loss does so for the run's last group).
        boundary = (i + 1) % t_cfg.accumulative_counts == 0 or i + 1 == data.num_batches
        group = min(t_cfg.accumulative_counts, data.num_batches - i // t_cfg.accumulative_counts
                    * t_cfg.accumulative_counts)
        sync = model.no_sync() if (distributed() and not boundary and hasattr(model, "no_sync")) else nullcontext()
        with sync:
            t_step, skips = time.time(), cudagraph_skips() if graphs and tr.compile_s is None else 0
            if graphs:  # the last step's graph outputs are dead: CUDA graph trees may reuse their memory
                torch.compiler.cudagraph_mark_step_begin()
            with tr.amp.autocast(device):
                logits = tr.step_model(x)
            loss = F.cross_entropy(logits.float(), y.repeat_interleave(x.shape[1]), weight=tr.class_weight)
            tr.scaler.scale(loss / group).backward()
        finite = tr.guard.finite_loss(loss)
        epoch_loss.add(loss, finite)
        interval_loss.add(loss, finite)
        # each clip once: the batch is only the epoch's rows (the last one short), and the repeat that evens a
        # smaller shard with the largest (data.py) is trained but not counted; a loader without a mask counts all
        samples += x.shape[0] if valid is None else int(valid.sum())
        if boundary:
            _optimizer_step(tr, cfg)
        schedule_step(tr.scheduler)
        if t_cfg.compile != "none" and tr.compile_s is None:
            tr.compile_s = compile_s = time.time() - t_step  # dynamo + inductor, forward and backward, then a step
            if ctx.rank == 0:
                console(f"[recognizer] torch.compile (mode {t_cfg.compile}): first step {compile_s:.1f} s (compiling, "
                        "or found in this process's or inductor's cache)")
                if graphs and cudagraph_skips() > skips:  # inductor logged why; say what it means for this run
                    console("[recognizer] torch.compile: CUDA graphs were skipped (inductor's warning above says why): "
                            "the steps run compiled but launch every kernel, as mode default")
        state.global_step += 1
        if t_cfg.log_interval and (i + 1) % t_cfg.log_interval == 0:
            tr.guard.check(f"at epoch {ep}")
            mean = interval_loss.mean()
            if ctx.rank == 0:
                logger.log({"train/loss_iter": mean, "lr_iter": step_lr, "epoch": ep}, state.global_step, console=False)
                console(f"[recognizer] epoch {ep} iter {i + 1}/{data.num_batches}: loss {mean:.4f} lr {step_lr:.3g}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.time() - t0
    tr.guard.check(f"at epoch {ep}")
    skipped = tr.guard.epoch_count()
    state.nonfinite_in_a_row = tr.guard.state()
    tot_samples = all_reduce([samples])[0]
    return {"epoch": ep, "train/loss": epoch_loss.mean(),
            "lr": step_lr, "train/samples_per_s": tot_samples / dt,
            "train/epoch_time_s": dt, "train/data_wait_frac": data_wait / dt, "train/skipped_steps": skipped,
            **({"train/compile_s": compile_s} if compile_s is not None else {})}


def _optimizer_step(tr: Trainer, cfg: TrainJobConfig) -> None:
    tr.scaler.unscale_(tr.optimizer)
    params = [p for p in tr.model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad_max_norm) if cfg.optim.clip_grad_max_norm \
        else None
    # the fp16 scaler skips non-finite steps itself; otherwise a fused optimizer skips on the device (found_inf),
    # others after a host check. The groups' flag, not the device: a checkpoint's param groups replace the built ones.
    run = tr.amp.scaler or tr.guard.step_allowed(tr.optimizer, params, norm)
    try:
        if run:
            tr.scaler.step(tr.optimizer)
    finally:
        tr.optimizer.__dict__.pop("found_inf", None)
    tr.scaler.update()
    tr.optimizer.zero_grad(set_to_none=True)


def validate(tr: Trainer, data: Data, cfg: TrainJobConfig, ctx: WorkerContext, state: RunState, files: RunFiles,
             ep: int) -> dict:
    """Validation report; a new best is recorded in the state and exported (rank 0) in mmaction2 format."""
    data.val_sampler.set_epoch(ep - 1)
    report = evaluate(tr.model, data.val_loader, ctx.device, amp=cfg.train.amp, label_names=data.names,
                      pipeline=cfg.pipeline)
    score = flat_metrics(report, "val")[cfg.checkpoint.score_attribute]
    if score > state.best["score"]:
        file = None
        if ctx.rank == 0:
            file = Path(export_best_model(tr.model, str(files.local), cfg=cfg, epoch=ep, label_names=data.names,
                                          iteration=state.global_step, extra_meta={"best_score": float(score)})).name
        state.best = {"score": score, "epoch": ep, "file": file, "confusion_matrix": report["confusion_matrix"]}
    return report


def _checkpoint(tr: Trainer, cfg: TrainJobConfig, ctx: WorkerContext, state: RunState, metrics: dict,
                report: dict | None, names: list[str], files: RunFiles, dataset: DatasetIdentity | None) -> None:
    with tempfile.TemporaryDirectory(prefix="recognizer_ckpt_") as tmp:
        if ctx.rank == 0:
            save_training_state(tmp, model=tr.model, optimizer=tr.optimizer, scheduler=tr.scheduler,
                                scaler=tr.scaler, epoch=state.epoch, extra=state.to_extra(names, ctx.world_size))
            dump_config(cfg, Path(tmp) / "config.yaml")
            if dataset is not None:  # a resume on a dataset rebuilt in place is refused (run_state.check_resumable)
                dataset.save(tmp)
            (Path(tmp) / "metrics.json").write_text(json.dumps({**metrics, "val_report": _jsonable(report)},
                                                               indent=1))
            files.sync()
            if files.remote and state.best["file"]:  # after the sync that uploaded it: the previous best goes
                remove_previous_best(files.uri, cfg.checkpoint.score_attribute, keep=state.best["file"])
        ctx.report(metrics, tmp if ctx.rank == 0 else None)


def _announce(cfg, ctx, data: Data, tr: Trainer, state: RunState, files: RunFiles) -> None:
    n_train, n_skip, n_val, n_val_skip = data.counts
    console(f"[recognizer] {ctx.world_size} worker(s) on {ctx.device.type} ({torch.get_num_threads()} torch threads "
            f"each, malloc {malloc_in_use()}, BatchNorm {bn_act.describe(ctx.device, cfg.train.compile)}"
            f"{'' if cfg.train.compile == 'none' else f', torch.compile mode {cfg.train.compile}'}); "
            f"train {n_train} clips "
            f"({data.num_batches} batches of {cfg.train.batch_size} per worker), val "
            f"{n_val} clips; lr {tr.lr:.3g}{f' (auto-scaled from {cfg.optim.lr:g})' if cfg.optim.auto_scale_lr else ''}"
            f"; skipped all-zero clips: {n_skip} train, {n_val_skip} val (not scored)")
    if state.epoch:
        console(f"[recognizer] resumed from checkpoint at epoch {state.epoch}")
        files.append_line("resume_log.jsonl", json.dumps({"time": time.time(), "resumed_from_epoch": state.epoch,
                                                         "world_size": ctx.world_size}))


def _epoch_line(m: dict, epochs: int) -> str:
    text = (f"[recognizer] epoch {m['epoch']}/{epochs}: train/loss {m['train/loss']:.4f}  lr {m['lr']:.3g}  "
            f"{m['train/samples_per_s']:.1f} samples/s")
    if "val/acc_top1" in m:  # printed only where validation ran
        text += f"  val/acc_top1 {m['val/acc_top1']:.4f}  val/mean_class_accuracy {m['val/mean_class_accuracy']:.4f}"
    return text


def _jsonable(report: dict | None) -> dict | None:
    return None if report is None else {k: v for k, v in report.items() if k not in ("scores", "labels")}


def _write_summary(files: RunFiles, summary: dict, best: dict, names, logger: ExperimentLogger, step: int) -> None:
    files.path("summary.json").write_text(json.dumps(summary, indent=1, default=float))
    logger.log_image("curves", plot_curves(summary["history"], files.path("curves.png")), step)
    if best.get("confusion_matrix") is not None:
        cm = plot_confusion_matrix(np.array(best["confusion_matrix"]), names, files.path("confusion_matrix_val.png"),
                                   title=f"validation, best epoch {best['epoch']}")
        logger.log_image("confusion_matrix/val", cm, step)
