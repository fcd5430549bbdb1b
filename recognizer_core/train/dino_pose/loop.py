"""The DINO pose training loop of one worker: data, model, AdamW + warmup/cosine, AMP, validation with COCO AP,
checkpoints. No Ray here: the runner (Ray Train in `job.py`, or `LocalContext` in tests) passes the shared
`WorkerContext` (rank, device, DDP placement, report, latest checkpoint), as for STGCN++.
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from recognizer_core.coco_pose.dataset import CocoPoseDataset
from recognizer_core.models.dino_heads import weighted_heatmap_mse
from recognizer_core.models.dino_pose import KEYPOINT_HEAD, build_dino_pose_model
from recognizer_core.storage import filesystem, is_remote, join_uri, read_bytes, write_bytes
from recognizer_core.train.amp import AmpPlan, amp_plan
from recognizer_core.train.collectives import sync_buffers
from recognizer_core.train.context import WorkerContext
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
from recognizer_core.train.dino_pose.evaluate import target_batch, validate
from recognizer_core.train.epochs import should_validate
from recognizer_core.train.cpu_malloc import malloc_in_use
from recognizer_core.train.experiment_log import ExperimentLogger, console
from recognizer_core.train.nonfinite import LossMeter, NonFiniteGuard
from recognizer_core.train.run_files import RunFiles
from recognizer_core.train.state import FROM_FALLBACK, STATE_FILE, place_and_resume, save_training_state, unwrap

log = logging.getLogger("recognizer")
MODEL_FILE = "model.pt"  # inference weights + config inside every checkpoint (the guide's best_model.pth)
BEST_FILE, LATEST_FILE = "best_model.pth", "latest_checkpoint.pth"  # the guide's files, in the run folder


def warmup_cosine_factor(step: int, *, total_steps: int, warmup_steps: int, start_factor: float,
                         min_ratio: float) -> float:
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


def remote_state_uri(uri: str) -> str | None:
    """The training-state file a remote run.resume_from names: the object itself, or STATE_FILE inside a
    checkpoint folder; None when neither exists."""
    fs, path = filesystem(uri)
    for candidate, inner in ((uri, path), (join_uri(uri, STATE_FILE), join_uri(path, STATE_FILE))):
        if fs.get_file_info(inner).type == pafs.FileType.File:
            return candidate
    return None


def local_resume_from(resume_from: str | None, directory: Path) -> str | None:
    """run.resume_from as a path torch.load can open: a remote one (s3://...) is downloaded into `directory`
    (the state loader reads local paths only)."""
    if not resume_from or not is_remote(resume_from):
        return resume_from
    uri = remote_state_uri(resume_from)
    data = read_bytes(uri) if uri else None
    if data is None:
        raise FileNotFoundError(f"run.resume_from={resume_from}: no checkpoint file or folder with {STATE_FILE}")
    local = directory / STATE_FILE
    local.write_bytes(data)
    return str(local)


@dataclass
class Trainer:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    amp: AmpPlan
    guard: NonFiniteGuard


def build_parts(cfg: DinoPoseJobConfig, ctx: WorkerContext, steps_per_epoch: int) -> tuple[Trainer, dict | None]:
    """Model on its device (frozen backbone kept out of DDP), optimizer, schedule; then the latest checkpoint
    (or run.resume_from) restored into them."""
    d = cfg.data
    model = build_dino_pose_model(cfg.model, image_size=d.image_size, heatmap_size=d.heatmap_size, device=ctx.device)
    trainable = model.trainable_parameters()
    # identical on every rank and never trained: no DDP broadcast, no gradient buckets
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, model.backbone_parameter_names())
    # fused on a GPU: one kernel, and it takes the non-finite flag on the device (no host sync per step)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay, fused=ctx.device.type == "cuda")
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine_factor(
        s, total_steps=total_steps, warmup_steps=warmup, start_factor=cfg.optim.warmup_start_factor,
        min_ratio=cfg.optim.min_lr_ratio))
    amp = amp_plan(cfg.train.amp, ctx.device)
    scaler = torch.amp.GradScaler("cuda") if amp.scaler else None
    # A remote resume_from is fetched even when the run's own checkpoint wins: place_and_resume decides which.
    with tempfile.TemporaryDirectory(prefix="dino_pose_resume_") as tmp:
        model, restored = place_and_resume(ctx, model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                           fallback=local_resume_from(cfg.run.resume_from, Path(tmp)))
    guard = NonFiniteGuard(ctx.device, cfg.train.max_nonfinite_steps)
    return Trainer(model, optimizer, scheduler, scaler, amp, guard), restored


def train_one_epoch(tr: Trainer, loader, *, cfg: DinoPoseJobConfig, ctx: WorkerContext, logger: ExperimentLogger,
                    step: int, epoch: int) -> tuple[float, int, float, float]:
    """-> (mean loss over all workers, the global step after the epoch, images/s of this worker, the lr the
    epoch's last step used). The loss stays on the device; the workers sync once per log interval and at the end."""
    model, device = tr.model, ctx.device
    model.train()
    epoch_loss, interval_loss, seen = LossMeter(device), LossMeter(device), 0
    params = list(unwrap(model).trainable_parameters())
    t0 = time.perf_counter()
    step_lr = tr.optimizer.param_groups[0]["lr"]  # defined for an empty loader too
    for batch in loader:
        # read before scheduler.step() moves it on: lr_iter is the lr this step used, as mmengine logs it
        step_lr = tr.optimizer.param_groups[0]["lr"]
        images = batch["image"].to(device, non_blocking=True)
        target, weight = target_batch(batch, cfg, device)
        with tr.amp.autocast(device):
            pred = model(images)[KEYPOINT_HEAD]
        loss = weighted_heatmap_mse(pred, target, weight)
        tr.optimizer.zero_grad(set_to_none=True)
        (tr.scaler.scale(loss) if tr.scaler is not None else loss).backward()
        if tr.scaler is not None:
            tr.scaler.unscale_(tr.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad_max_norm) \
            if cfg.optim.clip_grad_max_norm else None
        finite = tr.guard.finite_loss(loss)
        if tr.scaler is not None:  # the scaler skips non-finite steps itself
            tr.scaler.step(tr.optimizer)
            tr.scaler.update()
        elif tr.guard.step_allowed(tr.optimizer, params, norm):  # fused (GPU): skips on the device
            try:
                tr.optimizer.step()
            finally:
                tr.optimizer.__dict__.pop("found_inf", None)
        tr.scheduler.step()
        step += 1
        n = images.shape[0]
        seen += n
        epoch_loss.add(loss, finite, n)  # weighted by images: the mean over all images of all workers
        interval_loss.add(loss, finite, n)
        every = cfg.train.log_interval
        if every and step % every == 0:
            tr.guard.check(f"at epoch {epoch}")
            logger.log({"train/loss_iter": interval_loss.mean(), "lr_iter": step_lr,
                        "epoch": epoch}, step=step, console=False)
    elapsed = time.perf_counter() - t0
    tr.guard.check(f"at epoch {epoch}")
    return epoch_loss.mean(), step, seen / max(elapsed, 1e-9), step_lr


def write_checkpoint(directory: Path, tr: Trainer, *, epoch: int, step: int, best_ap: float, metrics: dict,
                     cfg: DinoPoseJobConfig) -> Path:
    """Full training state (`epoch` = completed epochs) + the inference weights and config (MODEL_FILE)."""
    save_training_state(directory, model=tr.model, optimizer=tr.optimizer, scheduler=tr.scheduler, scaler=tr.scaler,
                        epoch=epoch, extra={"best_ap": best_ap, "global_step": step})
    torch.save({"model_state_dict": unwrap(tr.model).state_dict(), "config": cfg.model_dump(mode="json"),
                "epoch": epoch, "metrics": metrics}, directory / MODEL_FILE)
    return directory


def write_guide_files(checkpoint: Path, run_uri: str, *, best: bool) -> None:
    """The guide's files, kept current DURING training (a run that fails later still leaves them): LATEST_FILE
    (full training state; run.resume_from takes it) with every checkpoint, BEST_FILE (MODEL_FILE's inference
    weights) when val/AP improved. Each write is atomic, local or s3://."""
    write_bytes(join_uri(run_uri, LATEST_FILE), (checkpoint / STATE_FILE).read_bytes())
    if best:
        write_bytes(join_uri(run_uri, BEST_FILE), (checkpoint / MODEL_FILE).read_bytes())


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


def _loaders(cfg: DinoPoseJobConfig, ctx: WorkerContext, train_ds, val_ds):
    sampler = DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.train.seed)
    pin, d = ctx.device.type == "cuda", cfg.data
    train_loader = DataLoader(train_ds, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=d.num_workers,
                              pin_memory=pin)  # the sampler pads ranks to equal length: same step counts
    val_indices = list(range(ctx.rank, len(val_ds), ctx.world_size))  # a partition: no duplicated instance
    val_loader = DataLoader(torch.utils.data.Subset(val_ds, val_indices),
                            batch_size=cfg.train.val_batch_size or cfg.train.batch_size, shuffle=False,
                            num_workers=d.num_workers, pin_memory=pin)
    return sampler, train_loader, val_loader


def run_dino_pose_training(cfg: DinoPoseJobConfig, ctx: WorkerContext, run_uri: str) -> dict:
    """Train (or continue) to cfg.train.epochs; report after every epoch (a checkpoint with each validated one);
    logs, TensorBoard events and skeleton PNGs go to run_uri/logs. Returns the last report."""
    torch.manual_seed(cfg.train.seed)  # identical head init on every rank
    np.random.seed(cfg.train.seed)
    train_ds, val_ds = build_datasets(cfg)
    sampler, train_loader, val_loader = _loaders(cfg, ctx, train_ds, val_ds)
    steps_per_epoch = max(1, len(train_loader))
    tr, restored = build_parts(cfg, ctx, steps_per_epoch)
    files = RunFiles(run_uri)
    start, best_ap, step = 0, -1.0, 0
    if restored is not None:
        extra = restored["extra"]
        start = int(restored["epoch"])
        step = int(extra.get("global_step", start * steps_per_epoch))
        # best/AP (and so BEST_FILE) is this run's: a state from run.resume_from (another run) starts it afresh,
        # or its first epochs would never write BEST_FILE into this run's folder
        if not restored.get(FROM_FALLBACK):
            best_ap = float(extra.get("best_ap", -1.0))
        if ctx.rank == 0:
            console(f"[dino_pose] resumed at epoch {start} (global step {step})")
    # logs from the restored step's next one on; the same W&B run only when resuming this run's own checkpoint
    logger = ExperimentLogger(files.local / "logs", config=cfg.model_dump(mode="json"), wandb=cfg.wandb,
                              enabled=ctx.rank == 0, run_name=cfg.run.name, first_step=step + 1,
                              resume=restored is not None and not restored.get(FROM_FALLBACK),
                              saved_log_dir=files.uri_of("logs"))
    if ctx.rank == 0:
        log.info("DINO pose: %d train / %d val crops (skipped train %s, val %s), %d steps/epoch, malloc %s",
                 len(train_ds), len(val_ds), train_ds.skipped, val_ds.skipped, steps_per_epoch, malloc_in_use())
    metrics: dict = {}
    try:
        for epoch in range(start + 1, cfg.train.epochs + 1):
            sampler.set_epoch(epoch - 1)
            train_ds.set_epoch(epoch - 1)
            t0 = time.perf_counter()
            train_loss, step, ips, lr = train_one_epoch(tr, train_loader, cfg=cfg, ctx=ctx, logger=logger,
                                                        step=step, epoch=epoch)
            sync_buffers(tr.model)  # BatchNorm statistics averaged (SyncBuffersHook): one model validated, saved
            metrics = {"epoch": epoch, "train/loss": train_loss, "lr": lr,
                       "train/images_per_s": ips * ctx.world_size, "train/epoch_time_s": time.perf_counter() - t0}
            validated = should_validate(epoch, cfg.train.epochs, cfg.train.val_interval)
            improved = False
            if validated:  # val/* only here: never a placeholder in a report or a log
                val = validate(unwrap(tr.model), val_loader, val_ds, cfg=cfg, ctx=ctx, amp_dtype=tr.amp.dtype,
                               logger=logger, epoch=epoch, step=step, vis_dir=files.local / "logs" / "vis")
                improved = val["val/AP"] > best_ap
                best_ap = max(best_ap, val["val/AP"])
                metrics.update(val)
                metrics["best/AP"] = best_ap
            logger.log(metrics, step=step, console=False)
            if ctx.rank == 0:
                console("[dino_pose] " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            # A checkpoint only where val/AP was measured on it: Ray keeps and picks the best by that score.
            tmp = None
            if ctx.rank == 0 and validated:
                tmp = Path(tempfile.mkdtemp(prefix="dino_pose_ckpt_"))
                write_checkpoint(tmp, tr, epoch=epoch, step=step, best_ap=best_ap, metrics=metrics, cfg=cfg)
                files.sync()
            try:
                ctx.report(metrics, str(tmp) if tmp else None)
                if tmp is not None:  # after the report: the guide's files never hold a checkpoint Ray refused
                    write_guide_files(tmp, files.uri, best=improved)
            finally:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
    finally:
        logger.close()
        files.close(upload=ctx.rank == 0)  # the last upload; a remote run's staging folder is removed
    return metrics
