"""Helpers for tests that run their own `ray start --head --block` (job submission, token auth, two nodes)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1 that no earlier call in this process returned. The kernel may give bind(0) a port it
    just gave the previous call (that socket is closed by then), and `ray start` refuses to run when two of its
    components get the same port (seen once: the client server and the metrics exporter)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def descendants(pid: int) -> list[int]:
    """Every process started (transitively) by `pid`: Ray's daemons leave the `ray start` process group."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def killpg(proc: subprocess.Popen, sig: int, timeout: float = 30) -> None:
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass


def _started(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): tells a reused pid from the process we saw."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def stop_head(proc: subprocess.Popen, extra_pids: list[int] = (), grace_s: float = 0) -> None:
    """Stop one `ray start --block` node and everything it started (never `ray stop`, which stops every Ray on
    the machine). SIGTERM makes `ray start --block` stop its node, but a head then drains for up to 30 s with
    nothing left to drain, so any grace period was always spent in full (5 s per head). A test head holds
    nothing worth a graceful stop (its temp dir is deleted next): by default every process it started is
    killed at once; grace_s > 0 gives SIGTERM that long first."""
    leftovers = [(pid, _started(pid)) for pid in [*extra_pids, *descendants(proc.pid)]]
    if grace_s > 0:
        killpg(proc, signal.SIGTERM, timeout=grace_s)
    killpg(proc, signal.SIGKILL)
    for pid, started in leftovers:
        if started is not None and _started(pid) == started:  # still the process we saw, not a reused pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
