"""Gradients of our STGCN++ training step equal those of mmaction2's operation order on the same weights.

Our blocks reorder the math for speed (GCN aggregates over joints before its 1x1 conv, mstcn runs the six
branch 1x1 convs as one conv). `mmaction_order_forward` below is mmaction2 1.2.0's `unit_gcn` / `mstcn` /
`STGCNBlock` forward written out literally over our modules' parameters, so both paths share every weight.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from recognizer_core.models.gcn_blocks import MSTCN, UnitGCN
from recognizer_core.models.recognizer import ModelConfig, build_recognizer
from recognizer_core.models.stgcn import STGCNBlock


def _gcn(m: UnitGCN, x: torch.Tensor) -> torch.Tensor:
    # mmaction2 unit_gcn (adaptive='init', with_res): conv to K*C_out, einsum over joints, BN, + down(x), act
    n, _, t, v = x.shape
    res = x if m.down is None else m.down(x)
    y = m.conv(x).view(n, m.num_subsets, m.out_channels, t, v)
    y = torch.einsum("nkctv,kvw->nctw", y, m.adjacency()).contiguous()
    return m.act(m.bn(y) + res)


def _mstcn(m: MSTCN, x: torch.Tensor) -> torch.Tensor:
    # mmaction2 mstcn: each branch on the full input, concat, transform, BN, dropout
    return m.drop(m.bn(m.transform(torch.cat([branch(x) for branch in m.branches], dim=1))))


def _block(b: STGCNBlock, x: torch.Tensor) -> torch.Tensor:
    res = 0 if b.residual_mode == "none" else (x if b.residual_mode == "identity" else b.residual(x))
    return b.relu(_mstcn(b.tcn, _gcn(b.gcn, x)) + res)


def mmaction_order_forward(model, x: torch.Tensor) -> torch.Tensor:
    bb = model.backbone
    N, M, T, V, C = x.shape
    x = x.permute(0, 1, 3, 4, 2).contiguous()
    x = bb.data_bn(x.view(N * M, V * C, T))
    x = x.view(N, M, V, C, T).permute(0, 1, 3, 4, 2).contiguous().view(N * M, C, T, V)
    for block in bb.gcn:
        x = _block(block, x)
    return model.cls_head(x.reshape((N, M) + x.shape[1:]))


def _grads(model, x, y, forward) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(forward(model, x), y).backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_gradients_equal_mmaction_order(dtype, tol):
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=3, num_stages=4, base_channels=12, inflate_stages=[2], down_stages=[2],
                      dropout=0.0)
    ours = build_recognizer(cfg).train().to(dtype)
    with torch.no_grad():  # non-trivial BN affine params and a perturbed adjacency, so every path matters
        for name, p in ours.named_parameters():
            if name.endswith("bn.weight") or name.endswith(".1.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bn.bias") or name.endswith(".A"):
                p.add_(0.1 * torch.randn_like(p))
    ref = copy.deepcopy(ours)
    x = torch.randn(4, 2, 16, 17, 3, dtype=dtype)
    x[1, 1] = 0  # a padded person
    y = torch.tensor([0, 1, 2, 1])
    g_ours = _grads(ours, x, y, lambda m, inp: m(inp))
    g_ref = _grads(ref, x, y, mmaction_order_forward)
    assert g_ours.keys() == g_ref.keys()
    scale = max(g.abs().max() for g in g_ref.values())
    checked = 0
    for k, g in g_ref.items():
        if g.norm() <= 1e-6 * scale:
            # e.g. conv biases right before a BatchNorm (cancelled by the batch mean): ~0 on both paths
            assert g_ours[k].norm() <= 1e-5 * scale, k
            continue
        rel = ((g_ours[k] - g).norm() / g.norm()).item()
        assert rel < tol, f"{k}: relative gradient error {rel:.2e}"
        checked += 1
    assert checked >= 100, checked  # every weight, BN affine and adjacency of the 4 blocks and the head
    # the BN running statistics moved identically too
    for (k, a), (_, b) in zip(ours.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=k)
