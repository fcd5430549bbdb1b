"""STGCN++ -> ONNX (dynamic batch) plus the JSON sidecar that `recognize` needs to run it without torch.

The legacy TorchScript exporter cannot see the kernel shape of UnitGCN's fused 1x1 conv (its weight is
reshaped from parameters on every call), so the exported copy computes that weight and bias once, as constants:
the same function, checked against torch (and the mmaction2 goldens) by `check_onnx_parity`.
`onnx` is an export-time dependency, imported only here.
"""
from __future__ import annotations

import copy
import json
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from recognizer_core.models.gcn_blocks import UnitGCN
from recognizer_core.recognize.spec import sidecar_path
from recognizer_core.storage import atomic_write

OPSET = 17  # runs on onnxruntime >= 1.14 and TensorRT 8.6+
INPUT, OUTPUT = "skeletons", "logits"


def _static_gcn_forward(self: UnitGCN, x: torch.Tensor) -> torch.Tensor:
    # UnitGCN's aggregate-then-conv in NCHW form (the training forward's channels-last GEMMs compute the same
    # function), with the fused weight / bias precomputed (see the module docstring)
    n, c_in, t, v = x.shape
    k = self.num_subsets
    xa = (x.reshape(n * c_in * t, v) @ self._export_A).view(n, c_in, t, k, v)
    xa = xa.permute(0, 3, 1, 2, 4).reshape(n, k * c_in, t, v)
    y = self.bn(F.conv2d(xa, self._export_weight) + self._export_bias)
    if self.with_res:
        y = y + (x if self.down is None else self.down(x))
    return self.act(y)


def exportable(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of `model` whose graph convs use constant fused weights (same outputs)."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, UnitGCN):
                k, c_out, c_in = m.num_subsets, m.out_channels, m.in_channels
                A = m.adjacency().detach()
                v = A.shape[-1]
                m._export_A = A.permute(1, 0, 2).reshape(v, k * v).clone()
                m._export_weight = m.conv.weight.view(k, c_out, c_in).transpose(0, 1).reshape(
                    c_out, k * c_in, 1, 1).clone()
                m._export_bias = (m.conv.bias.view(k, c_out).t() @ A.sum(1)).view(1, c_out, 1, v).clone()
                m.forward = types.MethodType(_static_gcn_forward, m)
    return model


def export_onnx(model: torch.nn.Module, path: str | Path, example: torch.Tensor, opset: int = OPSET) -> Path:
    """Write `model` ((N, M, T, V, C) -> logits (N, K)) as ONNX with a dynamic batch axis, atomically."""
    import io
    import warnings

    import onnx  # noqa: F401  (export dependency: fail here, with its name, when missing)

    net = exportable(model)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on the input checks (shapes are fixed except N)
        torch.onnx.export(net, (example,), buf, input_names=[INPUT], output_names=[OUTPUT], opset_version=opset,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, dynamo=False)
    import onnx

    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return Path(path)


def onnx_session(path: str | Path, threads: int = 0):
    from recognizer_core.onnx_runtime import import_onnxruntime

    ort = import_onnxruntime()  # one ORT build only

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_onnx_parity(model: torch.nn.Module, onnx_path: str | Path, x: torch.Tensor) -> float:
    """Max |logits_onnx - logits_torch| on `x` (N, M, T, V, C)."""
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    out = onnx_session(onnx_path).run([OUTPUT], {INPUT: x.numpy().astype(np.float32)})[0]
    return float(np.abs(out - ref).max())


def write_sidecar(onnx_path: str | Path, spec: dict) -> Path:
    path = sidecar_path(onnx_path)
    with atomic_write(path, "w") as f:
        f.write(json.dumps(spec, indent=1) + "\n")
    return path
