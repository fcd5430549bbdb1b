"""Experiment logging shared by every training job: console, TensorBoard (always), W&B (when configured).

One step for every sink: the global iteration (optimizer batches since the start of the run), monotonic, with
`epoch` logged as a value. W&B accepts only the current or a later step, so a second step axis (epochs) would
silently drop everything logged on it once the iterations ran ahead. W&B runs offline by default, so a run on a
machine without network never blocks or fails on it; sync later with `wandb sync <dir>`. Only rank 0 logs (the
caller passes `enabled=False` on other ranks).

A resumed run continues its records: TensorBoard drops what a failed attempt logged at or after the step the
resumed run starts from (`first_step`, SummaryWriter's purge_step), so an epoch interrupted mid-way is not shown
twice; W&B continues the run whose id `logs/wandb_run_id.txt` holds (written when the run starts).
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from recognizer_core.config import StrictModel
from recognizer_core.storage import join_uri, read_text, write_text

log = logging.getLogger("recognizer")
WANDB_ID_FILE = "wandb_run_id.txt"  # in the run's logs/: the W&B run a resumed training continues


def console(msg: str) -> None:
    """One line to stdout (sys.stdout directly: Ray Train patches print() to also log it, which prints twice)."""
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


class WandbConfig(StrictModel):
    enabled: bool = False
    project: str = "recognizer"
    entity: str | None = None
    run_name: str | None = None
    mode: Literal["offline", "online", "disabled"] = "offline"
    tags: list[str] = []


def _scalar(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class ExperimentLogger:
    """Writes scalar metrics to the console, TensorBoard event files and (optionally) W&B."""

    def __init__(self, log_dir: str | Path, config: dict | None = None, wandb: WandbConfig | None = None,
                 enabled: bool = True, run_name: str | None = None, *, first_step: int = 1, resume: bool = False,
                 saved_log_dir: str | None = None):
        """first_step: the first global step this run logs (a resumed run: its checkpoint's step + 1); TensorBoard
        discards anything logged at that step or later by an earlier attempt in the same folder, which this run
        logs again. resume: continue the W&B run saved in the run's logs/ (`saved_log_dir`, that folder in the
        run's storage where `log_dir` is a local staging copy, as on s3://; default `log_dir`)."""
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self._tb = None
        self._wandb = None
        self._t0 = time.time()
        self._step = 0
        if not enabled:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._tb = SummaryWriter(str(self.log_dir / "tensorboard"), purge_step=first_step)
        if wandb is not None and wandb.enabled and wandb.mode != "disabled":
            saved_id = self._saved_wandb_id(saved_log_dir or str(self.log_dir)) if resume else None
            self._wandb = self._start_wandb(wandb, config or {}, run_name, saved_id)

    def _saved_wandb_id(self, saved_log_dir: str) -> str | None:
        try:
            text = read_text(join_uri(saved_log_dir, WANDB_ID_FILE))
        except Exception as err:  # storage trouble must never stop a training run: a new W&B run instead
            log.warning("could not read the W&B run id in %s (%s); starting a new W&B run", saved_log_dir, err)
            return None
        return (text.strip() or None) if text else None

    def _start_wandb(self, cfg: WandbConfig, config: dict, run_name: str | None, run_id: str | None):
        try:
            import wandb
        except ImportError:
            log.warning("W&B is enabled in the config but the wandb package is not installed "
                        "(pip install 'recognizer[wandb]'); continuing with TensorBoard only")
            return None
        os.environ.setdefault("WANDB_SILENT", "true")
        # the saved id continues the run's W&B run; W&B takes no step below its last one, so steps a failed
        # attempt logged keep that attempt's values (an exact resume logs the same ones again)
        resume = {"id": run_id, "resume": "allow"} if run_id else {}
        try:
            run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.run_name or run_name,
                             mode=cfg.mode, tags=cfg.tags, config=config, dir=str(self.log_dir),
                             reinit="finish_previous", **resume)
        except Exception as err:  # network or auth trouble must never stop a training run
            log.warning("W&B init failed (%s); continuing with TensorBoard only", err)
            return None
        try:
            write_text(str(self.log_dir / WANDB_ID_FILE), run.id)
        except OSError as err:  # a later resume then starts a new W&B run; this one logs on
            log.warning("could not save the W&B run id in %s (%s)", self.log_dir, err)
        return run

    def _monotonic(self, step: int) -> int:
        if step < self._step:  # a caller bug; W&B would drop the values, so keep them at the current step
            log.warning("experiment log: step %d after step %d; logged at %d", step, self._step, self._step)
            return self._step
        self._step = step
        return step

    def log(self, metrics: dict[str, Any], step: int, console: bool = True) -> None:
        """Scalars of `metrics` (non-numbers and non-finite values left out) at global step `step`."""
        if not self.enabled:
            return
        step = self._monotonic(step)
        scalars = {k: v for k, v in ((k, _scalar(v)) for k, v in metrics.items()) if v is not None}
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if console:
            text = "  ".join(f"{k}={v:.4g}" for k, v in scalars.items())
            print(f"[{time.time() - self._t0:7.1f}s] step {step}: {text}", flush=True)

    def log_image(self, tag: str, png_path: str | Path, step: int) -> None:
        """Attach a PNG already written to disk (curves, confusion matrix, predicted skeletons)."""
        if not self.enabled:
            return
        step = self._monotonic(step)
        img = np.asarray(Image.open(png_path).convert("RGB"))
        self._tb.add_image(tag, img, step, dataformats="HWC")
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Image(str(png_path))}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
