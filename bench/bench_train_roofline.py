"""Where our fp32 STGCN++ training step spends its time, against what this machine can do: a roofline of the step.

bench_train_step.py says how fast the step is next to mmaction2; this says how far it is from the hardware. For each
thread count, in one run:
- the machine's ceilings, measured here and now (a VM's clock and memory bandwidth move from hour to hour): MKL's
  sgemm GFLOP/s on a 2048^3 product and on the step's most common GEMM shape, and the copy bandwidth (bytes read +
  written per second) on a tensor the size of one of the step's activations (28 MB);
- `--steps` of our step (the fight preset, fp32, our CPU kernels on, the same batch as bench_train_step.py) under
  torch.profiler with shapes. Every op's self time goes to one class:
    gemm_mkl: MKL products: our chunked GCN ops (recognizer::gcn_aggregate and its backward, timed whole, as their
      chunks run on every thread and only the calling thread's ops are traced; their few bias adds and sums ride
      along) and the aten mm / addmm / bmm outside them (the first block's dense GCN, the head);
    gemm_conv: oneDNN convolutions, forward and backward;
    (FLOPs of both counted from the recorded shapes)
    bn_passes: our fused BatchNorm (+ residual) (+ ReLU) kernels (recognizer::bn_*), memory-bound; their bandwidth
      is measured on one activation (54400 rows x 128 channels, the size of most of the step's) by counting the
      tensor passes each kernel makes;
    other: the rest of the traced wall time (max-pool, adds and sums, copies, the optimizer, autograd, Python);
- the step's 1x1 convolutions as oneDNN runs them and as plain MKL GEMMs, alternated (is oneDNN the limit, or the
  shapes?);
- the step untraced, for its time (`step_s`; the profiler's per-op overhead is not in it; the shares come from the
  traced steps).

`gemm_floor_s` is the step's GEMM FLOPs at the large-sgemm rate: no fp32 step that does these products can take less.
With the side venv (bench/README.md), mmaction2's step is timed alternately with ours, untraced, and
`mmaction2_s / gemm_floor_s` is the highest ratio over mmaction2 any fp32 step with these FLOPs could reach on this
machine. mmaction2 does the same products, but for one: its unit_gcn convolves to K x C_out channels before the
joint aggregation, we aggregate the C_in channels first, so in block 2 (64 -> 128 channels) its aggregation costs
twice ours, about 2% of the step's FLOPs; its floor would be that much higher.

    .venv/bin/python bench/bench_train_roofline.py [--batch 16] [--threads 1,2] [--steps 3] [--repeats 5] \
        [--allocator tcmalloc] [--out bench/results/train_roofline.jsonl]

Prints ONE JSON line with a `settings` list (one per thread count).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_train_step import OurStep, mmaction2_model, step_batch  # noqa: E402
from bench.common import (ALLOCATORS, MMWorker, machine, median, now, ratio_stats, runs_tcmalloc,  # noqa: E402
                          save_result, use_allocator)
from recognizer_core.models import cpu_kernels  # noqa: E402

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::mkldnn_convolution",
            "aten::convolution_backward")
GCN_OPS = ("recognizer::gcn_aggregate", "recognizer::gcn_aggregate_backward")
ACTIVATION = (54400, 128)  # rows (n*m*t*v) x channels of the 128-channel blocks at batch 16: 28 MB in fp32


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def gemm_flops(name: str, shapes: list, args: list) -> int:
    """Multiply-add FLOPs (2 per MAC) of one recorded GEMM-class op from its input shapes and scalar arguments."""
    if name == "aten::mm":
        (m, k), (_, n) = shapes[0], shapes[1]
        return 2 * m * k * n
    if name in ("aten::addmm", "aten::addmm_"):
        (m, k), (_, n) = shapes[1], shapes[2]
        return 2 * m * k * n
    if name == "aten::bmm":
        (b, m, k), (_, _, n) = shapes[0], shapes[1]
        return 2 * b * m * k * n
    if name == "aten::mkldnn_convolution":  # (input, weight, bias, padding, stride, dilation, groups)
        (n, _, *spatial), (o, cg, *kernel) = shapes[0], shapes[1]
        padding, stride, dilation = args[3], args[4], args[5]
        out = [(s + 2 * p - d * (k - 1) - 1) // st + 1
               for s, p, d, k, st in zip(spatial, padding, dilation, kernel, stride)]
        return 2 * n * o * _prod(out) * cg * _prod(kernel)
    if name == "aten::convolution_backward":  # (grad_out, input, weight, ..., output_mask)
        grad_out, weight, mask = shapes[0], shapes[2], args[10]
        per_grad = 2 * _prod(grad_out) * _prod(weight[1:])
        return per_grad * (int(bool(mask[0])) + int(bool(mask[1])))  # input and weight gradients; bias is a sum
    raise ValueError(name)


def gcn_flops(name: str, shapes: list, args: list) -> int:
    """FLOPs of our chunked GCN op (gcn_kernels.cpp): the joint aggregation (a bmm) and the weight GEMM forward;
    in backward the aggregation rebuilt, the weight and input GEMMs, the transposed aggregation and, when A
    learns, its gradient."""
    if name == "recognizer::gcn_aggregate":  # (xt, a_rows, w, bias, step)
        (rows, v, c_in), (vk, _), (c_out, kc) = shapes[0], shapes[1], shapes[2]
        return 2 * rows * vk * v * c_in + 2 * rows * v * kc * c_out
    (rows, v, c_in), (vk, _), (c_out, kc) = shapes[1], shapes[2], shapes[3]  # (gy, xt, a_rows, w, step, need_ga)
    aggregations = 3 if args[5] else 2
    return aggregations * 2 * rows * vk * v * c_in + 2 * (2 * rows * v * kc * c_out)


def _inside(event, names: tuple[str, ...]) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in names:
            return True
        parent = parent.cpu_parent
    return False


def _timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def ceilings(repeats: int) -> dict:
    """This machine's fp32 GEMM rate and copy bandwidth at the current thread count."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    sq = 2 * 2048 ** 3 / _timed(lambda: a @ b, repeats) / 1e9
    x, w = torch.randn(ACTIVATION[0], 384), torch.randn(384, 128)  # the GCN's weight GEMM (rows*v, k*c_in) @ W.T
    step_shape = 2 * x.shape[0] * 384 * 128 / _timed(lambda: x @ w, repeats) / 1e9
    src = torch.randn(*ACTIVATION)
    dst = torch.empty_like(src)
    copy = 2 * src.numel() * 4 / _timed(lambda: dst.copy_(src), repeats) / 1e9
    return {"sgemm_2048_gflops": round(sq, 1), "sgemm_step_shape_gflops": round(step_shape, 1),
            "copy_gbps": round(copy, 2)}


