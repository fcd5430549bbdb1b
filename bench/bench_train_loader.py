"""The training loader against a fast consumer: reading the next shard window ahead (the default) vs not.

What the GPU run of 2026-12-04 showed: at batch 128 the STGCN++ loop waited for its 4 loader processes 47% of
each epoch. Reading a window of clips from the store costs 4-7x preparing them (measured here too), and every
loader process reads its share of a window when it reaches it, all at once, so the consumer stalls at each window boundary. With
read-ahead a thread in each loader process reads the next window (the next epoch's first one at an epoch's end)
while the current one is served.

This bench runs the job's loader (StreamedShard -> ShardBatches -> make_loader, demo data, train split) and a
consumer that takes each batch and then sleeps as long as a training step at `--consume` samples/s would take
(the H200's bf16 step at batch 256 measured 2738 samples/s). Per repeat, each variant gets a fresh loader for
`--epochs` epochs; the first is start-up and is not timed. Variants alternate (off, on, off, on, ...). Reported:
samples/s, the share of the time spent waiting in next() (the GPU's idle share, were the consumer a GPU) and the
longest single wait, medians over repeats, and the paired ratio of samples/s (on / off) with its min-max. Also,
in this process, what a loader spends per clip reading a window against preparing it (`one_process_per_clip`),
and validating a clip (part of reading) with its value checks as reductions against the masks used before.

    .venv/bin/python bench/bench_train_loader.py [--clips 8192] [--batch 128] [--loader-workers 2]
        [--pipeline-device worker] [--consume 3000] [--epochs 3] [--repeats 5] [--out bench/results/train_loader.jsonl]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, median, now, ratio_stats, save_result  # noqa: E402
from recognizer_core.skeleton import clip as clip_mod  # noqa: E402
from recognizer_core.skeleton.demo_data import write_demo_dataset  # noqa: E402
from recognizer_core.skeleton.store import SkeletonDataset  # noqa: E402
from recognizer_core.skeleton.transforms import PipelineConfig, prepare_batch  # noqa: E402
from recognizer_core.skeleton.transforms_torch import gather_batch  # noqa: E402
from recognizer_core.train.stgcn import data as tdata  # noqa: E402
from recognizer_core.train.stgcn.config import DataConfig  # noqa: E402


def run_loader(clips, pipe: PipelineConfig, args, read_ahead: bool) -> dict:
    nb = tdata.num_batches_for(len(clips), args.batch)
    batches = tdata.ShardBatches(clips, nb, args.batch, pipe, train=True, seed=0, rank=0, read_ahead=read_ahead)
    loader, sampler = tdata.make_loader(batches, args.loader_workers, 4, False)
    step = args.batch / args.consume if args.consume > 0 else 0.0
    rates, waits, gaps = [], [], []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        n, wait, gap = 0, 0.0, 0.0
        t0 = time.perf_counter()
        it = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                _, y, _ = next(it)
            except StopIteration:
                break
            dt = time.perf_counter() - t
            wait, gap = wait + dt, max(gap, dt)
            n += len(y)
            time.sleep(step)  # the training step this batch would feed
        total = time.perf_counter() - t0
        if epoch:  # epoch 0 includes starting the loader processes
            rates.append(n / total)
            waits.append(wait / total)
            gaps.append(gap)
    del loader  # shuts its processes down before the next variant starts
    return {"samples_per_s": median(rates), "wait_frac": median(waits), "max_wait_s": max(gaps)}


def read_vs_prepare(clips, pipe: PipelineConfig, batch: int, repeats: int = 3) -> dict:
    """What one loader process spends per clip, in this process: reading a window from the store (one
    StreamedShard.load of its clips) against preparing them (the loader's part of the pipeline, batch by batch)."""
    import numpy as np

    sb = tdata.ShardBatches(clips, tdata.num_batches_for(len(clips), batch), batch, pipe, train=True, seed=0, rank=0)
    rows = sb.order(0)[0][:sb.window]
    prepare = gather_batch if pipe.device == "worker" else prepare_batch
    read_s, prep_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        window = clips.load(rows)
        read_s.append(time.perf_counter() - t0)
        got = [window[i] for i in rows.tolist()]
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for k in range(0, len(got), batch):
            prepare(got[k:k + batch], pipe, True, rng)
        prep_s.append(time.perf_counter() - t0)
    n = len(rows)
    # Validation, part of every read: the value checks by reductions (clip.values_ok) against the masks that every
    # clip built before 2026-12-04 21:20 UTC (values_ok switched off), alternated.
    got = [window[i] for i in rows.tolist()]
    val_s: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for fast in (True, False):
            with mock.patch.object(clip_mod, "values_ok", clip_mod.values_ok if fast else lambda *a, **k: False):
                t0 = time.perf_counter()
                for c in got:
                    c.validate("bench", num_classes=2, num_joints=17)
                val_s[fast].append(time.perf_counter() - t0)
    return {"clips": n, "read_ms_per_clip": round(1e3 * median(read_s) / n, 3),
            "prepare_ms_per_clip": round(1e3 * median(prep_s) / n, 3),
            "read_over_prepare": round(median(read_s) / median(prep_s), 2),
            "validate_ms_per_clip": round(1e3 * median(val_s[True]) / n, 3),
            "validate_with_masks_ms_per_clip": round(1e3 * median(val_s[False]) / n, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=8192, help="demo clips, all splits (70%% train)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--loader-workers", type=int, default=2)
    ap.add_argument("--pipeline-device", default="worker", choices=["cpu", "worker"])
    ap.add_argument("--consume", type=float, default=3000.0, help="consumer samples/s (0: no step, loader alone)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    pipe = PipelineConfig(feats=["b"], clip_len=100, num_person=4, device=args.pipeline_device)
    runs: dict[bool, list[dict]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_demo_dataset("fight", Path(tmp) / "ds", num_clips=args.clips, seed=0)
        ds = SkeletonDataset(path)
        info = tdata.split_info(ds, "train", 2)
        clips, _ = tdata.load_shard(ds, tdata.shard_positions(info, 0, 1), DataConfig(), 2, 17, str(path))
        cost = read_vs_prepare(clips, pipe, args.batch)
        for r in range(args.repeats):
            for read_ahead in (False, True):
                runs[read_ahead].append(run_loader(clips, pipe, args, read_ahead))
                print(r, "read_ahead" if read_ahead else "plain", runs[read_ahead][-1], file=sys.stderr, flush=True)
        window = tdata.ShardBatches(clips, 1, args.batch, pipe, train=True, seed=0, rank=0).window
    result = {"bench": "train_loader", "date": now(), "machine": machine(), "train_clips": len(clips),
              "window_clips": window, "batch": args.batch, "loader_workers": args.loader_workers,
              "pipeline_device": args.pipeline_device, "consumer_samples_per_s": args.consume,
              "epochs_timed": args.epochs - 1, "repeats": args.repeats, "one_process_per_clip": cost}
    for read_ahead, name in ((False, "plain"), (True, "read_ahead")):
        rs = runs[read_ahead]
        result[name] = {"samples_per_s": round(median([r["samples_per_s"] for r in rs]), 1),
                        "wait_frac": round(median([r["wait_frac"] for r in rs]), 3),
                        "max_wait_s": round(median([r["max_wait_s"] for r in rs]), 3)}
    # ratio_stats(ref, ours) is ref/ours per pair: seconds-like, so pass the rates' inverses
    result["ratio_read_ahead_vs_plain"] = ratio_stats([1 / r["samples_per_s"] for r in runs[False]],
                                                      [1 / r["samples_per_s"] for r in runs[True]])
    save_result(result, args.out)


if __name__ == "__main__":
    main()
