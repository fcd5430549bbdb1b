"""Our compiled CPU training kernels (torch.ops.recognizer.*): build once per machine, load, or say why not.

Two sources, one extension: bn_act_kernels.cpp (fused BatchNorm (+ residual) (+ ReLU), used through bn_act.py) and
gcn_kernels.cpp (UnitGCN's joint aggregation + weight GEMM, chunked and parallel over chunks, used through
gcn_blocks.AggregateLinear). They are compiled with torch.utils.cpp_extension the first time a process on this machine
needs them (about 30 s; `make venv` and the cluster image build them ahead) and cached in torch's extension directory
(TORCH_EXTENSIONS_DIR). A build already there for this code is loaded as it is, also from a folder this user cannot
write (a shared TORCH_EXTENSIONS_DIR, an image's cache made by another uid). Where they cannot be built (no compiler),
or with RECOGNIZER_CPU_KERNELS=0, `enabled()` is False and the models run the same computation with eager PyTorch ops.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import sys
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCES = tuple(Path(__file__).with_name(name) for name in ("bn_act_kernels.cpp", "gcn_kernels.cpp"))
# -fopenmp: at::parallel_for is inline OpenMP code (torch's CPU build), serial without it; at run time libgomp.so.1
# resolves to the one torch has loaded. -fno-trapping-math: lets GCC vectorise the ReLU masks (selects).
# Tuples, passed to torch as fresh lists: its load() appends torch's own -L/-l flags to the extra_ldflags list it is
# given, which changed _digest() (and so build_dir()) in the process that had just built.
FLAGS = ("-O3", "-fopenmp", "-fno-trapping-math")
LDFLAGS = ("-fopenmp",)
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
                _state["ok"], _state["error"] = False, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:500]}"
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
    """A hash of what goes into the binary: the sources (they include only torch's and the standard headers), the
    compile and link flags, torch's and Python's versions (headers, ABI) and the machine's architecture (a
    TORCH_EXTENSIONS_DIR shared over NFS). Names the build and the source copies; a library in build_dir() is loaded
    without asking torch's build (_build_and_load), so whatever changes the binary belongs here."""
    text = b"\0".join(s.read_bytes() for s in SOURCES)
    versions = f"torch {torch.__version__} cuda {torch.version.cuda} python {sys.version_info[:3]} {platform.machine()}"
    return hashlib.sha256(text + " ".join(FLAGS + LDFLAGS + (versions,)).encode()).hexdigest()[:12]


def build_dir(digest: str | None = None) -> Path:
    """This code's build directory, under build_root() (`digest`: _digest(), when the caller has it). Passed to torch
    explicitly: torch's own choice (a py/cuda subfolder only when TORCH_EXTENSIONS_DIR is unset) would send a process
    given TORCH_EXTENSIONS_DIR=build_root() (the two-node and job-submit tests, whose nodes have their own HOME) to
    another directory, to compile again."""
    return build_root() / f"recognizer_cpu_kernels_{digest or _digest()}"


def _build_and_load() -> None:
    digest = _digest()
    out = build_dir(digest)
    # The library built for this digest loads as it is. torch's load() would first take a lock file in `out` and run
    # ninja, which fails where `out` is read-only (a shared TORCH_EXTENSIONS_DIR, an image's prebuilt cache run under
    # another uid), and the run fell back to the slower eager ops although the kernels were there.
    # Not while torch's lock file is there: another process is building, and the library may be half written.
    library = out / f"{out.name}.so"  # the name torch's build links it to
    load_failure = None
    if library.is_file() and not (out / "lock").exists():
        try:
            torch.ops.load_library(str(library))
            return
        except OSError as e:  # torch's build gets its say (it rebuilds what is out of date), as before
            reason = str(e.__cause__ or e)  # torch's "Could not load this library" wraps the dynamic linker's reason
            load_failure = f"{library} did not load ({reason.replace(f'{library}: ', '').strip()[:200]})"
            log.info("%s; building it", load_failure)
    try:
        _build(digest, out)
    except Exception as e:
        if load_failure:  # both causes, not only the build's (a read-only folder's PermissionError, say)
            raise RuntimeError(f"{load_failure} and could not be rebuilt ({type(e).__name__}: {e})") from e
        raise


def _build(digest: str, out: Path) -> None:
    """Compiles the kernels into `out` with torch's cpp_extension (ninja) and loads them."""
    from torch.utils.cpp_extension import load as build_extension

    # Built from copies at paths fixed by the sources' content: torch rebuilds whenever a source path changes, and a
    # Ray job's working_dir lands at a new path per job.
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
        build_extension(name=out.name, sources=copies, extra_cflags=list(FLAGS), extra_ldflags=list(LDFLAGS),
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
