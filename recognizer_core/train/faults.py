"""Fault-injection test hook of the training loops: a worker that dies, or a driver that is killed, mid-run."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from recognizer_core.train.experiment_log import console

FAULT_ENV = "RECOGNIZER_FAULT_INJECT"


def maybe_inject_fault(epoch: int, rank: int, run_dir: str | Path, last_ckpt_epoch: int) -> None:
    """Env RECOGNIZER_FAULT_INJECT="epoch=E,rank=R,marker=PATH[,kill_pid=PID|,hold_s=S]": after epoch E, rank R
    exits (a lost worker), SIGKILLs process PID (the job driver: a stopped run), or holds the run for S seconds
    (so that a test can kill a node at a known point, not in a race with the epochs left), once (marker file).

    It first waits until Ray Train has registered the latest checkpoint (its snapshot file names it): the
    controller collects reports every couple of seconds, and a test epoch is shorter than that."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    kv = dict(item.split("=", 1) for item in spec.split(","))
    marker = Path(kv["marker"])
    if int(kv["epoch"]) != epoch or int(kv.get("rank", 0)) != rank or marker.exists():
        return
    snapshot, name = Path(run_dir) / "checkpoint_manager_snapshot.json", f"checkpoint_epoch_{last_ckpt_epoch:04d}"
    deadline = time.time() + 120
    while last_ckpt_epoch and time.time() < deadline and not (snapshot.exists() and name in snapshot.read_text()):
        time.sleep(0.2)
    if "hold_s" in kv:
        marker.write_text(f"worker rank {rank} holds the run {kv['hold_s']} s after epoch {epoch}\n")
        console(f"[fault injection] rank {rank} holds the run for {kv['hold_s']} s after epoch {epoch}")
        time.sleep(float(kv["hold_s"]))
        return
    if "kill_pid" in kv:
        marker.write_text(f"rank {rank} killed the driver (pid {kv['kill_pid']}) after epoch {epoch}\n")
        console(f"[fault injection] rank {rank} kills the driver pid {kv['kill_pid']} after epoch {epoch}")
        os.kill(int(kv["kill_pid"]), signal.SIGKILL)
        return
    marker.write_text(f"worker rank {rank} killed itself after epoch {epoch}\n")
    console(f"[fault injection] rank {rank} exits after epoch {epoch}")
    os._exit(1)
