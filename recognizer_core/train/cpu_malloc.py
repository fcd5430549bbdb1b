"""The memory allocator of the training workers (`scaling.cpu_malloc`): tcmalloc or the system's glibc malloc.

PyTorch's CPU allocator does not cache: every tensor is malloc'd and freed each step. glibc mmaps each block
over 32 MB afresh and returns it to the kernel on free, so the next step's activations are new pages the
kernel zero-fills on first touch. tcmalloc keeps freed pages for reuse. Measured on the development VM (a
Firecracker guest, ~3 us per page fault), fight preset, 1 thread, our step:

| batch | glibc: s/step, faults/step, peak RSS | tcmalloc: s/step, faults/step, peak RSS |
|---|---|---|
| 16 | 1.99-2.07, 45-90 k, 2.34 GB | 1.87-1.89, 1.1 k, 1.59 GB |
| 64 | 14.9, 2.8 M, 5.10 GB | 7.8, 6.2 k, 5.23 GB |

(glibc told to keep freed memory instead, `MALLOC_MMAP_THRESHOLD_` and friends, reached 7.4 s at batch 64 but
with an 8.7 GB peak: its heap holds the holes.) This is what PyTorch's own launcher for CPUs does
(`python -m torch.backends.xeon.run_cpu` preloads tcmalloc or jemalloc where it finds one). Debian's jemalloc,
with its defaults and with the MALLOC_CONF of Intel's tuning guide, faulted as much as glibc here (2.9 s at batch
16, 14.9 s at batch 64).

A process picks its allocator when it starts, so the library goes into the workers' `LD_PRELOAD` through the
run's `worker_runtime_env`. `auto` does so for CPU workers of a private local Ray (one machine: the library
found here is the one they load); on a cluster say `tcmalloc`, with the library on every node (the image in
cluster/docker installs it). Each worker reports what it runs under (`malloc_in_use`) in its start-up line.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from recognizer_core.config import ConfigError
from recognizer_core.ray_runtime import PRIVATE_RAY_ENV

# gperftools' tcmalloc: Debian/Ubuntu `libtcmalloc-minimal4` (no heap profiler, what a trainer needs), the full
# `libgoogle-perftools4`, and the unversioned names conda and -dev packages add.
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so")
# With tcmalloc, PyTorch's CPU allocator is also told to ask for transparent huge pages (2 MB pages, madvise) for
# blocks of 2 MB and more. tcmalloc keeps those pages, so the step's activations stay on huge pages: fewer TLB misses
# in the memory-bound BatchNorm / ReLU passes. Measured on the AMD host (fight preset, alternated processes): 1.7-3.5%
# at batch 16 / 1 thread (4 pairs), 3.5-3.9% at 2 threads (2 pairs), 2.9% at batch 64 (1 pair), the same peak RSS.
# Not under glibc, which maps each block afresh and would zero-fill 2 MB per fault. A value the user set is kept.
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"
INSTALL_HINT = ("install it (Debian/Ubuntu: apt-get install libtcmalloc-minimal4; conda: conda install "
                "gperftools) or set scaling.tcmalloc_path")


def search_dirs() -> list[Path]:
    dirs = [os.environ.get("CONDA_PREFIX"), sys.prefix, sys.base_prefix]
    dirs = [Path(d) / "lib" for d in dirs if d]
    machine = os.uname().machine
    dirs += [Path(p) for p in ("/usr/local/lib", "/usr/local/lib64", f"/usr/lib/{machine}-linux-gnu", "/usr/lib64",
                               "/usr/lib")]
    return dirs


def preloadable(path: str) -> bool:
    """Whether LD_PRELOAD can name this file: ld.so splits the list at spaces and ':', with no escape, so a path
    holding one (a conda env or venv under '/home/Jane Doe') is preloaded as two missing files and the process runs
    the system malloc, with only an 'ld.so: ... cannot be preloaded' line on stderr to say so."""
    return not any(c.isspace() or c == ":" for c in path)


def _installed_tcmallocs() -> list[str]:
    """Every tcmalloc library in search_dirs(), in search order (folder first, then TCMALLOC_NAMES)."""
    return [str(d / name) for d in search_dirs() for name in TCMALLOC_NAMES if (d / name).is_file()]


def find_tcmalloc() -> str | None:
    """The first tcmalloc library in search_dirs() that LD_PRELOAD can name (preloadable), as an absolute path;
    None where there is none."""
    return next((path for path in _installed_tcmallocs() if preloadable(path)), None)


def worker_env(cpu_malloc: str, tcmalloc_path: str | None, use_gpu: bool) -> dict[str, str]:
    """Environment variables for the training workers: LD_PRELOAD of tcmalloc with PyTorch's huge-page switch
    (HUGE_PAGES_ENV), or nothing (the system malloc).
    Raises ConfigError, before any worker starts, where tcmalloc was asked for and cannot be found or preloaded."""
    if cpu_malloc == "system" or (cpu_malloc == "auto" and (use_gpu or not os.environ.get(PRIVATE_RAY_ENV))):
        return {}
    if tcmalloc_path is not None:
        if not Path(tcmalloc_path).is_file():
            raise ConfigError(f"scaling.tcmalloc_path={tcmalloc_path!r}: no such file")
        if not preloadable(tcmalloc_path):
            raise ConfigError(f"scaling.tcmalloc_path={tcmalloc_path!r}: LD_PRELOAD splits paths at spaces and ':' "
                              f"(the workers would run the system malloc); name a symlink to it at a path without "
                              f"either")
        path = tcmalloc_path
    else:
        path = find_tcmalloc()
    if path is None:
        if cpu_malloc == "tcmalloc":
            unusable = [p for p in _installed_tcmallocs() if not preloadable(p)]
            found = (f" ({unusable[0]!r} is there, but LD_PRELOAD splits paths at spaces and ':': set "
                     f"scaling.tcmalloc_path to a symlink to it at a path without either)" if unusable else "")
            raise ConfigError(f"scaling.cpu_malloc=tcmalloc but no {' / '.join(TCMALLOC_NAMES[:2])} in "
                              f"{', '.join(map(str, search_dirs()))}{found}: {INSTALL_HINT}")
        return {}
    preload = os.environ.get("LD_PRELOAD", "")
    return {"LD_PRELOAD": preload if path in re.split(r"[ :]", preload) else " ".join(filter(None, [path, preload])),
            HUGE_PAGES_ENV: os.environ.get(HUGE_PAGES_ENV, "1")}


def require_tcmalloc(cpu_malloc: str, tcmalloc_path: str | None) -> None:
    """On the driver, before Ray starts: a ConfigError now where scaling.cpu_malloc=tcmalloc cannot be met here."""
    if cpu_malloc == "tcmalloc":
        worker_env(cpu_malloc, tcmalloc_path, use_gpu=False)


def malloc_in_use() -> str:
    """The file name of the library whose `malloc` this process calls (e.g. 'libtcmalloc_minimal.so.4', or
    'libc.so.6' for glibc's): the symbol the dynamic linker resolved, found with dladdr."""
    import ctypes

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    try:
        process = ctypes.CDLL(None)
        addr = ctypes.cast(process.malloc, ctypes.c_void_p)
        info = DlInfo()
        if not process.dladdr(addr, ctypes.byref(info)) or not info.dli_fname:
            return "unknown"
    except (OSError, AttributeError):  # not glibc's dynamic linker
        return "unknown"
    return Path(info.dli_fname.decode()).name
