"""Fused training-mode BatchNorm (+ residual) (+ ReLU) for CPU training: `batch_norm_act`.

The kernels are bn_act_kernels.cpp, built and loaded by cpu_kernels.py. Where they cannot be built (no compiler), or
with RECOGNIZER_CPU_KERNELS=0, `wanted` is False and the blocks run the same computation as eager PyTorch ops.

Same function as nn.BatchNorm2d in training mode followed by `+ residual` and ReLU (batch statistics with the
biased variance, running statistics updated with the unbiased one); the sums are accumulated in double, so values
differ from PyTorch's by float rounding only. Under CPU bf16 autocast the convolutions hand over bf16 activations:
the kernels read and write them as bf16 and compute in float32, as PyTorch's mixed-type BatchNorm does (weights,
statistics and their gradients stay float32).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from . import cpu_kernels


DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def wanted(x: torch.Tensor, training: bool) -> bool:
    """Whether the fused path serves this call: CPU training in float32/64, or bf16 (autocast) (on a GPU cuDNN's
    BatchNorm is used; in eval mode BatchNorm folds into an affine map)."""
    return training and x.device.type == "cpu" and x.dtype in DTYPES and cpu_kernels.enabled()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' scale / shift / gradient-coefficient type for activations of `dtype` (float32 for bf16)."""
    return torch.float32 if dtype == torch.bfloat16 else dtype


def describe(device: torch.device, compile_mode: str = "none") -> str:
    """What a training step on `device` runs its BatchNorm-ReLUs with, for start-up lines and summaries."""
    if compile_mode != "none":
        return "inductor (torch.compile)"  # cpu_kernels.enabled() is False while dynamo traces
    if device.type != "cpu":
        return "eager (cuDNN)" if device.type == "cuda" else "eager"
    if os.environ.get(cpu_kernels.ENV_SWITCH, "1") == "0":
        return f"eager ({cpu_kernels.ENV_SWITCH}=0)"
    return "fused" if cpu_kernels.load() else f"eager (kernels unavailable: {cpu_kernels.load_error()})"


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(n, c, h, w) -> its (n*h*w, c) row matrix: a view of a channels_last tensor (a copy otherwise)."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n * h * w, c).contiguous()


class _BatchNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mean, invstd, weight, bias, residual, relu: bool, out_sizes: list[int], *xs):
        scale64 = weight.detach().double() * invstd
        scale = scale64.to(_compute_dtype(xs[0].dtype))
        shift = (bias.detach().double() - mean * scale64).to(_compute_dtype(xs[0].dtype))
        outs = torch.ops.recognizer.bn_apply(list(xs), scale, shift, residual, relu, out_sizes)
        ctx.keep_y = relu and residual is not None  # the ReLU mask of `bn + residual` needs the output
        ctx.relu, ctx.out_sizes = relu, list(out_sizes)
        ctx.res_grad = residual is not None and ctx.needs_input_grad[4]
        ctx.save_for_backward(weight, mean, invstd, scale, shift, *(outs[:1] if ctx.keep_y else []), *xs)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        weight, mean, invstd, scale, shift, *rest = ctx.saved_tensors
        y = rest[0] if ctx.keep_y else None
        xs = rest[1:] if ctx.keep_y else rest
        rows = xs[0].shape[0]
        grads = [xs[0].new_zeros(rows, s) if g is None else g.contiguous() for g, s in zip(grads, ctx.out_sizes)]
        dxs, dweight, dbias, dres = torch.ops.recognizer.bn_backward(
            grads, list(xs), y, mean, invstd, weight, scale, shift, ctx.relu, ctx.res_grad)
        return (None, None, dweight, dbias, dres if ctx.res_grad else None, None, None, *dxs)


def batch_norm_act(xs: list[torch.Tensor], bns: list[nn.BatchNorm2d], out_sizes: list[int] | None = None,
                   residual: torch.Tensor | None = None, relu: bool = True) -> list[torch.Tensor]:
    """ReLU(BN(cat(xs)) (+ residual)) in training mode, returned as channel blocks of out_sizes (default: one).

    xs: (n, c_i, t, v) tensors whose channel concatenation the BatchNorms `bns` normalise (in order, their channels
    concatenated); the outputs are channels_last (n, o_j, t, v) tensors. Neither the input concatenation nor the
    output split is materialised. The modules' running statistics are updated as nn.BatchNorm2d does.
    """
    n, _, h, w = xs[0].shape
    # one activation type for the kernels: bf16 if autocast made any input bf16 (a float32 one is rounded, as the
    # next autocast op would), else the inputs' own
    dtype = torch.bfloat16 if any(x.dtype == torch.bfloat16 for x in xs) else xs[0].dtype
    rows = [_rows(x.to(dtype)) for x in xs]
    channels = sum(r.shape[1] for r in rows)
    sizes = [b.num_features for b in bns]
    assert sum(sizes) == channels and all(b.eps == bns[0].eps for b in bns), "BatchNorms must cover the channels"
    out_sizes = list(out_sizes or [channels])
    assert residual is None or len(out_sizes) == 1, "a residual goes with one output block"
    mean, var = torch.ops.recognizer.bn_stats(rows)
    invstd = (var + bns[0].eps).rsqrt()
    _update_running_stats(bns, mean, var, n * h * w)
    weight = torch.cat([b.weight for b in bns]) if len(bns) > 1 else bns[0].weight
    bias = torch.cat([b.bias for b in bns]) if len(bns) > 1 else bns[0].bias
    res_rows = None if residual is None else _rows(residual.to(dtype))
    outs = _BatchNormAct.apply(mean, invstd, weight, bias, res_rows, relu, out_sizes, *rows)
    return [o.view(n, h, w, o.shape[1]).permute(0, 3, 1, 2) for o in outs]


def _update_running_stats(bns: list[nn.BatchNorm2d], mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    with torch.no_grad():
        unbiased = var * (count / max(count - 1, 1))
        offset = 0
        for b in bns:
            c = b.num_features
            if b.track_running_stats and b.running_mean is not None:
                b.num_batches_tracked.add_(1)
                f = b.momentum if b.momentum is not None else 1.0 / float(b.num_batches_tracked)
                b.running_mean.mul_(1 - f).add_(mean[offset:offset + c].to(b.running_mean.dtype), alpha=f)
                b.running_var.mul_(1 - f).add_(unbiased[offset:offset + c].to(b.running_var.dtype), alpha=f)
            offset += c
