"""The roofline bench's FLOP counts (bench/bench_train_roofline.py): the README's GEMM rates divide by them.

Each formula is checked against what the traced op computes: a convolution's count against the same product as a
plain GEMM over unfolded patches, and our chunked GCN op's count against the FLOPs of the MKL calls it makes, which
the profiler records when the op runs on one thread.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from bench.bench_train_roofline import GCN_OPS, GEMM_OPS, _inside, gcn_flops, gemm_flops
from recognizer_core.models import cpu_kernels
from recognizer_core.models.gcn_blocks import AggregateLinear


def _traced(fn) -> list:
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return list(prof.events())


def test_conv_flops_match_the_unfolded_product():
    # a strided, dilated, padded temporal conv (the block-2 mstcn branch's geometry), forward and both gradients
    x = torch.randn(2, 6, 20, 5, requires_grad=True)
    w = torch.randn(4, 6, 3, 1, requires_grad=True)
    stride, padding, dilation = (2, 1), (3, 0), (3, 1)

    def step():
        F.conv2d(x, w, None, stride, padding, dilation).sum().backward()

    events = {e.name: e for e in _traced(step) if e.name in GEMM_OPS}
    out = F.conv2d(x, w, None, stride, padding, dilation)
    patches = F.unfold(x, (3, 1), dilation=dilation, padding=padding, stride=stride)  # (n, c*kh*kw, L)
    assert patches.shape[-1] == out.shape[2] * out.shape[3]
    macs = patches.shape[0] * patches.shape[1] * patches.shape[2] * w.shape[0]
    forward = next(e for name, e in events.items() if "convolution" in name and "backward" not in name)
    assert gemm_flops(forward.name, forward.input_shapes, forward.concrete_inputs) == 2 * macs
    backward = events["aten::convolution_backward"]
    assert gemm_flops(backward.name, backward.input_shapes, backward.concrete_inputs) == 2 * 2 * macs  # dx and dw


def test_gcn_op_flops_equal_its_mkl_calls():
    if not cpu_kernels.load():
        pytest.skip(f"CPU kernels not built here: {cpu_kernels.load_error()}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every chunk on the traced thread, so its MKL calls are recorded
    try:
        rows, v, k, c_in, c_out = 37, 17, 3, 24, 16
        xt = torch.randn(rows, v, c_in, requires_grad=True)
        a_rows = torch.randn(v * k, v, requires_grad=True)
        w = torch.randn(c_out, k * c_in, requires_grad=True)
        bias = torch.randn(v, c_out, requires_grad=True)

        def step():
            AggregateLinear.apply(xt, a_rows, w, bias).sum().backward()

        events = _traced(step)
    finally:
        torch.set_num_threads(threads)
    ops = [e for e in events if e.name in GCN_OPS]
    assert {e.name for e in ops} == set(GCN_OPS)
    for op in ops:
        children = [e for e in events if e.name in GEMM_OPS and _inside(e, (op.name,))]
        assert children, op.name
        counted = sum(gemm_flops(e.name, e.input_shapes, e.concrete_inputs) for e in children)
        assert gcn_flops(op.name, op.input_shapes, op.concrete_inputs) == counted, op.name