def bn_bandwidth(repeats: int) -> dict:
    """GB/s of our fused BatchNorm kernels on one activation, counting every tensor each kernel reads or writes:
    stats 1 (read x), apply with residual and ReLU 3 (x, residual in; y out), backward with the residual's gradient
    7 (dy, x, y in and the masked gradient out; then that gradient and x in, dx out)."""
    ops = torch.ops.recognizer
    rows, c = ACTIVATION
    x, res, g = torch.randn(rows, c), torch.randn(rows, c), torch.randn(rows, c)
    mean, var = ops.bn_stats([x])
    invstd, weight = (var + 1e-5).rsqrt(), torch.ones(c)
    scale, shift = (weight.double() * invstd).float(), (-mean * invstd).float()
    y = ops.bn_apply([x], scale, shift, res, True, [c])[0]
    tensor_gb = x.numel() * 4 / 1e9
    passes = {"stats": (1, lambda: ops.bn_stats([x])),
              "apply": (3, lambda: ops.bn_apply([x], scale, shift, res, True, [c])),
              "backward": (7, lambda: ops.bn_backward([g], [x], y, mean, invstd, weight, scale, shift, True, True))}
    return {f"bn_{name}_gbps": round(n * tensor_gb / _timed(fn, repeats), 2) for name, (n, fn) in passes.items()}


