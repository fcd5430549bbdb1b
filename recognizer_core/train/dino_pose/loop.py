"""The DINO pose training loop of one worker: data, model, AdamW + warmup/cosine, AMP, validation with COCO AP,
checkpoints. No Ray here: the runner (Ray Train in `dino_pose_ray.py`, or a plain process in tests) passes a
`WorkerContext` with its rank, device, model wrapper (DDP) and a `report(metrics, checkpoint_dir)` callback.
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from recognizer_core.coco_pose.dataset import CocoPoseDataset
from recognizer_core.models.dino_heads import weighted_heatmap_mse
from recognizer_core.models.dino_pose import KEYPOINT_HEAD, build_dino_pose_model
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
from recognizer_core.train.dino_pose.evaluate import target_batch, validate
from recognizer_core.train.experiment_log import ExperimentLogger
from recognizer_core.train.state import load_training_state, save_training_state, unwrap

log = logging.getLogger("recognizer")
MODEL_FILE = "model.pt"  # inference weights + config inside every checkpoint (the guide's best_model.pth)


@dataclass
class WorkerContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    wrap_model: Callable[[nn.Module], nn.Module] = lambda m: m
    report: Callable[[dict, Path | None], None] = lambda metrics, checkpoint_dir: None
    resume_dir: Path | None = None
    log_dir: Path = Path("logs")


def amp_settings(setting: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """-> (autocast dtype or None, use a GradScaler)."""
    if setting == "none" or (setting == "auto" and device.type != "cuda"):
        return None, False
    if setting == "auto":
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    if setting == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs a GPU (loss scaling is a CUDA recipe); use bf16 or none on CPU")
        return torch.float16, True
    return torch.bfloat16, False


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, start_factor: float, min_ratio: float) -> float:
    """Linear warmup from start_factor to 1 over warmup_steps, then cosine down to min_ratio at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_datasets(cfg: DinoPoseJobConfig) -> tuple[CocoPoseDataset, CocoPoseDataset]:
    cfg.require_data()
    d = cfg.data
    # Targets are rendered on the training device (`target_batch`), not shipped through the DataLoader.
    train = CocoPoseDataset(d.train_image_dir, d.train_annotation_file, d, train=True,
                            max_instances=d.max_train_instances, seed=cfg.train.seed, with_heatmaps=False)
    val = CocoPoseDataset(d.val_image_dir, d.val_annotation_file, d, train=False, bbox_file=d.val_bbox_file,
                          max_instances=d.max_val_instances, seed=cfg.train.seed, with_heatmaps=False)
    for name, ds in (("train", train), ("val", val)):
        if len(ds) == 0:
            raise ValueError(f"{ds.annotation_file}: no usable person in the {name} set (skipped: {ds.skipped})")
    return train, val


def _all_reduce_sum(values: list[float], device: torch.device, world_size: int) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world_size > 1 and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()



class NonFiniteLossError(RuntimeError):
    pass


