"""STGCN++ training step: ours vs mmaction2 1.2.0's STGCN + GCNHead, fp32, paired and alternated.

The fight preset model (4 blocks, base 64, inflate/down at block 2, 3 input channels, 2 classes, 275,452
parameters), one training step = forward + cross entropy + backward + SGD(nesterov) step, on one batch of
B x (M=4, T=100, V=17, C=3). mmaction2 runs in its side venv (bench/README.md) with the same batch and the
same torch thread count. For every (batch, threads) setting the two alternate repeat by repeat
(ours, mmaction2, ours, ...), so each pair sees the same machine load; a repeat's ratio is
mmaction2 seconds / our seconds for that pair. Reported per setting: the median ratio and its min-max over
the repeats, by wall clock and by process CPU time (CPU time moves much less with other jobs' load).

Optional variants of our step, timed in the same alternation: `--eager-ops` (eager PyTorch ops instead of our
compiled CPU kernels, recognizer_core/models/cpu_kernels.py: the fused BatchNorm / add / ReLU, the GCN
aggregation and the skipped bias gradients that go with them; before 2026-12-03 `--eager-bn`, the BatchNorm
kernels only), `--bf16` (torch.autocast bfloat16, only where the CPU has native bf16; the BatchNorm kernels take
its bf16 activations since 2026-12-03 15:00 UTC, eager ops before; with `--eager-ops` also the bf16 step with every
kernel off) and `--compile [MODE]` (torch.compile, inductor, as `train.compile=MODE` runs it; the compile time is
reported; `reduce-overhead` replays CUDA graphs, variants named `..._compiled_reduce_overhead`). The JSON
line says whether the kernels were in use (`cpu_kernels`; `fused_bn` before).

Each setting also reports both sides' minor page faults per step. `--allocator` picks the malloc of both sides
(ours and mmaction2's worker): `glibc` (the default settings), `glibc-keep-freed` (glibc told to keep freed
memory, KEEP_FREED_MEMORY in bench/common.py) or `tcmalloc` (preloaded, what scaling.cpu_malloc=auto gives our
CPU training workers). With either of the last two neither side pays page faults after the first steps: the
ratio of the code alone. With glibc's defaults the side that allocates more also pays more faults.

Prints ONE JSON line with a `settings` list.

    .venv/bin/python bench/bench_train_step.py [--batches 16,64] [--threads 1,2] [--repeats 5] [--steps 2]
        [--eager-ops] [--bf16] [--compile [default|reduce-overhead|max-autotune]] [--device cpu|cuda] [--branch-bn]
        [--allocator glibc|glibc-keep-freed|tcmalloc] [--out bench/results/train_step.jsonl]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (ALLOCATORS, MMWorker, machine, median, minor_faults, now, ratio_stats,  # noqa: E402
                          runs_tcmalloc, save_result, use_allocator)
from recognizer_core.models import cpu_kernels  # noqa: E402
from recognizer_core.models.gcn_blocks import BRANCH_BN_SWITCH  # noqa: E402
from recognizer_core.models.recognizer import ModelConfig, build_recognizer  # noqa: E402

M, T, V, C = 4, 100, 17, 3
MODEL_CFG = dict(num_classes=2, in_channels=C, num_stages=4, base_channels=64, inflate_stages=[2],
                 down_stages=[2], dropout=0.0)


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class OurStep:
    """Our model + optimizer on one batch; `run(k)` times k training steps (wall and CPU seconds)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bf16: bool = False, compile: str | None = None,
                 eager_ops: bool = False, device: str = "cpu", branch_bn: bool = False) -> None:
        torch.manual_seed(0)
        self.eager_ops, self.device, self.branch_bn = eager_ops, torch.device(device), branch_bn
        self.model = build_recognizer(ModelConfig(**MODEL_CFG)).train().to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        self.net = torch.compile(self.model, mode=compile, dynamic=False) if compile else self.model
        self.x, self.y, self.bf16 = x.to(self.device), y.to(self.device), bf16

    def run(self, k: int) -> tuple[float, float]:
        os.environ[cpu_kernels.ENV_SWITCH] = "0" if self.eager_ops else "1"  # read at every forward
        os.environ[BRANCH_BN_SWITCH] = "1" if self.branch_bn else "0"
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(k):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.net(self.x)
            loss = F.cross_entropy(logits.float(), self.y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        sync()  # a GPU step is timed to its last kernel, not to its last launch
        return time.perf_counter() - t0, time.process_time() - c0


def sync() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def step_batch(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The timed batch: B x (M, T, V, C) random skeletons with one padded person, and labels."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, M, T, V, C, generator=gen)
    x[1, -1] = 0  # one padded person, as the pipeline produces
    return x, torch.randint(0, 2, (batch,), generator=gen)


def mmaction2_model(worker: MMWorker, data: Path, threads: int, device: str = "cpu") -> None:
    """Builds the same model and optimizer in the mmaction2 worker, on the batch saved at `data` (x, y)."""
    info = worker.call("model", data=str(data), threads=threads, device=device, num_classes=2, dropout=0.0, lr=0.1,
                       head_in_channels=ModelConfig(**MODEL_CFG).head_in_channels,
                       backbone=dict(in_channels=C, base_channels=64, num_stages=4, inflate_stages=[2],
                                     down_stages=[2]))
    assert info["threads"] == threads, info


def bench_setting(worker: MMWorker | None, tmp: Path, batch: int, threads: int, args) -> dict:
    torch.set_num_threads(threads)
    x, y = step_batch(batch)
    dev = args.device
    variants = {"ours": OurStep(x, y, device=dev)}
    if args.eager_ops:
        variants["ours_eager_ops"] = OurStep(x, y, eager_ops=True, device=dev)
    if args.branch_bn:  # mstcn's branches with their own BatchNorms (gcn_blocks.BRANCH_BN_SWITCH; eager path only)
        variants["ours_branch_bn"] = OurStep(x, y, device=dev, branch_bn=True, eager_ops=dev == "cpu")
    if args.bf16:
        variants["ours_bf16_autocast"] = OurStep(x, y, bf16=True, device=dev)
        if args.branch_bn:
            variants["ours_bf16_branch_bn"] = OurStep(x, y, bf16=True, device=dev, branch_bn=True,
                                                      eager_ops=dev == "cpu")
        if args.eager_ops:  # what the kernels add under autocast (bf16 activations through them since 2026-12-03)
            variants["ours_bf16_autocast_eager_ops"] = OurStep(x, y, bf16=True, eager_ops=True, device=dev)
    compile_s = {}
    if args.compile:
        tag = "" if args.compile == "default" else "_" + args.compile.replace("-", "_")
        for name, bf16 in ((f"ours_compiled{tag}", False), (f"ours_bf16_compiled{tag}", True))[:1 + args.bf16]:
            # the CPU kernels step aside while dynamo traces (cpu_kernels.enabled): inductor compiles the eager ops
            variants[name] = OurStep(x, y, compile=args.compile, bf16=bf16, device=dev)
            t0 = time.perf_counter()
            variants[name].run(1)  # first call compiles (forward and backward graphs)
            compile_s[name] = round(time.perf_counter() - t0, 1)
    # On a GPU mmaction2 gets autocast too (what its AmpOptimWrapper gives): bf16 against bf16.
    mm_bf16 = worker is not None and args.bf16 and dev != "cpu"
    out = {"batch": batch, "torch_threads": threads}
    if worker is not None:
        data = tmp / f"batch{batch}.npz"
        np.savez(data, x=x.numpy(), y=y.numpy())
        mmaction2_model(worker, data, threads, dev)
    # warm-up: oneDNN primitive creation; a heap that keeps freed memory grows over the first steps
    warm = 1 if args.allocator == "glibc" else 3
    if worker is not None:
        worker.call("train_steps", steps=warm)
        if mm_bf16:
            worker.call("train_steps", steps=warm, bf16=True)
    for v in variants.values():
        v.run(warm)
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    faults = {k: 0 for k in variants}
    mm_wall, mm_cpu, mm_faults, mm_bf16_wall = [], [], 0, []
    for _ in range(args.repeats):  # alternate, so both see the same machine load
        for name, v in variants.items():
            f0 = minor_faults()
            w, c = v.run(args.steps)
            faults[name] += minor_faults() - f0
            wall[name].append(w)
            cpu[name].append(c)
        if worker is not None:
            f0 = minor_faults(worker.proc.pid)
            r = worker.call("train_steps", steps=args.steps)
            mm_faults += minor_faults(worker.proc.pid) - f0
            mm_wall.append(r["seconds"])
            mm_cpu.append(r["cpu_seconds"])
            if mm_bf16:
                mm_bf16_wall.append(worker.call("train_steps", steps=args.steps, bf16=True)["seconds"])
    steps = args.repeats * args.steps
    for name in variants:
        out[f"{name}_samples_per_s"] = round(batch * args.steps / median(wall[name]), 2)
        out[f"{name}_page_faults_per_step"] = round(faults[name] / steps)
        if worker is not None:
            out[f"{name}_ratio_vs_mmaction2"] = ratio_stats(mm_wall, wall[name])
            out[f"{name}_cpu_ratio_vs_mmaction2"] = ratio_stats(mm_cpu, cpu[name])
        if mm_bf16 and "bf16" in name:
            out[f"{name}_ratio_vs_mmaction2_bf16_autocast"] = ratio_stats(mm_bf16_wall, wall[name])
    if compile_s:
        out["compile_seconds"] = compile_s
        from torch._dynamo.utils import counters
        out["cudagraph_skips"] = int(counters["inductor"]["cudagraph_skips"])  # > 0: graphs left uncaptured
    if worker is not None:
        out["mmaction2_samples_per_s"] = round(batch * args.steps / median(mm_wall), 2)
        out["mmaction2_page_faults_per_step"] = round(mm_faults / steps)
        if mm_bf16:
            out["mmaction2_bf16_autocast_samples_per_s"] = round(batch * args.steps / median(mm_bf16_wall), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=5, help="alternated repeats per setting (>= 5 for a ratio)")
    ap.add_argument("--steps", type=int, default=2, help="training steps per timed repeat")
    ap.add_argument("--eager-ops", action="store_true",
                    help="also our step with eager PyTorch ops instead of our CPU kernels (models/cpu_kernels.py)")
    ap.add_argument("--bf16", action="store_true", help="also our step under bf16 autocast (native-bf16 CPUs, GPUs; "
                                                        "on a GPU mmaction2's step under bf16 autocast too)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: both sides' models and batches on the GPU")
    ap.add_argument("--branch-bn", action="store_true",
                    help="also our step with each mstcn branch's own BatchNorm (the GPU A/B; on the CPU with eager ops)")
    ap.add_argument("--compile", nargs="?", const="default", default=None,
                    choices=["default", "reduce-overhead", "max-autotune"],
                    help="also our step under torch.compile (inductor) in this mode (default: default; "
                         "reduce-overhead replays CUDA graphs), as train.compile runs it")
    ap.add_argument("--allocator", choices=ALLOCATORS, default="glibc",
                    help="malloc of both sides; glibc-keep-freed and tcmalloc reuse freed memory, so neither side "
                         "pays page faults after the first steps and the ratio measures the code alone")
    ap.add_argument("--out", default=None, help="also append the JSON line to this .jsonl file")
    args = ap.parse_args()
    if args.bf16 and args.device == "cpu" and not cpu_has_bf16():
        print("note: no native bf16 on this CPU, --bf16 ignored", file=sys.stderr)
        args.bf16 = False
    allocator = use_allocator(args.allocator)  # before the mmaction2 worker starts: it inherits the setting

    result = {"bench": "train_step", "date": now(), "machine": machine(), "device": args.device, "precision": "fp32",
              "input": f"B x (M={M}, T={T}, V={V}, C={C})",
              "model": "fight preset: 4 stages, base 64, inflate/down [2], 2 classes",
              "num_parameters": sum(p.numel() for p in build_recognizer(ModelConfig(**MODEL_CFG)).parameters()),
              "repeats": args.repeats, "steps_per_repeat": args.steps,
              "allocator": allocator,
              "cpu_kernels": cpu_kernels.load() if args.device == "cpu" else "not used off the CPU",
              "loadavg_1_5_15_start": [round(x, 2) for x in os.getloadavg()], "settings": []}
    ok, why = MMWorker.available()
    worker = MMWorker() if ok else None
    if worker is None:
        result.update(mmaction2=None, note=why)
    else:
        result["mmaction2_version"] = worker.info.get("mmaction2")
        if args.allocator == "tcmalloc" and not runs_tcmalloc(worker.proc.pid):
            raise SystemExit("the mmaction2 worker did not load tcmalloc: the sides would not be comparable")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for batch in (int(b) for b in args.batches.split(",")):
                for threads in (int(t) for t in args.threads.split(",")):
                    try:
                        s = bench_setting(worker, Path(tmp), batch, threads, args)
                    except (BrokenPipeError, RuntimeError) as err:
                        if worker is None or worker.proc.poll() is None:
                            raise
                        # e.g. the kernel's OOM killer (a heap that keeps freed memory holds far more at batch
                        # 64): record it, keep the settings already measured, go on with a fresh worker
                        s = {"batch": batch, "torch_threads": threads,
                             "error": f"mmaction2 worker died (exit {worker.proc.returncode}): {err!r}"}
                        worker = MMWorker()
                    result["settings"].append(s)
                    print(s, file=sys.stderr, flush=True)
    finally:
        if worker is not None:
            worker.close()
    if worker is not None:
        meds = [s["ours_ratio_vs_mmaction2"]["median"] for s in result["settings"] if "error" not in s]
        result["ratio_vs_mmaction2_min_over_settings"] = min(meds)
        result["ratio_vs_mmaction2_max_over_settings"] = max(meds)
    result["loadavg_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]  # other jobs' load on the box
    save_result(result, args.out)


if __name__ == "__main__":
    main()
