"""bf16 autocast CPU training through our fused BatchNorm kernels (bn_act, bn_act_kernels.cpp).

Under CPU bf16 autocast the convolutions and GEMMs output bf16. PyTorch's BatchNorm then runs mixed-type: bf16 in
and out, float32 weights and statistics, float32 math. The fused kernels do the same on half the bytes of float32.
These tests hold the kernels to the float32 function of the same bf16 values rounded once, and the whole autocast
step to the eager autocast step's accuracy against float64.
"""
from __future__ import annotations

import copy
import statistics

import pytest
import torch
import torch.nn.functional as F

from recognizer_core.models import bn_act
from tests.test_models_grad import _grads, _test_point, cpu_kernels_on, torch_threads  # noqa: F401 (fixtures)


@pytest.mark.parametrize("in_sizes, out_sizes, residual, relu", [
    ([21], [5, 5, 5, 6], False, True),  # mstcn's heads
    ([5, 5, 5, 6], [21], False, True),  # mstcn's transform
    ([21], [21], True, True)])  # unit_gcn and the block end
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_bf16_batch_norm_act_is_the_float32_function_rounded_once(in_sizes, out_sizes, residual, relu, threads,
                                                              torch_threads, cpu_kernels_on):
    cpu_kernels_on(True)
    torch_threads(threads)
    torch.manual_seed(0)
    channels, (n, t, v) = sum(in_sizes), (3, 70, 5)
    bns = [torch.nn.BatchNorm2d(c) for c in ([channels] if len(out_sizes) == 1 else out_sizes)]
    for b in bns:
        b.weight.data.uniform_(0.5, 1.5)
        b.bias.data.uniform_(-0.5, 0.5)
    ref_bns = copy.deepcopy(bns)
    xs = [(torch.randn(n, c, t, v) * 2 + 1).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
          .requires_grad_() for c in in_sizes]
    res = (torch.randn(n, channels, t, v).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
           .requires_grad_() if residual else None)
    outs = bn_act.batch_norm_act(xs, bns, out_sizes, res, relu)
    assert all(o.dtype == torch.bfloat16 and o.is_contiguous(memory_format=torch.channels_last) for o in outs)
    gys = [torch.randn_like(o) for o in outs]
    leaves = xs + ([res] if residual else []) + [p for b in bns for p in b.parameters()]
    grads = torch.autograd.grad(outs, leaves, gys)

    # The same function in float32 on the same bf16 values, rounded to bf16 once at the end (what the kernels do;
    # PyTorch's mixed-type BatchNorm rounds its output before the residual add, one more rounding)
    x = torch.cat(xs, dim=1).float()
    y = torch.cat([b(part) for b, part in zip(ref_bns, x.split([b.num_features for b in ref_bns], 1))], dim=1)
    y = y + res.float() if residual else y
    ref = [r.to(torch.bfloat16) for r in (F.relu(y) if relu else y).split(out_sizes, dim=1)]
    ref_leaves = xs + ([res] if residual else []) + [p for b in ref_bns for p in b.parameters()]
    ref_grads = torch.autograd.grad(ref, ref_leaves, gys)
    # Outputs: the same float32 values up to summation order, rounded once: equal but for a rare rounding tie.
    for a, b in zip(outs, ref):
        assert (a == b).float().mean() > 0.999
        torch.testing.assert_close(a.float(), b.float(), rtol=2.0 ** -7, atol=2.0 ** -7)
    # Gradients: bf16 input gradients (rounded once on both sides) and float32 weight / bias gradients reduced over
    # 1050 rows (float32 sums of 16 rows added in double here, float32 there).
    for a, b in zip(grads, ref_grads):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=2.0 ** -7, atol=1e-3)
    for a, b in zip(bns, ref_bns):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-3, atol=1e-3)


def _median_relative_error(g: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> float:
    scale = max(t.abs().max() for t in truth.values())
    return statistics.median(((g[k].double() - t).norm() / t.norm()).item()
                             for k, t in truth.items() if t.norm() > 1e-4 * scale)


def test_bf16_autocast_step_as_accurate_as_eager_autocast(torch_threads, cpu_kernels_on):
    """The whole training step under bf16 autocast, our kernels against PyTorch's eager ops, each against the exact
    (float64) step: bf16 rounding alone puts every gradient some percent off, so the test is that the kernels add no
    error of their own, at three points."""
    torch_threads(2)

    def autocast_step(model, x, y):
        def forward(m, inp):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(inp).float()
        return _grads(model, x, y, forward)

    for seed in range(3):
        model, x, y = _test_point(seed, torch.float32)
        truth = _grads(copy.deepcopy(model).double(), x.double(), y, lambda m, inp: m(inp))
        cpu_kernels_on(True)
        fused = _median_relative_error(autocast_step(copy.deepcopy(model), x, y), truth)
        cpu_kernels_on(False)
        eager = _median_relative_error(autocast_step(copy.deepcopy(model), x, y), truth)
        assert 0.0 < fused < 1.5 * eager + 0.01, (seed, fused, eager)