def train_one_epoch(model, loader, optimizer, scheduler, scaler, *, amp_dtype, cfg: DinoPoseJobConfig,
                    ctx: WorkerContext, logger: ExperimentLogger, step0: int) -> tuple[float, int, float]:
    """-> (mean loss over all workers, steps taken, images/s of this worker)."""
    model.train()
    device = ctx.device
    total, count, bad_in_a_row, steps = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    seen = 0
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    for i, batch in enumerate(loader):
        images = batch["image"].to(device, non_blocking=True)
        target, weight = target_batch(batch, cfg, device)
        with autocast:
            pred = model(images)[KEYPOINT_HEAD]
        loss = weighted_heatmap_mse(pred, target, weight)
        finite = _all_reduce_sum([0.0 if torch.isfinite(loss) else 1.0], device, ctx.world_size)[0] == 0
        optimizer.zero_grad(set_to_none=True)
        if not finite:  # every rank skips together, or DDP's gradient all-reduce would hang
            bad_in_a_row += 1
            log.warning("non-finite loss at step %d, batch skipped (%d in a row)", step0 + i, bad_in_a_row)
            if bad_in_a_row > 20:
                raise NonFiniteLossError("more than 20 non-finite losses in a row: lower optim.lr or set "
                                         "train.amp=none")
            continue
        bad_in_a_row = 0
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.optim.clip_grad_max_norm:
            torch.nn.utils.clip_grad_norm_(unwrap(model).trainable_parameters(), cfg.optim.clip_grad_max_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        steps += 1
        n = images.shape[0]
        seen += n
        total += float(loss.detach()) * n
        count += n
        every = cfg.train.log_interval
        if every and (step0 + steps) % every == 0:
            logger.log({"train_loss_step": float(loss.detach()), "learning_rate": scheduler.get_last_lr()[0]},
                       step=step0 + steps, console=False)
    elapsed = time.perf_counter() - t0
    total, count = _all_reduce_sum([total, float(count)], device, ctx.world_size)
    return total / max(count, 1.0), steps, seen / max(elapsed, 1e-9)


def write_checkpoint(directory: Path, *, model, optimizer, scheduler, scaler, epoch: int, step: int, best_ap: float,
                     metrics: dict, cfg: DinoPoseJobConfig) -> Path:
    save_training_state(directory, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, epoch=epoch,
                        extra={"best_ap": best_ap, "global_step": step})
    torch.save({"model_state_dict": unwrap(model).state_dict(), "config": cfg.model_dump(mode="json"),
                "epoch": epoch + 1, "metrics": metrics}, directory / MODEL_FILE)
    return directory


def load_pose_model(checkpoint: str | Path, device: torch.device | str = "cpu", backbone: str | None = None):
    """A trained estimator from a checkpoint directory or its model.pt; the backbone is loaded by the name stored
    in the checkpoint unless `backbone` (e.g. a local copy) is given."""
    path = Path(checkpoint)
    path = path / MODEL_FILE if path.is_dir() else path
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = DinoPoseJobConfig.model_validate(ckpt["config"])
    if backbone:
        cfg.model.backbone = backbone
    model = build_dino_pose_model(cfg.model, image_size=cfg.data.image_size, heatmap_size=cfg.data.heatmap_size,
                                  device=device)
    model.load_state_dict(ckpt["model_state_dict"])
    return model.eval(), cfg


def run_dino_pose_training(cfg: DinoPoseJobConfig, ctx: WorkerContext) -> dict:
    """Train (or continue) to cfg.train.epochs; report after every epoch; return the last metrics."""
    torch.manual_seed(cfg.train.seed)  # identical head init on every rank
    np.random.seed(cfg.train.seed)
    train_ds, val_ds = build_datasets(cfg)
    d = cfg.data
    sampler = DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.train.seed)
    pin = ctx.device.type == "cuda"
    train_loader = DataLoader(train_ds, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=d.num_workers,
                              pin_memory=pin)  # the sampler pads ranks to equal length: same step counts
    val_indices = list(range(ctx.rank, len(val_ds), ctx.world_size))  # a partition: no duplicated instance
    val_loader = DataLoader(torch.utils.data.Subset(val_ds, val_indices),
                            batch_size=cfg.train.val_batch_size or cfg.train.batch_size, shuffle=False,
                            num_workers=d.num_workers, pin_memory=pin)

    model = build_dino_pose_model(cfg.model, image_size=d.image_size, heatmap_size=d.heatmap_size, device=ctx.device)
    trainable = model.trainable_parameters()
    model = ctx.wrap_model(model)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)
    steps_per_epoch = max(1, len(train_loader))
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, total_steps=total_steps, warmup_steps=warmup, start_factor=cfg.optim.warmup_start_factor,
        min_ratio=cfg.optim.min_lr_ratio))
    amp_dtype, use_scaler = amp_settings(cfg.train.amp, ctx.device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    start_epoch, best_ap, step = 0, -1.0, 0
    if ctx.resume_dir is not None:
        state = load_training_state(ctx.resume_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                                    scaler=scaler)
        start_epoch = state["epoch"] + 1
        best_ap = float(state["extra"].get("best_ap", -1.0))
        step = int(state["extra"].get("global_step", start_epoch * steps_per_epoch))
        log.info("resumed from %s at epoch %d", ctx.resume_dir, start_epoch)

    logger = ExperimentLogger(ctx.log_dir, config=cfg.model_dump(mode="json"), wandb=cfg.wandb,
                              enabled=ctx.rank == 0, run_name=cfg.run.name)
    if ctx.rank == 0:
        log.info("DINO pose: %d train / %d val crops (skipped train %s, val %s), %d steps/epoch",
                 len(train_ds), len(val_ds), train_ds.skipped, val_ds.skipped, steps_per_epoch)
    metrics: dict = {}
    val_metrics = {"val/loss": float("nan"), "val/AP": 0.0, "val/AP50": 0.0, "val/AP75": 0.0, "val/AR": 0.0}
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            t0 = time.perf_counter()
            train_loss, steps, ips = train_one_epoch(model, train_loader, optimizer, scheduler, scaler,
                                                     amp_dtype=amp_dtype, cfg=cfg, ctx=ctx, logger=logger, step0=step)
            step += steps
            validated = (epoch + 1) % cfg.train.val_interval == 0 or epoch == cfg.train.epochs - 1
            if validated:
                val_metrics = validate(unwrap(model), val_loader, val_ds, cfg=cfg, ctx=ctx, amp_dtype=amp_dtype,
                                       logger=logger, epoch=epoch, step=step)
                best_ap = max(best_ap, val_metrics["val/AP"])
            metrics = {"epoch": epoch + 1, "train/loss": train_loss, **val_metrics,
                       "lr": scheduler.get_last_lr()[0], "best/AP": best_ap}
            logger.log({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_metrics["val/loss"],
                        "learning_rate": metrics["lr"], **{k: v for k, v in val_metrics.items() if k != "val/loss"},
                        "train_images_per_s": ips * ctx.world_size, "epoch_time_s": time.perf_counter() - t0},
                       step=step)
            # A checkpoint only where val/AP was measured on it: Ray keeps and picks the best by that score.
            tmp = None
            if ctx.rank == 0 and validated:
                tmp = Path(tempfile.mkdtemp(prefix="dino_pose_ckpt_"))
                write_checkpoint(tmp, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                 epoch=epoch, step=step, best_ap=best_ap, metrics=metrics, cfg=cfg)
            try:
                ctx.report(metrics, tmp)
            finally:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
    finally:
        logger.close()
    return metrics
