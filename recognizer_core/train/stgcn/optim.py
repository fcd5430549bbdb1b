"""Optimizer, auto-scaled learning rate and the guide's schedules (mmengine semantics, one LambdaLR).

mmengine's `LinearLR(start_factor, end=warmup, convert_to_iter_based=True)` followed by
`MultiStepLR(begin=warmup, milestones, gamma)` (milestones count epochs from the end of warmup, as mmengine counts
from `begin`; stepped per epoch) or `CosineAnnealingLR(begin=warmup, T_max, eta_min)` (per epoch) is expressed as
a single per-iteration factor, so the scheduler state is one step counter and resumes exactly. The counter is
the iteration (batch), stepped after every batch whether or not an optimizer step ran, as mmengine's
ParamSchedulerHook steps it, so with gradient accumulation an optimizer step uses the lr mmengine has at that
iteration. Two edge cases differ from mmengine on purpose (lr_factor; docs/training.md).
"""
from __future__ import annotations

import bisect
import logging
import math
import warnings

import torch

from recognizer_core.train.stgcn.config import OptimConfig, ScheduleConfig

log = logging.getLogger("recognizer")


def scaled_lr(cfg: OptimConfig, world_size: int, batch_size: int) -> float:
    """mmengine auto_scale_lr: lr * (world_size * batch_size) / base_batch_size (accumulation not counted,
    as in mmengine)."""
    if not cfg.auto_scale_lr:
        return cfg.lr
    return cfg.lr * (world_size * batch_size) / cfg.base_batch_size


def build_optimizer(params, cfg: OptimConfig, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """`fused` (training on a GPU): the update as one multi-tensor kernel, which also takes a `found_inf` flag on
    the device and then leaves the parameters alone (loop._optimizer_step), so a non-finite step costs no launch
    per gradient and no host sync. Off on a CPU, whose steps stay as they were."""
    kw = {"fused": True} if fused else {}
    if cfg.type == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 **kw)
    sgd = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.nesterov and cfg.momentum > 0, **kw)
    sgd.register_step_pre_hook(zero_missing_momentum)
    return sgd


def zero_missing_momentum(optimizer: torch.optim.Optimizer, args=(), kwargs=None) -> None:
    """Step pre-hook: a zero momentum buffer for each parameter about to be stepped by fused SGD without one.

    torch's fused SGD starts a first step's buffers with `empty_like` and lets the kernel copy the gradient in,
    but the kernel returns at once when `found_inf` is set (GradScaler's overflow, NonFiniteGuard), so a skipped
    first step leaves uninitialised memory that the next step multiplies by the momentum. With zeros the first
    real step is stock SGD's (buf = momentum * 0 + (1 - dampening) * g = g: dampening is 0 here). Made at step
    time, not in build_optimizer, so each buffer is on the device and dtype its parameter has then (the model is
    placed after the optimizer is built); a resumed buffer is left alone."""
    for group in optimizer.param_groups:
        if not group.get("fused") or group["momentum"] == 0:
            continue
        for p in group["params"]:   # only those with a gradient: a state entry per parameter, as stock SGD keeps
            if p.grad is not None and optimizer.state[p].get("momentum_buffer") is None:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def lr_factor(step: int, *, iters_per_epoch: int, cfg: ScheduleConfig, base_lr: float,
              cosine_t_max: int) -> float:
    """Multiplier of the base lr at iteration `step` (0-based, one per batch), equal to mmengine's chained
    schedulers except in two edge cases (docs/training.md):
    - a warmup of exactly one iteration: mmengine's LinearLR then has total_iters 0 and leaves the lr at
      start_factor for the whole run; here it is start_factor at iteration 0 and 1.0 after, as a warmup means;
    - cosine with T_max shorter than the epochs after the warmup: mmengine's curve rises again after T_max; here
      it holds eta_min.

    mmengine counts a scheduler's steps from its `begin`, so the guide's `MultiStepLR(begin=3,
    milestones=[15, 25])` decays at epochs 3+15 and 3+25; milestones here have the same meaning.
    """
    epoch = step // iters_per_epoch  # by-epoch schedules change at epoch boundaries
    warmup_iters = int(cfg.warmup_epochs * iters_per_epoch)   # mmengine's build_iter_from_epoch truncates
    warm = 1.0
    if warmup_iters > 1 and step < warmup_iters:
        # LinearLR(end=warmup_iters): total_iters = end - begin - 1, reaching 1.0 on the last warmup step
        warm = cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * step / (warmup_iters - 1)
    elif warmup_iters == 1 and step == 0:  # mmengine keeps start_factor forever here; a warmup ends at 1.0
        warm = cfg.warmup_start_factor
    begin = int(math.ceil(cfg.warmup_epochs))
    t = epoch - begin
    if cfg.type == "multistep":
        main = cfg.gamma ** bisect.bisect_right(cfg.milestones, t) if t >= 0 else 1.0
    elif cfg.type == "cosine":
        t = min(max(t, 0), cosine_t_max)  # mmengine's cosine would rise again after T_max; we hold eta_min
        floor = min(cfg.eta_min / base_lr, 1.0)
        main = floor + (1.0 - floor) * (1 + math.cos(math.pi * t / cosine_t_max)) / 2
    else:
        main = 1.0
    return warm * main


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, *, iters_per_epoch: int,
                    cosine_t_max: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration (every batch, also those that only accumulate a gradient), as mmengine's
    ParamSchedulerHook.after_train_iter: `iters_per_epoch` is the number of batches per epoch."""
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
    base_lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, iters_per_epoch=iters_per_epoch, cfg=cfg, base_lr=base_lr,
                                          cosine_t_max=cosine_t_max))


def schedule_step(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Moves the schedule on after a batch. torch warns at a scheduler's first step when no optimizer step came
    before it; with accumulation (or a skipped first step) that order is intended, so that one check is silenced."""
    if scheduler._step_count != 1:
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        scheduler.step()


def align_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, global_step: int) -> None:
    """After a resume: a checkpoint written while the schedule counted optimizer steps (before 2026-12-05, with
    accumulation > 1) holds fewer steps than batches; read on the batch axis its epochs would come out
    accumulative_counts times too early and the milestones late, so it continues at batch `global_step`."""
    if not global_step or scheduler.last_epoch == global_step:
        return
    log.warning("the checkpoint's lr schedule counted %d optimizer steps; it continues at batch %d, as the "
                "schedule now counts batches", scheduler.last_epoch, global_step)
    scheduler.last_epoch = global_step - 1
    schedule_step(scheduler)  # sets the lr of batch global_step
