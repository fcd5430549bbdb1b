"""Operations a GPU runs per STGCN++ training step: ours (merged mstcn BatchNorm; per-branch BatchNorms,
`RECOGNIZER_MSTCN_BRANCH_BN=1`) vs mmaction2 1.2.0, counted, not timed.

At small batches a GPU step is bound by launching its operations, not by their work (the H200 run of 2026-12-04:
ours 29 ms per step at batch 16, 39 ms at 64). This counts the aten operations one forward, one backward and one
SGD step dispatch, with torch's dispatch hook on the `meta` device: no data and no GPU, but the same code path a
GPU takes (our CPU kernels are not used off the CPU). Views (view, slice, expand, ...) are counted too, though most
launch nothing. Also one mstcn block alone (64 -> 64 channels), where the merged BatchNorm's copies are, and what
our training loop adds to each update outside the step counted here: the non-finite gradient guard.
mmaction2 is counted in its side venv (`bench/setup_mmaction2_venv.sh`) by this same script. Prints ONE JSON line.

    .venv/bin/python bench/count_step_ops.py [--out bench/results/step_ops.jsonl]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
BACKBONE = dict(in_channels=3, base_channels=64, num_stages=4, inflate_stages=[2], down_stages=[2])


class Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def build(side: str):
    """(model taking (N, M, T, V, C), one mstcn block) of `side`, in training mode, on the meta device."""
    if side == "ours":
        from recognizer_core.models.gcn_blocks import MSTCN
        from recognizer_core.models.recognizer import ModelConfig, build_recognizer

        model = build_recognizer(ModelConfig(num_classes=2, dropout=0.0, **BACKBONE))
        block = MSTCN(64, 64)
    else:
        from mmengine.registry import init_default_scope

        init_default_scope("mmaction")
        from mmaction.models import GCNHead, STGCN
        from mmaction.models.utils.gcn_utils import mstcn

        backbone = STGCN(graph_cfg=dict(layout="coco", mode="spatial"), gcn_adaptive="init", gcn_with_res=True,
                         tcn_type="mstcn", **BACKBONE)
        model = torch.nn.Sequential(backbone, GCNHead(num_classes=2, in_channels=128, dropout=0.0))
        block = mstcn(64, 64)
    return model.train().to("meta"), block.train().to("meta")


def count(side: str) -> dict:
    torch.manual_seed(0)
    model, block = build(side)
    x, y = torch.randn(2, 4, 100, 17, 3, device="meta"), torch.zeros(2, dtype=torch.long, device="meta")
    # foreach: what SGD uses on CUDA tensors by default (a few multi-tensor kernels, not one op per parameter)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=True)
    out = {}
    for step in range(2):  # the first step creates the optimizer's momentum buffers
        with Count() as fwd:
            logits = model(x)
        with Count() as bwd:
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with Count() as upd:
            opt.step()
        out = {"forward": sum(fwd.ops.values()), "backward": sum(bwd.ops.values()), "optimizer": sum(upd.ops.values())}
    out["step"] = out["forward"] + out["backward"] + out["optimizer"]
    if side == "ours":  # what the training loop adds to the update: the non-finite gradient guard (nonfinite.py)
        from recognizer_core.train.nonfinite import NonFiniteGuard

        # the norm comes from gradient clipping (multi-tensor kernels on a GPU), outside the count
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        with Count() as guard:   # a CPU's host check (a GPU's fused optimizer takes found_inf instead)
            NonFiniteGuard.grads_finite(model.parameters(), norm)
        out["loop_nonfinite_guard"] = sum(guard.ops.values())
        out["loop_nonfinite_guard_top_ops"] = guard.ops.most_common(3)
    xb = torch.randn(8, 64, 100, 17, device="meta")
    if side == "ours":
        xb = xb.contiguous(memory_format=torch.channels_last)  # as STGCN.forward hands it to its blocks
    xb.requires_grad_()
    with Count() as fwd:
        yb = block(xb)
    with Count() as bwd:
        yb.sum().backward()
    out["mstcn_block"] = sum(fwd.ops.values()) + sum(bwd.ops.values())
    out["mstcn_block_top_forward_ops"] = fwd.ops.most_common(6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=["ours", "mmaction2"], help=argparse.SUPPRESS)  # one side, as a subprocess
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.side:
        print(json.dumps(count(args.side)))
        return
    sys.path.insert(0, str(REPO))
    from bench.common import MMACTION_PY, MMWorker, now, save_result
    from recognizer_core.models.gcn_blocks import BRANCH_BN_SWITCH

    def side(python: str, which: str, env: dict | None = None) -> dict:
        run = subprocess.run([python, "-W", "ignore", __file__, "--side", which], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, check=True)
        return json.loads(run.stdout.strip().splitlines()[-1])

    result = {"bench": "step_ops", "date": now(), "device": "meta (the GPU code path)",
              "model": "fight preset, B=2 x (M=4, T=100, V=17, C=3), SGD nesterov",
              "ours": side(sys.executable, "ours", {BRANCH_BN_SWITCH: "0"}),
              "ours_branch_bn": side(sys.executable, "ours", {BRANCH_BN_SWITCH: "1"})}
    ok, why = MMWorker.available()
    result["mmaction2"] = side(str(MMACTION_PY), "mmaction2") if ok else None
    if not ok:
        result["note"] = why
    save_result(result, args.out)


if __name__ == "__main__":
    main()
