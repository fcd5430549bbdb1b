"""STGCN / STGCN++ backbone, faithful to mmaction2 1.2.0 `STGCN` (same state_dict keys, same numerics).

STGCN++ = STGCN(gcn_adaptive='init', gcn_with_res=True, tcn_type='mstcn', layout, mode='spatial').
Input (N, M, T, V, C) -> output (N, M, C_out, T_out, V), a view of a channels-innermost tensor (see forward).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import bn_act
from .gcn_blocks import MSTCN, UnitGCN, UnitTCN, batch_norms_training
from .graph import Graph

EPS = 1e-4  # mmaction2 rounds base_channels * ratio**k with this epsilon


class STGCNBlock(nn.Module):
    """UnitGCN -> temporal unit (mstcn or 9x1 unit_tcn), plus a residual, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, A: torch.Tensor, stride: int = 1,
                 residual: bool = True, gcn_adaptive: str | None = "init", gcn_with_res: bool = True,
                 tcn_type: str = "mstcn", tcn_dropout: float = 0.0) -> None:
        super().__init__()
        self.gcn = UnitGCN(in_channels, out_channels, A, adaptive=gcn_adaptive, with_res=gcn_with_res)
        if tcn_type == "mstcn":
            self.tcn = MSTCN(out_channels, out_channels, stride=stride, dropout=tcn_dropout)
        elif tcn_type == "unit_tcn":
            self.tcn = UnitTCN(out_channels, out_channels, 9, stride=stride)
            if tcn_dropout > 0:
                raise ValueError("tcn_dropout is only supported with tcn_type='mstcn'")
        else:
            raise ValueError(f"tcn_type must be 'mstcn' or 'unit_tcn', got {tcn_type!r}")
        self.relu = nn.ReLU(inplace=True)
        # mmaction2: no residual (first block), identity, or a strided 1x1 unit_tcn (has keys `residual.*`).
        self.residual_mode = "none" if not residual else (
            "identity" if in_channels == out_channels and stride == 1 else "conv")
        if self.residual_mode == "conv":
            self.residual = UnitTCN(in_channels, out_channels, kernel_size=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gcn(x)
        fused = bn_act.wanted(h, self.training and batch_norms_training(self.tcn))
        if self.residual_mode == "conv" and fused and self.residual.bn.training:
            # the strided residual's conv + BatchNorm: its BatchNorm as a fused pass too (no ReLU)
            res = bn_act.batch_norm_act([self.residual.before_norm(x)], [self.residual.bn], relu=False)[0]
        else:
            res = x if self.residual_mode == "identity" else self.residual(x) if self.residual_mode == "conv" else None
        if fused and not isinstance(getattr(self.tcn, "drop", None), nn.Dropout):
            # the temporal unit's last BatchNorm, the residual add and the ReLU as one fused pass (see bn_act)
            return bn_act.batch_norm_act([self.tcn.before_norm(h)], [self.tcn.bn], residual=res)[0]
        y = self.tcn(h)  # a BatchNorm (or dropout) output: adding in place is safe for autograd
        if res is not None:
            y = y.add_(res)
        return self.relu(y)


def _checkpointed_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Gradient checkpointing that keeps BatchNorm statistics identical to a plain forward.

    torch.utils.checkpoint re-runs the block in backward; in train mode that would update the BN running
    stats a second time, so the recompute restores them afterwards. The first call is the real forward.
    """
    calls = [0]

    def run(inp: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 1:
            return block(inp)
        saved = [b.detach().clone() for b in block.buffers()]
        try:
            return block(inp)
        finally:  # also when checkpoint's early stop aborts the recompute with an exception
            with torch.no_grad():
                for b, s in zip(block.buffers(), saved):
                    b.copy_(s)

    return checkpoint(run, x, use_reentrant=False)


class STGCN(nn.Module):
    """Stack of STGCNBlocks. Block 1 maps in_channels -> base_channels (no residual); block i (2..num_stages)
    doubles channels if i in inflate_stages and halves T if i in down_stages (1-based, as mmaction2).
    `with_cp` trades compute for memory in training (gradient checkpointing per block)."""

    def __init__(self, layout: str = "coco", mode: str = "spatial", in_channels: int = 3, base_channels: int = 64,
                 data_bn_type: str = "VC", ch_ratio: int = 2, num_person: int = 2, num_stages: int = 10,
                 inflate_stages: tuple[int, ...] | list[int] = (5, 8), down_stages: tuple[int, ...] | list[int] = (5, 8),
                 gcn_adaptive: str | None = "init", gcn_with_res: bool = True, tcn_type: str = "mstcn",
                 tcn_dropout: float = 0.0, with_cp: bool = False) -> None:
        super().__init__()
        self.graph = Graph(layout, mode)
        A = torch.tensor(self.graph.A, dtype=torch.float32)
        num_joints = A.size(1)
        self.data_bn_type = data_bn_type
        if data_bn_type == "MVC":
            self.data_bn = nn.BatchNorm1d(num_person * in_channels * num_joints)
        elif data_bn_type == "VC":
            self.data_bn = nn.BatchNorm1d(in_channels * num_joints)
        elif data_bn_type is None or data_bn_type == "none":
            self.data_bn = nn.Identity()
        else:
            raise ValueError(f"data_bn_type must be 'VC', 'MVC' or None, got {data_bn_type!r}")
        self.in_channels, self.base_channels, self.num_joints = in_channels, base_channels, num_joints
        self.inflate_stages, self.down_stages = list(inflate_stages), list(down_stages)
        self.with_cp = with_cp
        kw = dict(gcn_adaptive=gcn_adaptive, gcn_with_res=gcn_with_res, tcn_type=tcn_type)

        blocks = []
        if in_channels != base_channels:
            # mmaction2 drops tcn_dropout for the first block
            blocks.append(STGCNBlock(in_channels, base_channels, A, 1, residual=False, **kw))
        channels, inflate_times = base_channels, 0
        for i in range(2, num_stages + 1):
            inflate_times += i in self.inflate_stages
            out_channels = int(base_channels * ch_ratio**inflate_times + EPS)
            blocks.append(STGCNBlock(channels, out_channels, A, 1 + (i in self.down_stages),
                                     tcn_dropout=tcn_dropout, **kw))
            channels = out_channels
        self.gcn = nn.ModuleList(blocks)
        self.num_stages = len(blocks)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, M, T, V, C = x.shape
        # Channels innermost from here to the head: x is (N*M, T, V, C) in memory and every block sees it as
        # an (N*M, C, T, V) tensor in channels_last format (a permuted view, no copy), so 1x1 convs and
        # BatchNorm run as GEMMs / per-channel passes over contiguous rows (1.2-1.4x faster per block than
        # NCHW on CPU here; cuDNN prefers NHWC too).
        # data_bn normalises each (v, c) (or (m, v, c)) feature over the remaining axes; on a row-major
        # (rows, features) matrix that is BatchNorm1d's 2-D case.
        if self.data_bn_type == "MVC":
            x = self.data_bn(x.transpose(1, 2).reshape(N * T, M * V * C))
            x = x.view(N, T, M, V, C).transpose(1, 2).reshape(N * M, T, V, C)
        else:
            x = self.data_bn(x.reshape(N * M * T, V * C)).view(N * M, T, V, C)
        x = x.permute(0, 3, 1, 2)
        use_cp = self.with_cp and self.training and torch.is_grad_enabled()
        for block in self.gcn:
            x = _checkpointed_block(block, x) if use_cp else block(x)
        return x.reshape((N, M) + x.shape[1:])
