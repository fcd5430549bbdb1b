"""Shared bits of the benchmarks: the mmaction2 side-venv worker client, machine description, medians."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MMACTION_PY = Path(os.environ.get("BENCH_MMACTION_PY", REPO / ".bench_venv_mmaction2" / "bin" / "python"))
WORKER = Path(__file__).with_name("mmaction_worker.py")


def machine() -> str:
    """Cores, CPU model and the vector units that change our figures (AVX-512, native bf16, AMX), GPU.
    VMs of one name can land on different hosts: the model says which one a result line came from."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    model, flags = platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == platform.machine():
                model = " ".join(value.split())
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    units = [u for u, f in (("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_bf16")) if f in flags]
    return f"{os.cpu_count()}-core {model}{' (' + ', '.join(units) + ')' if units else ''}, {gpu}"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def ratio_stats(ref: list[float], ours: list[float]) -> dict:
    """Paired ratios ref/ours of alternated repeats (higher = ours faster): median, min, max."""
    r = [a / b for a, b in zip(ref, ours)]
    return {"median": round(statistics.median(r), 3), "min": round(min(r), 3), "max": round(max(r), 3)}


# glibc malloc settings that keep freed memory in the process heap instead of returning it to the kernel: large
# tensors then reuse last step's pages instead of faulting in fresh zeroed ones. Page faults cost ~3 us each on
# the development VM (a Firecracker guest; measured as sys time per fault), so with glibc's defaults they
# take a large share of a CPU training step there, more for the side that allocates more. `--keep-freed-memory`
# in bench_train_step.py applies these to both sides, for a ratio of the code alone.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": 1 << 30, "MALLOC_TRIM_THRESHOLD_": 2**31 - 1,
                     "MALLOC_TOP_PAD_": 64 << 20}


def keep_freed_memory() -> None:
    """KEEP_FREED_MEMORY for this (already started) process, through mallopt; child processes get the same
    from the environment variables, which glibc reads at start-up."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    codes = {"MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2}  # malloc.h M_*
    for name, value in KEEP_FREED_MEMORY.items():
        if libc.mallopt(codes[name], value) != 1:
            raise RuntimeError(f"mallopt refused {name}={value}")
        os.environ[name] = str(value)


ALLOCATORS = ("glibc", "glibc-keep-freed", "tcmalloc")


def use_allocator(name: str) -> str:
    """Run this process, and the processes it starts afterwards (the mmaction2 side), under allocator `name` (one of
    ALLOCATORS); returns what to record in the JSON line. A process picks its malloc when it starts, so for
    tcmalloc this re-executes the running script with LD_PRELOAD (the worker inherits it), as
    scaling.cpu_malloc does for Ray's training workers."""
    from recognizer_core.train.cpu_malloc import HUGE_PAGES_ENV, find_tcmalloc, malloc_in_use

    if name == "glibc":
        return "glibc defaults"
    if name == "glibc-keep-freed":
        keep_freed_memory()
        return "glibc, both sides keeping freed memory: " + ", ".join(f"{k}={v}" for k, v in KEEP_FREED_MEMORY.items())
    if name != "tcmalloc":
        raise ValueError(f"allocator must be one of {ALLOCATORS}, got {name!r}")
    if "tcmalloc" not in malloc_in_use():
        path = find_tcmalloc()
        if path is None:
            raise SystemExit("--allocator tcmalloc: no tcmalloc library found (apt-get install libtcmalloc-minimal4)")
        os.environ["LD_PRELOAD"] = path
        os.environ.setdefault(HUGE_PAGES_ENV, "1")  # what the workers get with tcmalloc (cpu_malloc.worker_env)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    return f"tcmalloc on both sides ({malloc_in_use()}, {HUGE_PAGES_ENV}={os.environ.get(HUGE_PAGES_ENV, 'unset')})"


def runs_tcmalloc(pid: int) -> bool:
    """Whether process `pid` has a tcmalloc library mapped (the mmaction2 worker under --allocator tcmalloc)."""
    return "tcmalloc" in Path(f"/proc/{pid}/maps").read_text()


def minor_faults(pid: int | None = None) -> int:
    """Minor page faults so far of a process (this one by default), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid or os.getpid()}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[7])  # field 10, counted after the parenthesised command name


class MMWorker:
    """The mmaction2 process (bench/mmaction_worker.py under the side venv), one JSON command at a time."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen([str(MMACTION_PY), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        self.info = self._read()

    @staticmethod
    def available() -> tuple[bool, str]:
        if not MMACTION_PY.exists():
            return False, f"{MMACTION_PY} missing: run bash bench/setup_mmaction2_venv.sh"
        return True, ""

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@RESULT "):
                result = json.loads(line[len("@@RESULT "):])
                if "error" in result:
                    raise RuntimeError(f"mmaction2 worker: {result['error']}")
                return result
        raise RuntimeError(f"mmaction2 worker exited (code {self.proc.wait()})")

    def call(self, cmd: str, **kwargs) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()

    def __enter__(self) -> "MMWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def git_commit() -> str | None:
    """The short git commit of this tree: the code a result line timed (BENCH_TREE where the tree travelled
    without its .git, as to the GPU machine)."""
    if os.environ.get("BENCH_TREE"):
        return os.environ["BENCH_TREE"]
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1]).stdout.strip() or None


def save_result(result: dict, out: str | None) -> None:
    """Print the one JSON line; also append it to `out` (a .jsonl under bench/results/) when given. Records the git
    commit of the code that was timed (`tree`) unless the bench already did (`tree` / `commit`)."""
    if "tree" not in result and "commit" not in result:
        result["tree"] = git_commit()
    line = json.dumps(result, sort_keys=False)
    print(line, flush=True)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(line + "\n")
