"""STGCN++ model (mmaction2 1.2.0 compatible): graph, backbone, head, recognizer, checkpoint I/O.

Names are imported lazily so `import recognizer_core.models` stays cheap; import submodules directly
(`from recognizer_core.models.recognizer import ModelConfig, build_recognizer`) in library code.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Graph": "graph",
    "STGCN": "stgcn",
    "GCNHead": "gcn_head",
    "ModelConfig": "recognizer",
    "RecognizerGCN": "recognizer",
    "build_recognizer": "recognizer",
    "CheckpointError": "checkpoint",
    "load_state_dict_file": "checkpoint",
    "convert_pyskl_state_dict": "checkpoint",
    "infer_model_config": "checkpoint",
    "load_mmaction_checkpoint": "checkpoint",
    "export_mmaction_checkpoint": "checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
