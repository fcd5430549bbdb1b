"""Checkpoint I/O for the STGCN++ recognizer: mmaction2 / mmengine format in and out, PYSKL conversion.

Loading is safe by default: tensors and plain containers as torch's weights-only loader reads them, anything
else (mmengine's message hub) as inert stand-ins; no code from the file runs.
Every error names the file and lists what does not match.
"""
from __future__ import annotations

import os
import pickle
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .graph import LAYOUTS

PYSKL_RENAMES = (("cls_head.fc_cls.", "cls_head.fc."),)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


class _Inert:
    """Stands in for an object a checkpoint pickles beyond tensors and containers (mmengine's message hub keeps
    its logs as HistoryBuffer objects holding numpy arrays): built from its arguments and state without running
    any code of the file's classes, never called. The weights and `meta` around it load as usual."""

    def __init__(self, *args, **kwargs) -> None:
        self.args = args

    def __setstate__(self, state) -> None:
        self.state = state


class _InertUnpickler(pickle._Unpickler):  # the Python implementation: its opcodes can be overridden
    """Unpickles what torch's weights-only loader allows, as that loader would, and any other global as _Inert.
    BUILD on a class is refused: it would set attributes on torch's own classes."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        from torch._weights_only_unpickler import _get_allowed_globals

        return _get_allowed_globals().get(f"{module}.{name}", _Inert)

    def load_build(self) -> None:
        if isinstance(self.stack[-2], type):
            raise pickle.UnpicklingError(f"state set on the class {self.stack[-2].__name__}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build


class _InertPickle:  # what torch.load takes as `pickle_module`
    Unpickler = _InertUnpickler
    # torch's legacy (non-zip) format reads its first pickles with pickle_module.load: plain pickle.load ran any
    # global of such a file (an exec in its "magic number" pickle), past the inert unpickler
    load = staticmethod(lambda f, **kw: _InertUnpickler(f, **kw).load())


def read_checkpoint(path: str | Path, *, trusted: bool = False) -> Any:
    """The object a checkpoint file holds, read safely: tensors and plain containers as torch's weights-only
    loader reads them; other pickled objects (an mmaction2 training run's message hub) as inert stand-ins, so a
    checkpoint straight from mmengine loads without running code from the file. `trusted=True`: plain pickle."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        if trusted or not re.search(r"Unsupported global: GLOBAL (\S+)", str(err)):
            raise CheckpointError(f"{path}: cannot read checkpoint: {type(err).__name__}: {err}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_InertPickle)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointError(f"{path}: cannot read checkpoint: {type(err).__name__}: {err}") from None


def load_state_dict_file(path: str | Path, *, trusted: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """Read a checkpoint (`read_checkpoint`) and return its flat state_dict (unwraps mmengine's `state_dict` / a
    `model` entry, strips DDP's `module.` prefix)."""
    return _flat_state_dict(read_checkpoint(path, trusted=trusted), str(path))


def _flat_state_dict(obj: Any, source: str) -> "OrderedDict[str, torch.Tensor]":
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: no state_dict found (got {type(obj).__name__})")
    sd = OrderedDict()
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{source}: entry {k!r} is a {type(v).__name__}, not a tensor")
        sd[k[len("module."):] if k.startswith("module.") else k] = v
    return sd


def is_pyskl_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("cls_head.fc_cls.") for k in sd)


def convert_pyskl_state_dict(sd: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """PYSKL -> mmaction2 key names. The backbones share every key; only the head's Linear is renamed
    (`cls_head.fc_cls.*` -> `cls_head.fc.*`)."""
    out = OrderedDict()
    for k, v in sd.items():
        for old, new in PYSKL_RENAMES:  # (`module.` was stripped by load_state_dict_file)
            if k.startswith(old):
                k = new + k[len(old):]
        out[k] = v
    return out


def infer_model_config(sd: Mapping[str, torch.Tensor], **overrides: Any):
    """Guess the ModelConfig of an mmaction2-keyed STGCN++ state_dict (num_classes, in_channels, layout from
    V, num_stages, base_channels, inflate_stages). Temporal stride is not stored in weights: stages with a
    1x1 residual conv are taken as down stages (true for every standard STGCN++ config, where inflate
    stages are down stages); pass `down_stages=` to override."""
    from .recognizer import ModelConfig

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"state_dict has no {key!r}: not an STGCN++ recognizer")
        return sd[key]

    fc = need("cls_head.fc.weight") if "cls_head.fc.weight" in sd else need("cls_head.fc_cls.weight")
    A = need("backbone.gcn.0.gcn.A")
    num_joints = A.shape[-1]
    layouts = [name for name, (v, _, _) in LAYOUTS.items() if v == num_joints]
    if not layouts:
        raise CheckpointError(f"no graph layout has {num_joints} joints")
    blocks = sorted({int(m.group(1)) for k in sd for m in [re.match(r"backbone\.gcn\.(\d+)\.", k)] if m})
    out_ch = [need(f"backbone.gcn.{i}.gcn.bn.weight").shape[0] for i in blocks]
    in_channels = need("backbone.gcn.0.gcn.conv.weight").shape[1]
    base = out_ch[0]
    # mmaction2 builds an in->base stem block (stage 1) only when in_channels != base_channels
    first = 1 if in_channels != base else 2
    inflate = [b + first for b in blocks[1:] if out_ch[b] != out_ch[b - 1]]
    down = [b + first for b in blocks[1:] if f"backbone.gcn.{b}.residual.conv.weight" in sd]
    cfg = dict(num_classes=fc.shape[0], in_channels=in_channels, layout=layouts[0],
               num_stages=len(blocks) + first - 1,
               base_channels=base, inflate_stages=inflate, down_stages=down)
    cfg.update(overrides)
    return ModelConfig(**cfg)


def load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Strict load with one error listing missing / unexpected keys and shape mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def listing(title: str, items: list[str]) -> str:
            more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:20]) + more if items else ""
        raise CheckpointError(f"{source}: checkpoint does not match the model"
                              + listing("missing keys", missing) + listing("unexpected keys", unexpected)
                              + listing("shape mismatches", shapes))
    model.load_state_dict(sd, strict=True)
    return model


