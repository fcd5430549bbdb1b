"""What a training worker needs besides the loop itself: the context protocol (Ray Train or one local
process), small collectives, the fault-injection test hook, early stopping and the resume check."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist

from recognizer_core.config import read_yaml
from recognizer_core.train.config import TrainJobConfig
from recognizer_core.train.evaluate import console

FAULT_ENV = "RECOGNIZER_FAULT_INJECT"  # test hook, see maybe_inject_fault


class WorkerContext(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def report(self, metrics: dict, checkpoint_dir: str | None) -> None: ...
    def checkpoint_dir(self): ...  # context manager yielding the latest checkpoint's local dir or None


class LocalContext:
    """One process, no Ray: for debugging and unit tests. Checkpoints go to `ckpt_root/epoch_N`."""

    def __init__(self, ckpt_root: str | Path, device: str = "cpu"):
        self.rank, self.world_size, self.device = 0, 1, torch.device(device)
        self.root = Path(ckpt_root)
        self.reports: list[dict] = []

    def prepare_model(self, model):
        return model.to(self.device)

    def report(self, metrics, checkpoint_dir=None):
        self.reports.append(dict(metrics))
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, self.root / f"epoch_{metrics['epoch']:04d}", dirs_exist_ok=True)

    def checkpoint_dir(self):
        dirs = sorted(self.root.glob("epoch_*")) if self.root.exists() else []
        return nullcontext(str(dirs[-1]) if dirs else None)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(values: list[float], op=None) -> list[float]:
    if not distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.cpu().tolist()


def maybe_inject_fault(epoch: int, rank: int, run_dir: Path, last_ckpt_epoch: int) -> None:
    """Test hook (env RECOGNIZER_FAULT_INJECT="epoch=E,rank=R,marker=PATH[,kill_pid=PID]"): after epoch E, rank R
    exits (a lost worker) or SIGKILLs process PID (the job driver: a stopped run), once (marker file).

    It first waits until Ray Train has registered the latest checkpoint (its snapshot file names it): the
    controller collects reports every couple of seconds, and a test epoch is shorter than that."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    kv = dict(item.split("=", 1) for item in spec.split(","))
    marker = Path(kv["marker"])
    if int(kv["epoch"]) != epoch or int(kv.get("rank", 0)) != rank or marker.exists():
        return
    snapshot, name = run_dir / "checkpoint_manager_snapshot.json", f"checkpoint_epoch_{last_ckpt_epoch:04d}"
    deadline = time.time() + 120
    while last_ckpt_epoch and time.time() < deadline and not (snapshot.exists() and name in snapshot.read_text()):
        time.sleep(0.2)
    if "kill_pid" in kv:
        marker.write_text(f"rank {rank} killed the driver (pid {kv['kill_pid']}) after epoch {epoch}\n")
        console(f"[fault injection] rank {rank} kills the driver pid {kv['kill_pid']} after epoch {epoch}")
        os.kill(int(kv["kill_pid"]), signal.SIGKILL)
        return
    marker.write_text(f"worker rank {rank} killed itself after epoch {epoch}\n")
    console(f"[fault injection] rank {rank} exits after epoch {epoch}")
    os._exit(1)


class EarlyStopper:
    """mmengine EarlyStoppingHook (rule 'greater'): stop after `patience` validations without an improvement
    larger than `min_delta`."""

    def __init__(self, patience: int, min_delta: float, state: dict | None = None):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.wait = (state or {}).get("best", -math.inf), (state or {}).get("wait", 0)

    def update(self, value: float) -> bool:
        if value - self.best > self.min_delta:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        return self.wait >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "wait": self.wait}


def check_resumable(cfg: TrainJobConfig, ckpt: Path) -> None:
    """A run continues only with the network and inputs it was trained with; anything else is a new run."""
    saved_path = ckpt / "config.yaml"
    if not saved_path.is_file():
        return
    saved = read_yaml(saved_path)
    now = json.loads(cfg.model_dump_json())
    diffs = [f"{sec}.{k}: checkpoint {saved.get(sec, {}).get(k)!r}, config {v!r}"
             for sec in ("model", "pipeline") for k, v in now[sec].items()
             if saved.get(sec, {}).get(k) != v and not (sec == "pipeline" and k == "test_num_clips")
             and not (sec == "model" and k in ("dropout", "with_cp"))]
    if diffs:
        raise ValueError(f"cannot resume run {cfg.run.name!r} from {ckpt}: the model or pipeline changed ("
                         + "; ".join(diffs) + "). Use a new run.name for a different model")
