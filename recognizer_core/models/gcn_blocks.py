"""STGCN++ building blocks (mmaction2 1.2.0 `unit_gcn`, `unit_tcn`, `mstcn`), same submodule names so that
state_dict keys match mmaction2 checkpoints exactly (`gcn.conv`, `gcn.down.0`, `tcn.branches.0.3.conv`, ...).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from . import bn_act, cpu_kernels

# mstcn's default branches: (kernel, dilation) temporal convs, a max-pool branch, a strided 1x1 conv.
MSTCN_BRANCHES = ((3, 1), (3, 2), (3, 3), (3, 4), ("max", 3), "1x1")
# UnitGCN folds A into its weights (one dense GEMM) up to this many input channels, see UnitGCN.forward.
DENSE_GCN_MAX_IN_CHANNELS = 8
# Rows (one frame of one person each) per chunk in AggregateLinear: its (rows, w*k, c_in) aggregate stays
# in a core's L2 and the GEMMs keep M = rows * V >= 300 (256 kB, 512 kB and 1 MB: within noise on the fight step).
GCN_CHUNK_BYTES = 1 << 19
# "1": off the fused CPU path, each mstcn branch runs on x with its own BatchNorm, in mmaction2's order, instead of
# one merged BatchNorm (MSTCN.before_norm). The merge pays on a CPU; on a GPU its concatenations and copies are 25
# more launches per block (153 against 128, bench/count_step_ops.py), so this is the A/B for the next GPU run
# (bench_train_step.py --branch-bn). Read at every forward.
BRANCH_BN_SWITCH = "RECOGNIZER_MSTCN_BRANCH_BN"


class AggregateLinear(torch.autograd.Function):
    """y[r] = (A_rows @ x[r]).view(v, k*c_in) @ w.T + bias for every row r, chunk by chunk: UnitGCN's joint
    aggregation and weight GEMM (see UnitGCN.forward) without the K-times-wider aggregate as a tensor.

    Autograd would keep that aggregate (rows, v*k, c_in) alive for the weight gradient and write its
    gradient as another one: two tensors 3x the block's activation, each a fresh mmap (page faults) and a
    trip through memory. Here each chunk's aggregate is rebuilt in backward (a small memory-bound bmm) and
    used while it is in cache. Same products as the plain form; only the gradients' summation order over rows
    differs (per chunk, then summed). The compiled loop (gcn_kernels.cpp, parallel over chunks) runs where the
    CPU kernels load; this Python loop is the same computation, serial, where they do not.
    """

    @staticmethod
    def forward(ctx, xt: torch.Tensor, a_rows: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # xt (rows, v, c_in) contiguous, a_rows (v*k, v), w (c_out, k*c_in), bias (v, c_out) -> y (rows, v, c_out)
        rows, v, c_in = xt.shape
        vk, c_out = a_rows.shape[0], w.shape[0]
        step = max(1, GCN_CHUNK_BYTES // (vk * c_in * xt.element_size()))
        ctx.save_for_backward(xt, a_rows, w)
        ctx.step, ctx.compiled = step, cpu_kernels.enabled()
        if ctx.compiled:
            return torch.ops.recognizer.gcn_aggregate(xt, a_rows, w, bias, step)
        y = xt.new_empty(rows, v, c_out)
        wt = w.t()
        for s in range(0, rows, step):
            x_c = xt[s:s + step]
            xa = torch.bmm(a_rows.expand(x_c.shape[0], vk, v), x_c)
            torch.mm(xa.view(-1, w.shape[1]), wt, out=y[s:s + step].view(-1, c_out))
            y[s:s + step] += bias
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        xt, a_rows, w = ctx.saved_tensors
        if ctx.compiled:
            gx, ga, gw, gb = torch.ops.recognizer.gcn_aggregate_backward(gy, xt, a_rows, w, ctx.step,
                                                                         ctx.needs_input_grad[1])
            return gx, ga if ctx.needs_input_grad[1] else None, gw, gb
        rows, v, c_in = xt.shape
        vk, c_out = a_rows.shape[0], w.shape[0]
        gy = gy.contiguous()
        gx = torch.empty_like(xt)
        gw = torch.zeros_like(w)
        ga = torch.zeros_like(a_rows)
        gb = gy.new_zeros(v, c_out)
        for s in range(0, rows, ctx.step):
            x_c, g_c = xt[s:s + ctx.step], gy[s:s + ctx.step].view(-1, c_out)
            a_c = a_rows.expand(x_c.shape[0], vk, v)
            xa = torch.bmm(a_c, x_c)
            gw.addmm_(g_c.t(), xa.view(-1, w.shape[1]))
            gb += g_c.view(-1, v, c_out).sum(0)
            gxa = torch.mm(g_c, w).view(-1, vk, c_in)
            torch.bmm(a_c.transpose(1, 2), gxa, out=gx[s:s + ctx.step])
            if ctx.needs_input_grad[1]:
                ga += torch.bmm(gxa, x_c.transpose(1, 2)).sum(0)
        return gx, ga if ctx.needs_input_grad[1] else None, gw, gb


class _ConvZeroBiasGrad(torch.autograd.Function):
    """F.conv2d (groups 1) whose bias gradient is zero without being computed, see conv_into_batch_stats.

    Under CPU autocast it does what autocast does for a conv: inputs cast to the autocast dtype, the conv and its
    backward in that dtype, each gradient returned in its input's own dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.dtypes = (x.dtype, weight.dtype)
        if torch.is_autocast_enabled("cpu"):
            low = torch.get_autocast_dtype("cpu")
            x, weight, bias = x.to(low), weight.to(low), bias.to(low)
        ctx.save_for_backward(x, weight)
        ctx.geometry = (list(stride), list(padding), list(dilation))
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        gx, gw, _ = torch.ops.aten.convolution_backward(gy.to(x.dtype), x, weight, [weight.shape[0]], stride,
                                                        padding, dilation, False, [0, 0], 1, mask)
        gx = gx.to(ctx.dtypes[0]) if gx is not None else None
        gw = gw.to(ctx.dtypes[1]) if gw is not None else None
        gb = weight.new_zeros(weight.shape[0], dtype=ctx.dtypes[1]) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None, None


