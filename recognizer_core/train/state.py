"""Exact-resume training state: model, optimizer, scheduler, grad scaler, epoch and every RNG.

Saved as one `training_state.pt` inside a checkpoint directory (a Ray Train Checkpoint is a directory), loaded
with `weights_only=True`: the RNG states are tensors and plain Python containers, so nothing needs pickle.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from recognizer_core.storage import atomic_write
from recognizer_core.train.context import WorkerContext

STATE_FILE = "training_state.pt"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DDP wraps the model; checkpoints hold the plain module's keys so they load anywhere.
    return model.module if hasattr(model, "module") else model


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] if random.getstate()[2] is not None else -1],
        "python_version": random.getstate()[0],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    gauss = None if py[-1] == -1 else py[-1]
    random.setstate((state["python_version"], tuple(int(x) for x in py[:-1]), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU the saving process saw (Ray Train shows each worker all of its node's GPUs); a resume
        # that sees fewer (another node shape) restores those it has instead of failing with an IndexError
        saved = state["cuda"]
        for i in range(min(len(saved), torch.cuda.device_count())):
            torch.cuda.set_rng_state(saved[i], i)


def save_training_state(directory: str | Path, *, model: torch.nn.Module, optimizer=None, scheduler=None,
                        scaler=None, epoch: int, extra: dict[str, Any] | None = None) -> Path:
    """Write the full training state to `directory/training_state.pt` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "rng": rng_state(),
        "extra": extra or {},
    }
    path = directory / STATE_FILE
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
    return path


def load_training_state(directory: str | Path, *, model: torch.nn.Module, optimizer=None, scheduler=None,
                        scaler=None, restore_rng: bool = True) -> dict[str, Any]:
    """Restore what `save_training_state` wrote (a checkpoint folder, or the state file itself); returns the
    dict (epoch, extra, ...)."""
    path = Path(directory)
    path = path / STATE_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training state here (a checkpoint folder or its {STATE_FILE})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        # a disabled scaler saved {} (amp=auto chose bf16 on the GPU that saved, fp16 here): start a fresh scale
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return state


FROM_FALLBACK = "from_fallback"   # in place_and_resume's state: restored from `fallback`, not the run's own checkpoint


def place_and_resume(ctx: WorkerContext, model: torch.nn.Module, *, optimizer=None, scheduler=None, scaler=None,
                     fallback: str | Path | None = None,
                     check: Callable[[Path], None] | None = None) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """Put the model on its device (ctx.prepare_model: move + DDP), THEN restore the latest checkpoint (or
    `fallback` when the run has none) into model, optimizer, scheduler and scaler.

    The order matters: `Optimizer.load_state_dict` moves each state tensor to its parameter's device as it is
    then, so restoring before the move leaves Adam's moments on the CPU and the first step on a GPU fails.
    `check(dir)` may refuse a checkpoint (a different model) before anything is loaded. Returns the placed model
    and the restored state dict (epoch, extra, ...) or None for a fresh start."""
    model = ctx.prepare_model(model)
    with ctx.checkpoint_dir() as ckpt:
        source = ckpt or (str(fallback) if fallback else None)
        if not source:
            return model, None
        if check is not None:
            check(Path(source))
        state = load_training_state(source, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    return model, {**state, FROM_FALLBACK: not ckpt}
