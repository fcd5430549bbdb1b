"""Import ONNX Runtime only when exactly one build of it is installed.

`onnxruntime` (CPU) and `onnxruntime-gpu` install the same `onnxruntime` package; with both present whichever was
installed last wins file by file, and the CUDA provider can vanish without an error. pyproject's `cpu` and `gpu`
extras each install one; this check catches an environment that got both anyway (e.g. `pip install .[cpu,gpu]`,
or a base image that shipped one).
"""
from __future__ import annotations

from importlib import metadata
from types import ModuleType

# Every distribution that provides the `onnxruntime` import name.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                     "onnxruntime-training")


class OnnxRuntimeConflict(ImportError):
    """More than one ONNX Runtime build is installed."""


def installed_builds() -> list[str]:
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def check_single_build() -> None:
    builds = installed_builds()
    if len(builds) > 1:
        keep = "onnxruntime-gpu" if any(b.startswith("onnxruntime-gpu==") for b in builds) else builds[0].split("=")[0]
        names = " ".join(b.split("==")[0] for b in builds)
        raise OnnxRuntimeConflict(
            f"{len(builds)} ONNX Runtime builds are installed ({', '.join(builds)}); they overwrite each other and "
            f"the CUDA provider can vanish. Keep one: `pip uninstall -y {names} && pip install {keep}` "
            "(or reinstall this project with only one of the extras `.[cpu]` / `.[gpu]`).")


def import_onnxruntime() -> ModuleType:
    """`import onnxruntime`, after checking that exactly one build provides it."""
    check_single_build()
    import onnxruntime

    return onnxruntime
