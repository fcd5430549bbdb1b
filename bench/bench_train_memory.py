"""Peak memory of one training process: ours, ours with `with_cp`, and mmaction2 1.2.0, same step.

The fight preset (bench_train_step.MODEL_CFG: 4 blocks, base 64, inflate/down at block 2, 2 classes), fp32,
training steps (forward + cross entropy + backward + SGD/nesterov) on one batch of B x (M=4, T=100, V=17, C=3)
for every B in --batches. Every (variant, batch) runs in a FRESH process, so its peak RSS (ru_maxrss) is that
step's alone and not a previous, larger batch's high-water mark:

- `ours`: `build_recognizer(ModelConfig(...))` as imported from this tree;
- `ours_with_cp`: the same with `with_cp=True` (gradient checkpointing per block);
- `ours_eager_ops`: `ours` with eager PyTorch ops instead of our CPU kernels (models/cpu_kernels.py; before
  2026-12-03 `ours_eager_bn`, the BatchNorm kernels only);
- `ours_bf16_autocast`: `ours` under CPU bf16 autocast (`train.amp=bf16`), the activations kept in bf16 (since
  2026-12-03);
- `mmaction2`: mmaction2's `STGCN` + `GCNHead` (as bench/mmaction_worker.py builds them), in the side venv.

Each process reports its RSS after the model, optimizer and batch exist but before the first step
(`rss_before_mb`, what imports + weights + input take), the peak RSS after --steps steps (`peak_rss_mb`),
their difference (`step_peak_extra_mb`: activations, gradients and optimizer state) and the median step time.
Repeats alternate the variants (ours, ours_with_cp, ours_eager_ops, ours_bf16_autocast, mmaction2, ours, ...);
reported are the median and min-max over the repeats. Prints ONE JSON line; `--out` also appends it to a .jsonl file.

`--allocator` sets every process's malloc as in bench_train_step.py (`tcmalloc`: what scaling.cpu_malloc=auto
gives our CPU training workers); each process reports whether it ran under tcmalloc.

    .venv/bin/python bench/bench_train_memory.py [--batches 16,64] [--repeats 3] [--steps 3] [--threads 1] \
        [--allocator glibc|glibc-keep-freed|tcmalloc] [--out bench/results/train_memory.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also in the mmaction2 children: bench.common

from bench.common import ALLOCATORS, runs_tcmalloc  # noqa: E402

M, T, V, C = 4, 100, 17, 3
# ours_eager_ops: ours with eager PyTorch ops instead of our CPU kernels (models/cpu_kernels.py)
VARIANTS = ("ours", "ours_with_cp", "ours_eager_ops", "ours_bf16_autocast", "mmaction2")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _build_ours(with_cp: bool):
    from bench.bench_train_step import MODEL_CFG
    from recognizer_core.models.recognizer import ModelConfig, build_recognizer

    return build_recognizer(ModelConfig(**MODEL_CFG, with_cp=with_cp)), "recognizer_core"


def _build_mmaction2():
    import warnings

    warnings.filterwarnings("ignore")
    import mmaction
    import torch.nn as nn
    from mmaction.models import GCNHead, STGCN

    class Net(nn.Module):  # RecognizerGCN.loss without the data preprocessor: backbone -> head
        def __init__(self) -> None:
            super().__init__()
            self.backbone = STGCN(graph_cfg=dict(layout="coco", mode="spatial"), gcn_adaptive="init",
                                  gcn_with_res=True, tcn_type="mstcn", in_channels=C, base_channels=64,
                                  num_stages=4, inflate_stages=[2], down_stages=[2])
            self.cls_head = GCNHead(num_classes=2, in_channels=128, dropout=0.0)

        def forward(self, x):
            return self.cls_head(self.backbone(x))

    return Net(), f"mmaction2 {mmaction.__version__}"


def child(variant: str, batch: int, steps: int, threads: int) -> dict:
    """One fresh process: build, measure RSS, run `steps` training steps, measure the peak."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, impl = _build_mmaction2() if variant == "mmaction2" else _build_ours(variant == "ours_with_cp")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, M, T, V, C, generator=gen)
    x[1, -1] = 0  # one padded person, as the pipeline produces
    y = torch.randint(0, 2, (batch,), generator=gen)
    rss_before, peak_before = _rss_mb(), _peak_mb()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "ours_bf16_autocast"):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    malloc = "tcmalloc" if runs_tcmalloc(os.getpid()) else "glibc"
    return {"impl": impl, "torch": torch.__version__, "threads": torch.get_num_threads(), "malloc": malloc,
            "rss_before_mb": round(rss_before, 1), "peak_before_mb": round(peak_before, 1),
            "peak_rss_mb": round(_peak_mb(), 1), "step_s": round(statistics.median(times[1:] or times), 3),
            "first_step_s": round(times[0], 3), "loss": float(loss)}


def run_child(py: str, variant: str, batch: int, steps: int, threads: int) -> dict:
    cmd = [py, __file__, "--child", variant, "--batches", str(batch), "--steps", str(steps),
           "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")  # with the allocator's settings
    env["RECOGNIZER_CPU_KERNELS"] = "0" if variant == "ours_eager_ops" else "1"  # cpu_kernels.ENV_SWITCH
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT "):
            return json.loads(line[len("@@RESULT "):])
    raise RuntimeError(f"{variant} batch {batch} failed (rc {proc.returncode}): {proc.stderr[-2000:]}")


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 1024


