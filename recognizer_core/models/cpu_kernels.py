"""Our compiled CPU training kernels (torch.ops.recognizer.*): build once per machine, load, or say why not.

Two sources, one extension: bn_act_kernels.cpp (fused BatchNorm (+ residual) (+ ReLU), used through bn_act.py) and
gcn_kernels.cpp (UnitGCN's joint aggregation + weight GEMM, chunked and parallel over chunks, used through
gcn_blocks.AggregateLinear). They are compiled with torch.utils.cpp_extension the first time a process on this machine
needs them (about 30 s; `make venv` and the cluster image build them ahead) and cached in torch's extension directory
(TORCH_EXTENSIONS_DIR). Where they cannot be built (no compiler), or with RECOGNIZER_CPU_KERNELS=0, `enabled()` is
False and the models run the same computation with eager PyTorch ops.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCES = tuple(Path(__file__).with_name(name) for name in ("bn_act_kernels.cpp", "gcn_kernels.cpp"))
# -fopenmp: at::parallel_for is inline OpenMP code (torch's CPU build), serial without it; at run time libgomp.so.1
# resolves to the one torch has loaded. -fno-trapping-math: lets GCC vectorise the ReLU masks (selects).
FLAGS = ["-O3", "-fopenmp", "-fno-trapping-math"]
ENV_SWITCH = "RECOGNIZER_CPU_KERNELS"  # "0": never use the kernels (A/B benches, debugging)
_state: dict[str, object] = {}
_lock = threading.Lock()


def load() -> bool:
    """Build (first time on this machine) and load the kernels; False, with the reason logged once, where not."""
    with _lock:
        if "ok" not in _state:
            try:
                _build_and_load()
                _state["ok"], _state["error"] = True, None
            except Exception as e:  # no compiler or ninja, a read-only cache: fall back, say so once
                _state["ok"], _state["error"] = False, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                log.warning("recognizer CPU kernels unavailable (%s): CPU training runs eager PyTorch ops (slower)",
                            _state["error"])
    return bool(_state["ok"])


def enabled() -> bool:
    """Whether the kernels serve this process now: not switched off (read at every call, for A/B) and loadable.
    Never while torch.compile traces the model: the kernels are opaque to it (no fake-tensor rules), and inductor
    generates its own fused loops from the eager ops (train.compile)."""
    if torch.compiler.is_compiling():
        return False
    return os.environ.get(ENV_SWITCH, "1") != "0" and load()


def load_error() -> str | None:
    return _state.get("error")  # type: ignore[return-value]


def build_root() -> Path:
    """Where the kernels are built and cached: TORCH_EXTENSIONS_DIR, else torch's extension root
    (~/.cache/torch_extensions). A process given TORCH_EXTENSIONS_DIR=build_root() finds the same build."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def _digest() -> str:
    """A hash of the sources, the flags, and torch's and Python's versions: names the build and the source copies."""
    text = b"\0".join(s.read_bytes() for s in SOURCES)
    versions = f"torch {torch.__version__} cuda {torch.version.cuda} python {sys.version_info[:3]}"
    return hashlib.sha256(text + " ".join(FLAGS + [versions]).encode()).hexdigest()[:12]


def build_dir(digest: str | None = None) -> Path:
    """This code's build directory, under build_root() (`digest`: _digest(), when the caller has it). Passed to torch
    explicitly: torch's own choice (a py/cuda subfolder only when TORCH_EXTENSIONS_DIR is unset) would send a process
    given TORCH_EXTENSIONS_DIR=build_root() (the two-node and job-submit tests, whose nodes have their own HOME) to
    another directory, to compile again."""
    return build_root() / f"recognizer_cpu_kernels_{digest or _digest()}"


def _build_and_load() -> None:
    from torch.utils.cpp_extension import load as build_extension

    # Built from copies at paths fixed by the sources' content: torch rebuilds whenever a source path changes, and a
    # Ray job's working_dir lands at a new path per job.
    digest = _digest()
    out = build_dir(digest)
    copies = []
    for src in SOURCES:
        copy = build_root() / "recognizer_sources" / f"{src.stem}_{digest}.cpp"
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            tmp = copy.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(src.read_bytes())
            os.replace(tmp, copy)
        copies.append(str(copy))
    out.mkdir(parents=True, exist_ok=True)
    with _pinned_ninja():
        build_extension(name=out.name, sources=copies, extra_cflags=FLAGS, extra_ldflags=["-fopenmp"],
                        build_directory=str(out), is_python_module=False, verbose=False)


@contextlib.contextmanager
def _pinned_ninja():
    """torch runs the `ninja` its PATH finds first. Debian's ninja 1.11 and pip's 1.13 (both on this machine) hash
    build commands differently, so processes whose PATHs find different ones (a shell without the venv, Ray workers,
    the test clusters) each took the other's build for stale and rebuilt it (~30 s, several times per test run here).
    The pip package `ninja` (a dependency) goes first while building (`load` holds a lock)."""
    try:
        import ninja

        bin_dir = ninja.BIN_DIR
    except (ImportError, AttributeError):
        yield
        return
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = bin_dir + os.pathsep + path
    try:
        yield
    finally:
        os.environ["PATH"] = path