def batch_norms_training(module: nn.Module) -> bool:
    """Whether every BatchNorm in `module` is in training mode. The fused CPU kernels compute batch statistics
    and update running ones: a BatchNorm frozen by eval() (mmengine's norm_eval) must take the eager path."""
    return all(m.training for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def conv_into_batch_stats(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor | None = None,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """conv(x) (or with the given weight and bias) where a BatchNorm with batch statistics takes each output channel
    next, directly or after a concatenation. Adding a constant to a channel does not change that BatchNorm's output,
    so the bias gradient is exactly zero: it is returned as zeros instead of being reduced from the output gradient
    (one pass over it per conv, ~2% of a CPU training step). The bias still enters the forward, so the running mean
    moves as in mmaction2, and the optimizer sees the same (zero) gradient as there (~0 there, by rounding)."""
    weight = conv.weight if weight is None else weight
    bias = conv.bias if bias is None else bias
    if bias is None or conv.groups != 1 or isinstance(conv.padding, str) or not torch.is_grad_enabled() \
            or torch.compiler.is_compiling():  # inductor prunes the unused gradient itself
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return _ConvZeroBiasGrad.apply(x, weight, bias, conv.stride, conv.padding, conv.dilation)


class UnitGCN(nn.Module):
    """Spatial graph convolution: 1x1 conv to K subsets, aggregate over joints with A, BN, (+res), ReLU
    (computed as aggregate-then-conv, see forward).

    adaptive='init' makes A a learnable parameter initialised from the graph (STGCN++);
    'importance'/'offset' learn PA multiplied/added to the fixed A; None keeps A fixed.
    """

    def __init__(self, in_channels: int, out_channels: int, A: torch.Tensor, adaptive: str | None = "init",
                 with_res: bool = True) -> None:
        super().__init__()
        if adaptive not in (None, "init", "offset", "importance"):
            raise ValueError(f"gcn adaptive must be None, 'init', 'offset' or 'importance', got {adaptive!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_subsets = A.size(0)
        self.adaptive, self.with_res = adaptive, with_res
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        if adaptive == "init":
            self.A = nn.Parameter(A.clone())
        else:
            self.register_buffer("A", A.clone())
        if adaptive == "offset":
            self.PA = nn.Parameter(torch.empty_like(A).uniform_(-1e-6, 1e-6))
        elif adaptive == "importance":
            self.PA = nn.Parameter(torch.ones_like(A))
        self.conv = nn.Conv2d(in_channels, out_channels * self.num_subsets, 1)
        # mmaction2 uses an identity lambda when channels match: no `down` keys in the state_dict then.
        self.down = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
                     if with_res and in_channels != out_channels else None)

    def adjacency(self) -> torch.Tensor:
        if self.adaptive == "offset":
            return self.A + self.PA
        if self.adaptive == "importance":
            return self.A * self.PA
        return self.A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (n, c_in, t, v) in channels_last memory (see STGCN.forward): xt below is the contiguous
        # (n*t, v, c_in) tensor with no copy, and the 1x1 conv becomes a GEMM over its last dimension.
        # mmaction2 computes conv(x) to K*C_out channels, then aggregates over joints with A. Both are linear,
        # so we aggregate the C_in input channels first and apply the same weights as one (K*C_in -> C_out)
        # GEMM: same function (float rounding aside), with the joint aggregation on K*C_in channels instead of
        # K*C_out. The bias b_k becomes sum_k b_k * colsum(A_k), a bias per joint.
        n, c_in, t, v = x.shape
        k, c_out = self.num_subsets, self.out_channels
        A = self.adjacency()
        xt = x.permute(0, 2, 3, 1).reshape(n * t, v * c_in)
        bias = A.sum(1).t() @ self.conv.bias.view(k, c_out)  # (w, c_out)
        weight = self.conv.weight.view(k, c_out, c_in)
        if c_in <= DENSE_GCN_MAX_IN_CHANNELS:
            # Few input channels (the first block): fold A and the weights into one (v*c_in, w*c_out) matrix.
            # V/K times the multiply-adds, but one GEMM with no copies beats the copies around a 3-channel
            # aggregation (2x faster measured on the fight preset's first block).
            dense = torch.einsum("kvw,kdc->vcwd", A, weight).reshape(v * c_in, v * c_out)
            y = torch.addmm(bias.reshape(v * c_out), xt, dense)
        else:
            # One small (w*k, v) @ (v, c_in) GEMM per row, batched, with A broadcast (stride 0): its output
            # is (rows, w, k, c_in), the layout the GEMM below reads, so nothing is copied in forward or
            # backward. einsum would run one (k*w, v) @ (v, rows*c_in) GEMM and permute input and output
            # around it (two copies of the 3x larger output; 1.5-2x slower measured, forward + backward).
            a_rows = A.permute(2, 0, 1).reshape(v * k, v)
            w = weight.transpose(0, 1).reshape(c_out, k * c_in)
            # The chunked Function is for CPU training (cache-sized chunks); on a GPU its many small kernels
            # would cost more than the one large bmm saves, and under autocast the plain ops pick the dtypes.
            # Under torch.compile the plain ops below, which inductor fuses, are traced instead.
            if xt.is_cpu and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu") \
                    and not torch.compiler.is_compiling():
                y = AggregateLinear.apply(xt.view(n * t, v, c_in), a_rows, w, bias)
            else:
                xa = torch.bmm(a_rows.expand(n * t, v * k, v), xt.view(n * t, v, c_in)).view(n * t * v, k * c_in)
                y = F.linear(xa, w).view(n * t, v, c_out).add_(bias)
        y = y.view(n, t, v, c_out).permute(0, 3, 1, 2)
        fused = bn_act.wanted(y, self.bn.training)
        if not self.with_res or self.down is None:
            res = x if self.with_res else None
        elif fused and self.down[1].training:
            res = bn_act.batch_norm_act([conv_into_batch_stats(self.down[0], x)], [self.down[1]], relu=False)[0]
        else:
            res = self.down(x)
        if fused:
            return bn_act.batch_norm_act([y], [self.bn], residual=res)[0]
        y = self.bn(y)
        if res is not None:  # in place: BatchNorm's backward does not need its output
            y = y.add_(res)
        return self.act(y)


class UnitTCN(nn.Module):
    """Temporal conv (kernel x 1) + optional BN; used as the strided residual and inside mstcn branches."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 9, stride: int = 1,
                 dilation: int = 1, norm: bool = True) -> None:
        super().__init__()
        pad = (kernel_size + (kernel_size - 1) * (dilation - 1) - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=(kernel_size, 1), padding=(pad, 0),
                              stride=(stride, 1), dilation=(dilation, 1))
        self.bn = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # mmaction2 unit_tcn init_cfg: Kaiming(fan_out) convs with zero bias, BN weight 1 / bias 0.
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)
        if isinstance(self.bn, nn.BatchNorm2d):
            nn.init.ones_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.before_norm(x))

    def before_norm(self, x: torch.Tensor, batch_stats_next: bool | None = None) -> torch.Tensor:
        """forward up to its BatchNorm `bn` (STGCNBlock fuses that with the residual and ReLU). batch_stats_next:
        whether a BatchNorm with batch statistics takes the output next (default: this unit's own `bn`, training);
        then, in CPU training, the conv's bias gradient is skipped (conv_into_batch_stats)."""
        if batch_stats_next is None:
            batch_stats_next = isinstance(self.bn, nn.BatchNorm2d) and self.bn.training
        if batch_stats_next and bn_act.wanted(x, self.training):
            return conv_into_batch_stats(self.conv, x)
        return self.conv(x)


class MSTCN(nn.Module):
    """Multi-scale temporal conv: 4 dilated 3x1 branches, a max-pool branch and a 1x1 branch, concatenated,
    BN-ReLU-1x1 transform, BN. Channels split as mmaction2: branch 0 takes the remainder."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0,
                 ms_cfg=MSTCN_BRANCHES) -> None:
        super().__init__()
        num_branches = len(ms_cfg)
        mid = out_channels // num_branches
        rem = out_channels - mid * (num_branches - 1)
        branches = []
        for i, cfg in enumerate(ms_cfg):
            c = rem if i == 0 else mid
            if cfg == "1x1":
                branches.append(nn.Conv2d(in_channels, c, kernel_size=1, stride=(stride, 1)))
            elif cfg[0] == "max":
                branches.append(nn.Sequential(
                    nn.Conv2d(in_channels, c, kernel_size=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                    nn.MaxPool2d(kernel_size=(cfg[1], 1), stride=(stride, 1), padding=(1, 0))))
            else:
                kernel, dilation = cfg
                branches.append(nn.Sequential(
                    nn.Conv2d(in_channels, c, kernel_size=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                    UnitTCN(c, c, kernel_size=kernel, stride=stride, dilation=dilation, norm=False)))
        self.branches = nn.ModuleList(branches)
        tin = mid * (num_branches - 1) + rem
        self.transform = nn.Sequential(nn.BatchNorm2d(tin), nn.ReLU(inplace=True), nn.Conv2d(tin, out_channels, 1))
        self.bn = nn.BatchNorm2d(out_channels)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.before_norm(x)))

    def before_norm(self, x: torch.Tensor) -> torch.Tensor:
        """forward up to its last BatchNorm `bn` (STGCNBlock fuses that with the residual and ReLU)."""
        # mmaction2 runs each branch on x and concatenates. Here the branches that start with 1x1 conv -> BN ->
        # ReLU run the conv and the BN as one conv and one BatchNorm over all their channels: BN statistics are
        # per channel, so one BN over the concatenated channels is the branches' BNs (weights, batch statistics,
        # running statistics). One BN over ~100 channels instead of five over 10-23: the channels-last BN
        # kernels vectorise over channels, and over 10-23 of them (one or two vectors, mostly tail) the backward
        # took ~3x as long per element at 1 thread and ~10x at 2. The plain 1x1 branch (no BN) is its own conv
        # with its stride, so its strided rows are never computed and then dropped.
        #
        # In CPU training (bn_act.wanted) the BN-ReLUs are fused kernels: the heads' one writes each branch's part
        # as its own compact tensor, and the transform's reads the branch outputs without concatenating them.
        fused = bn_act.wanted(x, self.training and batch_norms_training(self))
        if not fused and os.environ.get(BRANCH_BN_SWITCH) == "1":
            return self.transform(torch.cat([branch(x) for branch in self.branches], dim=1))
        outs: list[torch.Tensor | None] = [None] * len(self.branches)
        heads = [i for i, b in enumerate(self.branches) if not isinstance(b, nn.Conv2d)]
        if heads:
            convs, bns = [self.branches[i][0] for i in heads], [self.branches[i][1] for i in heads]
            sizes = [c.out_channels for c in convs]
            weight, bias = torch.cat([c.weight for c in convs]), torch.cat([c.bias for c in convs])
            y = conv_into_batch_stats(convs[0], x, weight, bias) if fused else F.conv2d(x, weight, bias)
            if fused:
                parts = bn_act.batch_norm_act([y], bns, sizes)
            else:
                # x and y are channels_last, so a branch's channel slice is a strided view that its temporal conv
                # or max-pool would copy: it is compacted once. The ReLU runs in place on that copy, which the conv
                # / max-pool keeps for backward anyway (one activation less per block).
                parts = [F.relu_(part.contiguous(memory_format=torch.channels_last))
                         for part in _concat_batch_norm(bns, y).split(sizes, dim=1)]
            for i, part in zip(heads, parts):
                unit = self.branches[i][3]  # a temporal UnitTCN (no BN of its own) or the max-pool
                if fused and isinstance(unit, UnitTCN):  # its output goes into the transform's BatchNorm
                    outs[i] = unit.before_norm(part, batch_stats_next=True)
                else:
                    outs[i] = unit(part)
        for i, b in enumerate(self.branches):
            if isinstance(b, nn.Conv2d):
                outs[i] = conv_into_batch_stats(b, x) if fused else b(x)
        bn, _, conv = self.transform
        if fused:  # the transform conv's output goes into `bn` next (here or fused in STGCNBlock)
            h = bn_act.batch_norm_act(outs, [bn])[0]
            return conv_into_batch_stats(conv, h) if self.bn.training else conv(h)
        return self.transform(torch.cat(outs, dim=1))


def _concat_batch_norm(bns: list[nn.BatchNorm2d], y: torch.Tensor) -> torch.Tensor:
    """BatchNorm2d `bns` applied to their consecutive channel blocks of y, as one batch_norm call.

    Same as each module's forward on its block: the running statistics are updated in a concatenated copy
    and written back, and num_batches_tracked counts up, as nn.BatchNorm2d does in training.
    """
    first = bns[0]
    assert first.momentum is not None and all(
        b.eps == first.eps and b.momentum == first.momentum and b.training == first.training and b.track_running_stats
        for b in bns), "branch BatchNorms must share eps, a momentum and the mode"
    update = first.training
    mean = torch.cat([b.running_mean for b in bns])
    var = torch.cat([b.running_var for b in bns])
    out = F.batch_norm(y, mean, var, torch.cat([b.weight for b in bns]), torch.cat([b.bias for b in bns]),
                       training=update, momentum=first.momentum, eps=first.eps)
    if update:
        with torch.no_grad():
            sizes = [b.num_features for b in bns]
            for b, m, v in zip(bns, mean.split(sizes), var.split(sizes)):
                b.running_mean.copy_(m)
                b.running_var.copy_(v)
                b.num_batches_tracked.add_(1)
    return out