def wait_for_memory(need_mb: float, timeout_s: float = 300) -> bool:
    """Wait until `need_mb` is available (other jobs share the box: a big batch must not push it into the OOM
    killer); False when it never was within timeout_s."""
    t0 = time.monotonic()
    while _available_mb() < need_mb:
        if time.monotonic() - t0 > timeout_s:
            return False
        time.sleep(5)
    return True


def estimate_mb(prev: list[dict], batch: int) -> float:
    """Peak RSS expected at `batch` from this variant's runs at a smaller batch (linear in the batch) + 1 GB."""
    prev = [r for r in prev if r["batch"] <= batch]
    if not prev:
        return 0.0
    r = max(prev, key=lambda r: r["batch"])
    return r["rss_before_mb"] + (r["peak_rss_mb"] - r["rss_before_mb"]) * batch / r["batch"] + 1024


def _stats(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 3 if max(xs) < 10 else 1), "min": min(xs), "max": max(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--repeats", type=int, default=3, help="alternated repeats (fresh processes each)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per process")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, same on every side")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--allocator", choices=ALLOCATORS, default="glibc", help="malloc of every process")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="also append the JSON line to this .jsonl file")
    args = ap.parse_args()
    if args.child:
        print("@@RESULT " + json.dumps(child(args.child, int(args.batches), args.steps, args.threads)), flush=True)
        return

    from bench.common import MMACTION_PY, machine, now, save_result, use_allocator

    allocator = use_allocator(args.allocator)  # the children inherit it

    variants = args.variants.split(",")
    note = None
    if "mmaction2" in variants and not MMACTION_PY.exists():
        variants.remove("mmaction2")
        note = f"{MMACTION_PY} missing: run bash bench/setup_mmaction2_venv.sh"
    batches = [int(b) for b in args.batches.split(",")]
    runs: dict = {(v, b): [] for v in variants for b in batches}
    skipped = []
    for rep in range(args.repeats):  # alternate, so every variant sees the same machine load
        for b in batches:
            for v in variants:
                need = estimate_mb([r for (v2, _), rs in runs.items() if v2 == v for r in rs], b)
                if not wait_for_memory(need):
                    skipped.append(f"rep {rep + 1} batch {b} {v}: {need:.0f} MB needed, "
                                   f"{_available_mb():.0f} MB available")
                    print(f"[train_memory] skipped {skipped[-1]}", file=sys.stderr, flush=True)
                    continue
                py = str(MMACTION_PY) if v == "mmaction2" else sys.executable
                r = dict(run_child(py, v, b, args.steps, args.threads), batch=b, rep=rep)
                if (r["malloc"] == "tcmalloc") != (args.allocator == "tcmalloc"):
                    raise SystemExit(f"{v} ran under {r['malloc']}, not {args.allocator}")
                runs[(v, b)].append(r)
                print(f"[train_memory] rep {rep + 1} batch {b} {v}: before {r['rss_before_mb']} MB, peak "
                      f"{r['peak_rss_mb']} MB, step {r['step_s']} s", file=sys.stderr, flush=True)
    settings = []
    for b in (b for b in batches if all(runs[(v, b)] for v in variants)):
        s: dict = {"batch": b}
        for v in variants:
            rs = runs[(v, b)]
            s[v] = {"impl": rs[0]["impl"], "runs": len(rs),
                    "rss_before_mb": _stats([r["rss_before_mb"] for r in rs]),
                    "peak_rss_mb": _stats([r["peak_rss_mb"] for r in rs]),
                    "step_peak_extra_mb": _stats([round(r["peak_rss_mb"] - r["rss_before_mb"], 1) for r in rs]),
                    "step_s": _stats([r["step_s"] for r in rs])}
        if "mmaction2" in variants:
            for v in (v for v in variants if v != "mmaction2"):
                mm_by_rep = {r["rep"]: r for r in runs[("mmaction2", b)]}
                pairs = [(o, mm_by_rep[o["rep"]]) for o in runs[(v, b)] if o["rep"] in mm_by_rep]
                if not pairs:
                    continue
                # paired per repeat: our peak / mmaction2's peak (< 1: ours uses less)
                s[f"{v}_peak_vs_mmaction2"] = _stats([round(o["peak_rss_mb"] / m["peak_rss_mb"], 3)
                                                      for o, m in pairs])
                s[f"{v}_extra_vs_mmaction2"] = _stats([
                    round((o["peak_rss_mb"] - o["rss_before_mb"]) / (m["peak_rss_mb"] - m["rss_before_mb"]), 3)
                    for o, m in pairs])
        settings.append(s)
    result = {"bench": "train_memory", "date": now(), "machine": machine(),
              "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
              "precision": "fp32 (ours_bf16_autocast: bf16 autocast)",
              "input": f"B x (M={M}, T={T}, V={V}, C={C})",
              "model": "fight preset: 4 stages, base 64, inflate/down [2], 2 classes",
              "threads": args.threads, "steps_per_process": args.steps, "repeats": args.repeats,
              "allocator": allocator,
              "measure": "ru_maxrss of a fresh process per (variant, batch); rss_before = RSS before the first step",
              "settings": settings, "skipped_for_memory": skipped}
    if note:
        result.update(mmaction2=None, note=note)
    save_result(result, args.out)


if __name__ == "__main__":
    main()