def load_mmaction_checkpoint(model: nn.Module, path: str | Path, *, trusted: bool = False) -> nn.Module:
    """Load an mmaction2 (or, converted on the fly, PYSKL) checkpoint into `model`, strictly."""
    sd = load_state_dict_file(path, trusted=trusted)
    if is_pyskl_state_dict(sd):
        sd = convert_pyskl_state_dict(sd)
    return load_into(model, sd, str(path))


def mmaction_config_text(cfg) -> str:
    """The model section of an mmaction2 1.2.0 config that builds the same network as `cfg` (ModelConfig)."""
    if cfg.layout == "handmp":  # mmaction2 1.2.0's Graph names only openpose / nturgb+d / coco: a dict it takes
        num_node, center, inward = LAYOUTS["handmp"]
        layout = f"dict(num_node={num_node}, inward={[tuple(e) for e in inward]}, center={center})"
    else:
        layout = f"'{cfg.layout}'"
    return (
        "model = dict(\n    type='RecognizerGCN',\n    backbone=dict(\n        type='STGCN',\n"
        "        gcn_adaptive='init',\n        gcn_with_res=True,\n        tcn_type='mstcn',\n"
        f"        in_channels={cfg.in_channels},\n        base_channels={cfg.base_channels},\n"
        f"        num_stages={cfg.num_stages},\n        inflate_stages={list(cfg.inflate_stages)},\n"
        f"        down_stages={list(cfg.down_stages)},\n"
        f"        graph_cfg=dict(layout={layout}, mode='spatial')),\n"
        f"    cls_head=dict(type='GCNHead', num_classes={cfg.num_classes}, "
        f"in_channels={cfg.head_in_channels}, dropout={cfg.dropout}))\n")


def export_mmaction_checkpoint(model: nn.Module, path: str | Path, *, cfg=None, epoch: int = 0, iteration: int = 0,
                               classes: list[str] | None = None, extra_meta: dict | None = None) -> Path:
    """Write `{'meta': {...}, 'state_dict': {...}}` as mmengine's CheckpointHook saves it (loads in mmaction2
    with `load_checkpoint` / `--cfg-options load_from=`). `meta` holds only plain types, so the file also
    loads with weights_only=True. Written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"epoch": int(epoch), "iter": int(iteration),
                            "time": time.strftime("%Y%m%d_%H%M%S"), "exporter": "recognizer_core"}
    if cfg is not None:
        meta["cfg"] = mmaction_config_text(cfg)
    if classes is not None:
        meta["dataset_meta"] = {"classes": list(classes)}
    meta.update(extra_meta or {})
    sd = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save({"meta": meta, "state_dict": sd}, tmp)
    os.replace(tmp, path)
    return path
