"""Training input path: the sharded in-worker loader (what the job uses) vs a Ray Data pipeline.

Both read the same Parquet skeleton store (demo data, train split) and produce the fight preset's training
batches (`prepare_batch(train=True)`, bone features, clip_len 100, 4 persons):
- sharded loader: `load_shard` once (reads only this worker's rows), then `ShardBatches` through a torch
  DataLoader with `--loader-workers` processes, one epoch after another;
- Ray Data: `read_parquet` -> split filter -> `map_batches(prepare_batch)` -> `iter_torch_batches`, re-read and
  re-prepared every epoch (the streaming pattern of Ray Train + Ray Data).
The first epoch is warm-up; figures are medians of the others. Prints ONE JSON line.

    .venv/bin/python bench/bench_train_data.py [--clips 256] [--epochs 3] [--batch 32] [--loader-workers 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import machine, median, now, save_result  # noqa: E402
from recognizer_core.skeleton.demo_data import write_demo_dataset  # noqa: E402
from recognizer_core.skeleton.store import SkeletonDataset  # noqa: E402
from recognizer_core.skeleton.store_rows import clips_from_batch  # noqa: E402
from recognizer_core.skeleton.transforms import PipelineConfig, prepare_batch  # noqa: E402
from recognizer_core.train.stgcn import data as tdata  # noqa: E402
from recognizer_core.train.stgcn.config import DataConfig  # noqa: E402

PIPE = PipelineConfig(feats=["b"], clip_len=100, num_person=4)


def _ray_data_batch(batch, epoch_seed: int):
    clips = clips_from_batch(batch)
    rng = np.random.default_rng([epoch_seed, int(batch["position"][0]) if "position" in batch.column_names else 0])
    x, y = prepare_batch(clips, PIPE, train=True, rng=rng)
    return {"x": x.numpy(), "y": y.numpy()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    with tempfile.TemporaryDirectory() as tmp:
        path = write_demo_dataset("fight", Path(tmp) / "ds", num_clips=args.clips, seed=0)
        ds = SkeletonDataset(path)
        info = tdata.split_info(ds, "train", 2)
        n = len(info)

        t0 = time.perf_counter()
        clips, _ = tdata.load_shard(ds, tdata.shard_positions(info, 0, 1), DataConfig(), 2, 17, str(path))
        shard_load_s = time.perf_counter() - t0
        nb = tdata.num_batches_for(len(clips), args.batch)
        batches = tdata.ShardBatches(clips, nb, args.batch, PIPE, train=True, seed=0, rank=0)
        loader, sampler = tdata.make_loader(batches, args.loader_workers, 4, False)
        ours = []
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            seen = sum(x.shape[0] for x, _, _ in loader)
            ours.append(seen / (time.perf_counter() - t0))

        import ray

        ray.init(include_dashboard=False, log_to_driver=False)
        rd = []
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            pipe = (ray.data.read_parquet(ds.files)
                    .filter(expr="split == 'train'")
                    .map_batches(_ray_data_batch, batch_size=args.batch, batch_format="pyarrow",
                                 fn_kwargs={"epoch_seed": epoch}))
            seen = sum(b["x"].shape[0] for b in pipe.iter_torch_batches(batch_size=args.batch))
            rd.append(seen / (time.perf_counter() - t0))
        ray.shutdown()

    save_result({
        "bench": "train_input_path", "date": now(), "machine": machine(), "train_clips": n, "batch": args.batch,
        "clip_len": PIPE.clip_len, "num_person": PIPE.num_person, "loader_workers": args.loader_workers,
        "epochs": args.epochs, "sharded_loader_shard_load_s": round(shard_load_s, 3),
        "sharded_loader_samples_per_s": round(median(ours[1:] or ours), 1),
        "ray_data_samples_per_s": round(median(rd[1:] or rd), 1),
        "ratio_sharded_vs_ray_data": round(median(ours[1:] or ours) / median(rd[1:] or rd), 2),
    }, args.out)


if __name__ == "__main__":
    main()
