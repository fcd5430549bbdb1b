"""What a training loop sees of its runner: the `WorkerContext` protocol and `LocalContext` (one process, no Ray).

Both products' loops (STGCN++ and DINO pose) take a WorkerContext: rank, world size, device, how to place and
wrap the model (DDP), how to report an epoch (metrics and an optional checkpoint folder) and where the latest
checkpoint is. Ray Train's implementation is `ray_run.RayTrainContext`; this module does not import Ray, so the
loops also run where Ray is not installed (the GPU check machine).
"""
from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import ContextManager, Protocol

import torch


class WorkerContext(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move to the device (and wrap in DDP when world_size > 1)."""

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """One report per epoch; every rank calls it, rank 0 passes the checkpoint folder."""

    def checkpoint_dir(self) -> ContextManager[str | None]:
        """The latest checkpoint as a local folder (or None) for the duration of the `with`."""


class LocalContext:
    """One process, no Ray: unit tests, debugging, GPU checks. Checkpoints go to `ckpt_root/epoch_NNNN`."""

    def __init__(self, ckpt_root: str | Path, device: str | torch.device = "cpu"):
        self.rank, self.world_size, self.device = 0, 1, torch.device(device)
        self.root = Path(ckpt_root)
        self.reports: list[dict] = []

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, self.root / f"epoch_{int(metrics['epoch']):04d}", dirs_exist_ok=True)

    def checkpoint_dir(self) -> ContextManager[str | None]:
        dirs = sorted(self.root.glob("epoch_*")) if self.root.exists() else []
        return nullcontext(str(dirs[-1]) if dirs else None)