def conv1x1_as_gemm(repeats: int) -> dict:
    """The step's 1x1 convolutions, forward + both backward products, as oneDNN runs them (channels_last) and as plain
    MKL GEMMs on the (rows, channels) matrices, alternated: oneDNN seconds / MKL seconds per pair, median (min-max).
    Above 1 would mean the products are left on the table by oneDNN, not by the shapes."""
    import torch.nn.functional as F

    def onednn(x, w, b, g):
        F.conv2d(x, w, b)
        torch.ops.aten.convolution_backward(g, x, w, [w.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                            [True, True, False])

    def mkl(x, w, b, g):
        xr, wr = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]), w.view(w.shape[0], -1)
        gr = g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])
        torch.addmm(b, xr, wr.t())
        torch.mm(gr, wr)
        torch.mm(gr.t(), xr)

    out = {}
    for c_in, c_out, t in ((128, 128, 50), (128, 107, 50), (64, 128, 100), (128, 21, 50)):
        x = torch.randn(64, c_in, t, 17).contiguous(memory_format=torch.channels_last)
        g = torch.randn(64, c_out, t, 17).contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(c_out, c_in, 1, 1), torch.randn(c_out)
        onednn(x, w, b, g), mkl(x, w, b, g)
        a_s, m_s = [], []
        for _ in range(repeats):
            for fn, times in ((onednn, a_s), (mkl, m_s)):
                t0 = time.perf_counter()
                fn(x, w, b, g)
                times.append(time.perf_counter() - t0)
        out[f"{c_in}to{c_out}_t{t}"] = ratio_stats(a_s, m_s)
    return out


