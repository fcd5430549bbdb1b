"""The STGCN++ training loop run by every worker (Ray Train or a single local process).

Ray stays outside: the loop talks to a `WorkerContext` (rank, device, DDP wrapping, report, latest
checkpoint), implemented for Ray Train in `ray_train.py` and for one process in `worker.LocalContext`.
Randomness of an epoch (shuffle, augmentation, dropout) derives from (seed, epoch, rank), so a run resumed
from a checkpoint continues exactly as the uninterrupted run would.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from recognizer_core.config import dump_config
from recognizer_core.models.checkpoint import export_mmaction_checkpoint
from recognizer_core.models.recognizer import build_recognizer
from recognizer_core.skeleton.store import SkeletonDataset
from recognizer_core.train import data as tdata
from recognizer_core.train.config import TrainJobConfig
from recognizer_core.train.evaluate import autocast, console, evaluate
from recognizer_core.train.experiment_log import ExperimentLogger
from recognizer_core.train.metrics import flat_metrics
from recognizer_core.train.optim import build_optimizer, build_scheduler, scaled_lr
from recognizer_core.train.state import load_training_state, save_training_state, unwrap

from recognizer_core.train.worker import (EarlyStopper, WorkerContext, all_reduce, check_resumable, distributed,
                                          maybe_inject_fault)

log = logging.getLogger("recognizer")


def _should_validate(epoch: int, cfg: TrainJobConfig) -> bool:
    """mmengine EpochBasedTrainLoop: after epoch e (1-based) if e >= val_begin and e % val_interval == 0, and
    always after the last epoch."""
    t = cfg.train
    return epoch >= t.val_begin and (epoch % t.val_interval == 0 or epoch == t.epochs)


def train_loop(cfg: TrainJobConfig, dataset_path: str, run_dir: str, ctx: WorkerContext) -> dict:
    """Train (resuming from ctx's latest checkpoint if any); returns the final summary (rank 0's view)."""
    rank, world, device = ctx.rank, ctx.world_size, ctx.device
    run_dir = Path(run_dir)
    t_cfg, d_cfg = cfg.train, cfg.data
    names = d_cfg.label_names
    ds = SkeletonDataset(dataset_path)
    names = names or (ds.label_names if len(ds.label_names) == cfg.model.num_classes else None) or \
        [str(i) for i in range(cfg.model.num_classes)]
    k = cfg.model.num_classes
    train_info = tdata.split_info(ds, d_cfg.train_split, k)
    val_info = tdata.split_info(ds, d_cfg.val_split, k)
    if rank == 0 and len(np.unique(val_info.labels)) < 2:
        log.warning("validation split %r has a single class (%s): val/mean_class_accuracy is not informative",
                    d_cfg.val_split, names[int(val_info.labels[0])])

    num_joints = cfg.model.num_joints
    train_clips, skipped = tdata.load_shard(ds, tdata.shard_positions(train_info, rank, world), d_cfg, k,
                                            num_joints, f"{dataset_path} [{d_cfg.train_split}]")
    val_clips, val_valid = tdata.eval_shard(ds, val_info, rank, world, d_cfg, k, num_joints,
                                            f"{dataset_path} [{d_cfg.val_split}]")
    n_train, n_skip, n_val = all_reduce([len(train_clips), len(skipped), val_valid])
    if skipped:
        log.warning("rank %d: skipped %d all-zero skeleton clip(s) in %r: %s", rank, len(skipped),
                    d_cfg.train_split, skipped[:10])
    # DDP needs the same number of steps on every rank: the largest shard decides, smaller ones wrap around.
    bs, vbs = t_cfg.batch_size, t_cfg.val_batch_size or t_cfg.batch_size
    num_batches = int(all_reduce([tdata.num_batches_for(len(train_clips), bs)], dist.ReduceOp.MAX)[0])
    num_vbatches = int(all_reduce([tdata.num_batches_for(len(val_clips), vbs)], dist.ReduceOp.MAX)[0])
    train_set = tdata.ShardBatches(train_clips, num_batches, bs, cfg.pipeline, train=True, seed=t_cfg.seed,
                                   rank=rank)
    val_set = tdata.ShardBatches(val_clips, num_vbatches, vbs, cfg.pipeline, train=False, seed=t_cfg.seed,
                                 rank=rank, num_valid=val_valid)
    pin = device.type == "cuda"
    train_loader, train_sampler = tdata.make_loader(train_set, d_cfg.loader_workers, d_cfg.prefetch_batches, pin)
    val_loader, val_sampler = tdata.make_loader(val_set, d_cfg.loader_workers, d_cfg.prefetch_batches, pin)

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes (clip_len, num_person): autotune the convs once
    torch.manual_seed(t_cfg.seed)  # identical initial weights on every rank
    model = build_recognizer(cfg.model)
    lr = scaled_lr(cfg.optim, world, bs)
    optimizer = build_optimizer(model.parameters(), cfg.optim, lr)
    steps_per_epoch = math.ceil(num_batches / t_cfg.accumulative_counts)
    scheduler = build_scheduler(optimizer, cfg.schedule, iters_per_epoch=steps_per_epoch,
                                cosine_t_max=cfg.cosine_t_max)
    use_scaler = t_cfg.amp == "fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler,
                                  init_scale=2.0 ** 16 if t_cfg.loss_scale == "dynamic" else float(t_cfg.loss_scale))
    class_weight = torch.tensor(t_cfg.class_weight, dtype=torch.float32, device=device) \
        if t_cfg.class_weight else None

    start_epoch, extra = 0, {}
    with ctx.checkpoint_dir() as ckpt:
        if ckpt:
            check_resumable(cfg, Path(ckpt))
            state = load_training_state(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
            start_epoch, extra = int(state["epoch"]), state.get("extra") or {}
    model = ctx.prepare_model(model)

    history: list[dict] = list(extra.get("history", []))
    best = dict(extra.get("best", {"score": -math.inf, "epoch": 0, "file": None}))
    best_state = extra.get("best_state_dict")
    stopper = EarlyStopper(t_cfg.early_stopping.patience, t_cfg.early_stopping.min_delta, extra.get("early_stopping"))
    last_val = dict(extra.get("last_val", {"val/acc_top1": 0.0, "val/mean_class_accuracy": 0.0, "val/epoch": 0}))
    nonfinite = int(extra.get("nonfinite_in_a_row", 0))
    logger = ExperimentLogger(run_dir / "logs", config=json.loads(cfg.model_dump_json()), wandb=cfg.wandb,
                              enabled=rank == 0, run_name=cfg.run.name)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        console(f"[recognizer] {world} worker(s) on {device.type} ({torch.get_num_threads()} torch threads each); "
                f"train {int(n_train)} clips ({num_batches} batches of {bs} per worker), val {int(n_val)} clips; "
                f"lr {lr:.3g}{f' (auto-scaled from {cfg.optim.lr:g})' if cfg.optim.auto_scale_lr else ''}; "
                f"skipped all-zero training clips: {int(n_skip)}")
        if start_epoch:
            console(f"[recognizer] resumed from checkpoint at epoch {start_epoch}")
            with open(run_dir / "resume_log.jsonl", "a") as f:
                f.write(json.dumps({"time": time.time(), "resumed_from_epoch": start_epoch,
                                    "world_size": world}) + "\n")

    stopped_early, last_ckpt_epoch = False, start_epoch
    global_step = start_epoch * num_batches
    for epoch in range(start_epoch, t_cfg.epochs):
        ep = epoch + 1
        torch.manual_seed(int(np.random.SeedSequence([t_cfg.seed, ep, rank]).generate_state(1)[0]))  # dropout
        train_sampler.set_epoch(epoch)
        metrics, nonfinite, global_step = _train_epoch(
            model, train_loader, num_batches, optimizer, scheduler, scaler, class_weight, cfg, device, rank, ep,
            nonfinite, global_step, logger)
        validated = _should_validate(ep, cfg)
        report = None
        if validated:
            val_sampler.set_epoch(epoch)
            report = evaluate(model, val_loader, device, amp=t_cfg.amp, label_names=names)
            last_val = {**flat_metrics(report, "val"), "val/epoch": ep}
            score = last_val[cfg.checkpoint.score_attribute]
            if score > best["score"]:
                unwrapped = unwrap(model)
                best_state = {k2: v.detach().cpu().clone() for k2, v in unwrapped.state_dict().items()}
                metric = cfg.checkpoint.score_attribute.split("/")[-1]
                best = {"score": score, "epoch": ep, "file": f"best_{metric}_epoch_{ep}.pth",
                        "confusion_matrix": report["confusion_matrix"]}
                if rank == 0:
                    _export_best(unwrapped, run_dir, best, cfg, names, steps_per_epoch)
            if t_cfg.early_stopping.enabled:
                stopped_early = stopper.update(last_val[t_cfg.early_stopping.monitor])
        metrics.update(last_val)
        metrics["val/validated"] = int(validated)
        history.append({k2: v for k2, v in metrics.items()})
        if rank == 0:
            logger.log(metrics, ep, console=False)
            console(_epoch_line(metrics, validated, t_cfg.epochs))
        if validated or stopped_early or ep == t_cfg.epochs:
            extra = {"history": history, "best": best, "best_state_dict": best_state, "last_val": last_val,
                     "early_stopping": stopper.state(), "nonfinite_in_a_row": nonfinite,
                     "label_names": names, "world_size": world}
            with tempfile.TemporaryDirectory(prefix="recognizer_ckpt_") as tmp:
                if rank == 0:
                    save_training_state(tmp, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                        epoch=ep, extra=extra)
                    dump_config(cfg, Path(tmp) / "config.yaml")
                    (Path(tmp) / "metrics.json").write_text(json.dumps(
                        {**metrics, "val_report": _jsonable(report)}, indent=1))
                ctx.report(metrics, tmp if rank == 0 else None)
            last_ckpt_epoch = ep
        else:
            ctx.report(metrics, None)
        maybe_inject_fault(ep, rank, run_dir, last_ckpt_epoch)
        if stopped_early:
            if rank == 0:
                console(f"[recognizer] early stopping at epoch {ep}: {t_cfg.early_stopping.monitor} did not improve "
                        f"by more than {t_cfg.early_stopping.min_delta} for {stopper.patience} validations")
            break

    summary = {"epochs_run": history[-1]["epoch"] if history else start_epoch, "stopped_early": stopped_early,
               "best": {k2: v for k2, v in best.items() if k2 != "confusion_matrix"}, "history": history,
               "label_names": names, "world_size": world}
    if rank == 0:
        _write_summary(run_dir, summary, best, names, logger)
    logger.close()
    summary["best_state_dict"] = best_state  # for the test after training; not written to summary.json
    return summary


def _train_epoch(model, train_loader, num_batches: int, optimizer, scheduler, scaler, class_weight, cfg: TrainJobConfig,
                 device: torch.device, rank: int, ep: int, nonfinite: int, global_step: int, logger):
    """One epoch of DDP training steps (accumulation, clipping, AMP, non-finite skips); returns the epoch's
    train metrics, the running count of non-finite losses in a row and the global step."""
    t_cfg = cfg.train
    model.train()
    t0, loss_sum, loss_n, samples, skipped_steps = time.time(), 0.0, 0, 0, 0
    optimizer.zero_grad(set_to_none=True)
    data_wait, batches = 0.0, iter(train_loader)
    for i in range(num_batches):
        t_fetch = time.time()
        x, y, _ = next(batches)
        data_wait += time.time() - t_fetch  # ~0 when the loader keeps up: the input pipeline is not the bottleneck
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        n_clips = x.shape[1]
        boundary = (i + 1) % t_cfg.accumulative_counts == 0 or i + 1 == num_batches
        sync = model.no_sync() if (distributed() and not boundary and hasattr(model, "no_sync")) \
            else nullcontext()
        with sync:
            with autocast(device, t_cfg.amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y.repeat_interleave(n_clips), weight=class_weight)
            bad = all_reduce([float(not torch.isfinite(loss).item())], dist.ReduceOp.MAX)[0] > 0
            if bad:
                # Skipped on every rank together (DDP); the partial accumulation window is dropped too.
                optimizer.zero_grad(set_to_none=True)
                skipped_steps += 1
                nonfinite += 1
                if rank == 0:
                    log.warning("epoch %d iter %d: non-finite loss, step skipped (%d in a row)", ep, i, nonfinite)
                if nonfinite > t_cfg.max_nonfinite_steps:
                    raise FloatingPointError(
                        f"{nonfinite} non-finite losses in a row (train.max_nonfinite_steps="
                        f"{t_cfg.max_nonfinite_steps}) at epoch {ep}: the run diverged; lower optim.lr, "
                        "enable clipping or check the data for NaN")
                continue
            nonfinite = 0
            scaler.scale(loss / t_cfg.accumulative_counts).backward()
        loss_sum, loss_n, samples = loss_sum + loss.detach(), loss_n + 1, samples + x.shape[0]
        if boundary:
            scaler.unscale_(optimizer)
            if cfg.optim.clip_grad_max_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_max_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        global_step += 1
        if rank == 0 and t_cfg.log_interval and (i + 1) % t_cfg.log_interval == 0:
            lr_now = optimizer.param_groups[0]["lr"]
            logger.log({"train/loss_iter": loss.item(), "lr_iter": lr_now}, global_step, console=False)
            console(f"[recognizer] epoch {ep} iter {i + 1}/{num_batches}: loss {loss.item():.4f} lr {lr_now:.3g}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.time() - t0
    tot_loss, tot_n, tot_samples = all_reduce([float(loss_sum), loss_n, samples])
    metrics: dict[str, Any] = {
        "epoch": ep, "train/loss": tot_loss / tot_n if tot_n else float("nan"),
        "lr": optimizer.param_groups[0]["lr"], "train/samples_per_s": tot_samples / dt,
        "train/epoch_time_s": dt, "train/data_wait_frac": data_wait / dt, "train/skipped_steps": skipped_steps,
    }
    return metrics, nonfinite, global_step


def _epoch_line(m: dict, validated: bool, epochs: int) -> str:
    text = (f"[recognizer] epoch {m['epoch']}/{epochs}: train/loss {m['train/loss']:.4f}  lr {m['lr']:.3g}  "
            f"{m['train/samples_per_s']:.1f} samples/s")
    if validated:
        text += f"  val/acc_top1 {m['val/acc_top1']:.4f}  val/mean_class_accuracy {m['val/mean_class_accuracy']:.4f}"
    return text


def _export_best(model, run_dir: Path, best: dict, cfg: TrainJobConfig, names, steps_per_epoch: int) -> None:
    # mmengine CheckpointHook(save_best): one best_<metric>_epoch_N.pth, the previous one removed
    for old in run_dir.glob("best_*_epoch_*.pth"):
        old.unlink()
    export_mmaction_checkpoint(model, run_dir / best["file"], cfg=cfg.model, epoch=best["epoch"],
                               iteration=best["epoch"] * steps_per_epoch, classes=list(names),
                               extra_meta={"best_score": float(best["score"]),
                                           "score_attribute": cfg.checkpoint.score_attribute})


def _jsonable(report: dict | None) -> dict | None:
    if report is None:
        return None
    return {k: v for k, v in report.items() if k not in ("scores", "labels")}


def _write_summary(run_dir: Path, summary: dict, best: dict, names, logger: ExperimentLogger) -> None:
    from recognizer_core.train.plots import plot_confusion_matrix, plot_curves

    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    step = summary["epochs_run"]
    curves = plot_curves(summary["history"], run_dir / "curves.png")
    logger.log_image("curves", curves, step)
    if best.get("confusion_matrix") is not None:
        cm = plot_confusion_matrix(np.array(best["confusion_matrix"]), names, run_dir / "confusion_matrix_val.png",
                                   title=f"validation, best epoch {best['epoch']}")
        logger.log_image("confusion_matrix/val", cm, step)
