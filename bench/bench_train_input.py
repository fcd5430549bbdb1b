"""Training-mode input pipeline: the torch path (pipeline.device=worker) vs the NumPy path vs mmaction2 1.2.0.

Same annotations (bench_pipeline.make_annotations: M 1..5, T 40..300), batches of `--batch`, train mode
(random frames; `--augment` adds rescale 0.8-1.2, shift 0.1, rotate 15 deg to ours: mmaction2 has no such
skeleton transforms, so its pipeline runs without them either way). Per repeat, alternating:
  - numpy:  transforms.prepare_batch(train=True) (the loader processes' work today);
  - torch:  transforms_torch.gather_batch (the loader's work with pipeline.device=worker) + batch_features on
            `--device` (cpu, or cuda with a synchronize), reported whole and split (gather alone = what the
            loader still does; features alone = what moves to the training device);
  - mmaction2: train-mode Compose (PreNormalize2D, GenSkeFeat, UniformSampleFrames, PoseDecode,
            FormatGCNInput), per sample with PoseDataset's deepcopy, in its side venv;
  - with --compile, also the torch path with the features compiled (transforms_torch.compiled_features, what
            train.compile runs): its features alone against the eager features, paired.
Ratios are paired per repeat (median, min-max). Prints ONE JSON line.

    .venv/bin/python bench/bench_train_input.py [--samples 256] [--batch 16] [--feats j,b,jm,bm] [--repeats 5]
        [--augment] [--compile] [--device cpu|cuda] [--threads 1] [--out bench/results/train_input.jsonl]
"""
from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_pipeline import make_annotations  # noqa: E402
from bench.common import MMWorker, machine, median, now, ratio_stats, save_result  # noqa: E402
from recognizer_core.skeleton.transforms import PipelineConfig, prepare_batch  # noqa: E402
from recognizer_core.skeleton.transforms_torch import batch_features, compiled_features, gather_batch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--feats", default="j,b,jm,bm", help="comma-separated streams")
    ap.add_argument("--clip-len", type=int, default=100)
    ap.add_argument("--num-person", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (loader processes run 1 each)")
    ap.add_argument("--compile", action="store_true",
                    help="also the torch path with its features compiled (compiled_features, as train.compile runs it)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    feats = args.feats.split(",")
    cfg = PipelineConfig(feats=feats, clip_len=args.clip_len, num_person=args.num_person)
    if args.augment:
        cfg = cfg.model_copy(update=dict(random_rescale=(0.8, 1.2), random_shift=0.1, random_rotate=15.0))
    anns = make_annotations(args.samples, seed=1)
    batches = [anns[i:i + args.batch] for i in range(0, len(anns), args.batch)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_numpy() -> float:
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for b in batches:
            prepare_batch(b, cfg, train=True, rng=rng)
        return time.perf_counter() - t0

    def run_torch(compute=None) -> tuple[float, float]:
        rng = np.random.default_rng(0)
        gather = 0.0
        t0 = time.perf_counter()
        for b in batches:
            g0 = time.perf_counter()
            raw, _ = gather_batch(b, cfg, train=True, rng=rng)
            gather += time.perf_counter() - g0
            batch_features(raw.to(device, non_blocking=True), cfg, compute)
        sync()
        return time.perf_counter() - t0, gather

    compiled = None
    if args.compile:
        compiled = compiled_features(cfg)
        c0 = time.perf_counter()
        run_torch(compiled)  # compiles (one graph; a last, smaller batch would add one)
        compile_s = time.perf_counter() - c0

    result = {"bench": "train_input", "date": now(), "machine": machine(), "device": str(device),
              "torch_threads": args.threads, "feats": feats, "clip_len": args.clip_len,
              "num_person": args.num_person, "batch": args.batch, "samples": len(anns), "augment": args.augment,
              "repeats": args.repeats}
    ok, why = MMWorker.available()
    worker = MMWorker() if ok else None
    t_np, t_torch, t_gather, t_mm, t_comp, t_comp_gather = [], [], [], [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if worker is not None:
                path = Path(tmp) / "anns.pkl"
                path.write_bytes(pickle.dumps(anns))
                worker.call("pipeline", data=str(path), test_mode=False, feats=feats, clip_len=args.clip_len,
                            num_clips=1, num_person=args.num_person)
                worker.call("run_pipeline")  # warm-up
            run_numpy(), run_torch()  # warm-up
            for _ in range(args.repeats):
                t_np.append(run_numpy())
                t, g = run_torch()
                t_torch.append(t)
                t_gather.append(g)
                if compiled is not None:
                    t, g = run_torch(compiled)
                    t_comp.append(t)
                    t_comp_gather.append(g)
                if worker is not None:
                    t_mm.append(worker.call("run_pipeline")["seconds"])
    finally:
        if worker is not None:
            worker.close()
    n = len(anns)
    t_feat = [t - g for t, g in zip(t_torch, t_gather)]
    result.update(numpy_samples_per_s=round(n / median(t_np), 1), torch_samples_per_s=round(n / median(t_torch), 1),
                  torch_gather_only_samples_per_s=round(n / median(t_gather), 1),
                  torch_features_only_samples_per_s=round(n / median(t_feat), 1),
                  ratio_torch_vs_numpy=ratio_stats(t_np, t_torch),
                  ratio_gather_only_vs_numpy=ratio_stats(t_np, t_gather))
    if compiled is not None:
        t_comp_feat = [t - g for t, g in zip(t_comp, t_comp_gather)]
        result.update(compile_seconds=round(compile_s, 1),
                      torch_compiled_samples_per_s=round(n / median(t_comp), 1),
                      torch_compiled_features_only_samples_per_s=round(n / median(t_comp_feat), 1),
                      ratio_compiled_features_vs_eager_features=ratio_stats(t_feat, t_comp_feat))
    if worker is not None:
        result.update(mmaction2_samples_per_s=round(n / median(t_mm), 1),
                      ratio_torch_vs_mmaction2=ratio_stats(t_mm, t_torch),
                      ratio_numpy_vs_mmaction2=ratio_stats(t_mm, t_np))
    else:
        result.update(mmaction2=None, note=why)
    save_result(result, args.out)


if __name__ == "__main__":
    main()