def profile_step(step: OurStep, steps: int) -> dict:
    """Self time per class over `steps` traced steps, and the GEMM class's FLOPs (convolutions and MKL apart)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        step.run(steps)
        traced = time.perf_counter() - t0
    seconds, flops = defaultdict(float), defaultdict(int)
    for e in prof.events():
        if e.name in GCN_OPS:  # timed whole: its chunks' GEMMs on other threads are not traced
            seconds["mkl"] += e.cpu_time_total / 1e6
            flops["mkl"] += gcn_flops(e.name, e.input_shapes, e.concrete_inputs)
        elif e.name in GEMM_OPS and not _inside(e, GCN_OPS):
            kind = "conv" if "convolution" in e.name else "mkl"
            seconds[kind] += e.self_cpu_time_total / 1e6
            flops[kind] += gemm_flops(e.name, e.input_shapes, e.concrete_inputs)
        elif e.name.startswith("recognizer::bn_"):
            seconds["bn_passes"] += e.self_cpu_time_total / 1e6
    # Time outside every recorded op (Python, autograd bookkeeping) counts as `other` too: the traced wall time.
    seconds["other"] = max(0.0, traced - seconds["conv"] - seconds["mkl"] - seconds["bn_passes"])
    return {"traced_s": traced / steps, "seconds": {k: v / steps for k, v in seconds.items()},
            "flops": {k: v / steps for k, v in flops.items()}}


def bench_threads(threads: int, worker: MMWorker | None, tmp: Path, args) -> dict:
    torch.set_num_threads(threads)
    x, y = step_batch(args.batch)
    ours = OurStep(x, y)
    ours.run(3)  # oneDNN primitives, the allocator's pools
    if worker is not None:
        data = tmp / "batch.npz"
        np.savez(data, x=x.numpy(), y=y.numpy())
        mmaction2_model(worker, data, threads)
        worker.call("train_steps", steps=3)
    machine_before = ceilings(args.repeats)
    prof = profile_step(ours, args.steps)
    ours_s, ours_cpu, mm_s, mm_cpu = [], [], [], []
    for _ in range(args.repeats):  # alternated, untraced
        wall, cpu = ours.run(1)
        ours_s.append(wall)
        ours_cpu.append(cpu)
        if worker is not None:
            r = worker.call("train_steps", steps=1)
            mm_s.append(r["seconds"])
            mm_cpu.append(r["cpu_seconds"])
    machine_after = ceilings(args.repeats)
    # the ceilings before and after the step's runs: their mean, and both kept to show how much they moved
    peak = {k: round((machine_before[k] + machine_after[k]) / 2, 2) for k in machine_before}
    secs, flops = prof["seconds"], prof["flops"]
    gemm_s, gemm_flops_total = secs["conv"] + secs["mkl"], flops["conv"] + flops["mkl"]
    traced = prof["traced_s"]
    floor_s = gemm_flops_total / (peak["sgemm_2048_gflops"] * 1e9)
    out = {
        "threads": threads, "step_s": round(median(ours_s), 3), "traced_step_s": round(traced, 3),
        "machine": peak, "machine_before": machine_before, "machine_after": machine_after,
        "share": {"gemm_conv": round(secs["conv"] / traced, 3), "gemm_mkl": round(secs["mkl"] / traced, 3),
                  "bn_passes": round(secs["bn_passes"] / traced, 3), "other": round(secs["other"] / traced, 3)},
        "gemm_gflop_per_step": round(gemm_flops_total / 1e9, 2),
        "gemm_gflops": {k: round(flops[k] / secs[k] / 1e9, 1) for k in ("conv", "mkl")},
        "gemm_efficiency_vs_sgemm": round(gemm_flops_total / gemm_s / 1e9 / peak["sgemm_2048_gflops"], 3),
        "gemm_floor_s": round(floor_s, 3), "step_over_floor": round(median(ours_s) / floor_s, 2),
        **bn_bandwidth(args.repeats),
        "conv1x1_onednn_over_mkl_gemm": conv1x1_as_gemm(args.repeats),
    }
    out["bn_backward_over_copy"] = round(out["bn_backward_gbps"] / peak["copy_gbps"], 3)
    if worker is not None:
        out["mmaction2_step_s"] = round(median(mm_s), 3)
        out["ratio_vs_mmaction2"] = ratio_stats(mm_s, ours_s)
        out["cpu_ratio_vs_mmaction2"] = ratio_stats(mm_cpu, ours_cpu)
        out["ceiling_ratio_vs_mmaction2"] = round(median(mm_s) / floor_s, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=3, help="traced steps")
    ap.add_argument("--repeats", type=int, default=5, help="untraced alternated steps, and runs per ceiling")
    ap.add_argument("--allocator", choices=ALLOCATORS, default="tcmalloc")
    ap.add_argument("--no-mmaction2", action="store_true", help="skip mmaction2's step even where its venv exists")
    ap.add_argument("--out", default=None, help="also append the JSON line to this .jsonl file")
    args = ap.parse_args()
    allocator = use_allocator(args.allocator)
    if not cpu_kernels.load():
        raise SystemExit(f"our CPU kernels did not load ({cpu_kernels.load_error()}): the roofline is of the fused step")
    result = {"bench": "train_roofline", "date": now(), "machine": machine(), "precision": "fp32",
              "batch": args.batch, "model": "fight preset: 4 stages, base 64, inflate/down [2], 2 classes",
              "allocator": allocator, "traced_steps": args.steps, "repeats": args.repeats,
              "loadavg_1_5_15_start": [round(x, 2) for x in os.getloadavg()], "settings": []}
    ok, why = MMWorker.available()
    worker = MMWorker() if ok and not args.no_mmaction2 else None
    if worker is None:
        result.update(mmaction2=None, note=why or "--no-mmaction2")
    elif args.allocator == "tcmalloc" and not runs_tcmalloc(worker.proc.pid):
        raise SystemExit("the mmaction2 worker did not load tcmalloc: the sides would not be comparable")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for threads in (int(t) for t in args.threads.split(",")):
                s = bench_threads(threads, worker, Path(tmp), args)
                result["settings"].append(s)
                print(s, file=sys.stderr, flush=True)
    finally:
        if worker is not None:
            worker.close()
    result["loadavg_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    save_result(result, args.out)


if __name__ == "__main__":
    main()
