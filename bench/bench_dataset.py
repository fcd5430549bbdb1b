"""Dataset scale: open + split index + first training batch, peak memory, and the driver's validation pass at 1k,
50k and 500k clips.

Synthetic tiny clips (1 person, `--frames` frames, 17 joints: ~1.7 kB of keypoints each at 8 frames; `--persons 4
--frames 100` gives the ~80 kB clips of a real dataset, for the memory comparison at 1k/10k) written by
`write_dataset` (1024 rows a file, 64-row row groups, rows grouped by split per file, as build_dataset writes),
so disk and generation stay small while the number of files, row groups and rows is that of a real dataset of
that many clips. Each measurement runs in a fresh process (its peak RSS is that step's alone):
- `stream`: what a training worker does now: open, `split_info('train')` (`index_s`: the split's row ranges and
  label counts from `_dataset.json`, no index read, no per-clip array), `shard_positions` of rank 0 of 4
  (`shard4_rows_s`: whole row groups as ranges), `load_shard` of the whole split (ranges only), `ShardBatches`
  with the default window, first batch (its window's positions only), then `--batches` more (time to first
  batch, peak RSS);
- `stream_index`: the same on a copy whose `_dataset.json` has no split ranges (datasets written before them):
  `split_info` reads the split's rows from `_index.parquet` (one row per clip), as every start did before;
- `materialize`: the previous loader's cost, every clip of the shard read and validated into memory first;
- `legacy_open`: the same dataset opened as a dataset written before `_dataset.json` held row-group counts and
  `_index.parquet` existed (footers of every file, light columns from every file);
- validation: `validate_dataset` on train+val, first call and cached call (run first, as the driver does; the
  workers then find the all-zero clip list in its report instead of scanning).
With `--regroup`, instead: each size written the old way (splits interleaved row by row, no split ranges in
`_dataset.json`), then `regroup_by_split` of it into a new dataset (`regroup`: time, peak RSS above the base, row
groups before/after), and a training start on each (`stream` on the old one goes through the index, on the
regrouped one through the ranges).
Prints ONE JSON line.

    nice -n 5 .venv/bin/python bench/bench_dataset.py [--sizes 1000 50000 500000] [--out bench/results/dataset.jsonl]
    nice -n 5 .venv/bin/python bench/bench_dataset.py --regroup --sizes 50000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import git_commit, machine, now, save_result  # noqa: E402
from recognizer_core.skeleton.clip import SkeletonClip  # noqa: E402
from recognizer_core.train.stgcn.data import DEFAULT_BUFFER_CLIPS  # noqa: E402

BATCH = 16


def _clips(n: int, frames: int, persons: int):
    rng = np.random.default_rng(0)
    base_kp = (rng.random((64, persons, frames, 17, 2)) * [640, 480]).astype(np.float32)
    base_sc = (rng.random((64, persons, frames, 17)) * 0.9 + 0.1).astype(np.float32)
    for i in range(n):
        yield SkeletonClip(clip_id=f"clip_{i:07d}", label=i % 2, keypoint=base_kp[i % 64],
                           keypoint_score=base_sc[i % 64],
                           img_shape=(480, 640), total_frames=frames,
                           split="train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test"))


def _generate(path: Path, n: int, frames: int, persons: int, grouped: bool = True) -> float:
    from recognizer_core.skeleton.store import write_dataset

    t0 = time.perf_counter()
    write_dataset(_clips(n, frames, persons), path, ["a", "b"], rows_per_file=1024, row_group_size=64,
                  group_by_split=grouped)
    return time.perf_counter() - t0


def _legacy_copy(path: Path, out: Path, keep_index: bool = False) -> None:
    """The same part files (symlinked) with a `_dataset.json` of an older layout: without split ranges and label
    counts (keep_index: the index file and row-group counts stay), or also without those (the oldest)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    info = json.loads((path / "_dataset.json").read_text())
    for f in info["files"]:
        os.symlink(path / f["name"], out / f["name"])
        f.pop("split_rows", None)
        if not keep_index:
            f.pop("row_groups", None), f.pop("splits", None)
    info.pop("split_labels", None)
    if keep_index:
        os.symlink(path / info["index_file"], out / info["index_file"])
    else:
        info.pop("index_file", None)
    (out / "_dataset.json").write_text(json.dumps(info))


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec, so a child would report at least the
    # parent's RSS at fork time.
    return _status_mb("VmHWM")


def _child(mode: str, path: str, batches: int) -> dict:
    """One measurement in this (fresh) process."""
    if mode == "regroup":
        from recognizer_core.skeleton.store_regroup import regroup_by_split

        base, out_dir = _rss_mb(), Path(path).with_name(Path(path).name + "_regrouped")
        shutil.rmtree(out_dir, ignore_errors=True)
        t0 = time.perf_counter()
        summary = regroup_by_split(path, out_dir)
        return {"regroup_s": time.perf_counter() - t0, "regroup_peak_rss_above_base_mb": _peak_rss_mb() - base,
                "row_groups_before": summary["row_groups_before"], "row_groups_after": summary["row_groups_after"]}
    if mode == "validate":
        import pandas  # noqa: F401  (see below)
        from recognizer_core.skeleton.validate import validate_dataset

        base = _rss_mb()
        shutil.rmtree(Path(path) / "_validated", ignore_errors=True)
        t0 = time.perf_counter()
        validate_dataset(path, ["train", "val"], 2, progress=False)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert validate_dataset(path, ["train", "val"], 2)["cached"]
        return {"validate_s": first, "validate_cached_s": time.perf_counter() - t0,
                "validate_peak_rss_above_base_mb": _peak_rss_mb() - base}
    from recognizer_core.skeleton.store import SkeletonDataset
    from recognizer_core.skeleton.transforms import PipelineConfig
    from recognizer_core.train.stgcn import data as tdata
    from recognizer_core.train.stgcn.config import DataConfig

    import pandas  # noqa: F401  pyarrow imports it on first pa.array (0.5 s); a Ray worker has it loaded already

    out: dict = {"base_rss_mb": _rss_mb()}  # the interpreter with torch/pyarrow imported, before any data
    t0 = time.perf_counter()
    ds = SkeletonDataset(path)
    out["open_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    info = tdata.split_info(ds, "train", 2)
    out["index_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    quarter = tdata.shard_positions(info, 0, 4)  # rank 0's rows among 4 training workers
    out["shard4_rows_s"] = time.perf_counter() - t1
    out["shard4_ranges"], out["split_ranges"] = len(quarter.starts), len(info.ranges.starts)
    if mode != "legacy_open":
        pipe = PipelineConfig(feats=["j"], clip_len=8, num_person=1)
        t1 = time.perf_counter()
        shard, _ = tdata.load_shard(ds, tdata.shard_positions(info, 0, 1), DataConfig(), 2, 17, path)
        if mode == "materialize":  # the previous loader: the whole shard in memory before the first step
            shard = [c.validate(path, num_classes=2) for c in ds.read(shard.positions)]
        out["shard_s"] = time.perf_counter() - t1
        sb = tdata.ShardBatches(shard, tdata.num_batches_for(len(shard), BATCH), BATCH, pipe, train=True, seed=0,
                                rank=0)
        sb[(0, 0)]
        out["first_batch_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        for b in range(1, 1 + min(batches, sb.num_batches - 1)):
            sb[(0, b)]
        out["next_batches_per_s"] = min(batches, sb.num_batches - 1) / (time.perf_counter() - t1)
        out["resident_clips"] = sb.max_resident if isinstance(shard, tdata.StreamedShard) else len(shard)
    out["peak_rss_mb"] = _peak_rss_mb()
    out["peak_rss_above_base_mb"] = out["peak_rss_mb"] - out["base_rss_mb"]
    return out


def _run_child(mode: str, path: Path, batches: int) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", mode, str(path), "--batches", str(batches)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _repeated(mode: str, path: Path, batches: int, repeats: int) -> dict:
    """Median of `repeats` fresh processes, with [min, max] of each timing (the box is shared: expect spread)."""
    runs = [_run_child(mode, path, batches) for _ in range(repeats)]
    out = {}
    for k in runs[0]:
        vals = [r[k] for r in runs]
        out[k] = float(np.median(vals))
        if k.endswith("_s") or k.endswith("_per_s"):
            out[k + "_range"] = [min(vals), max(vals)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 50_000, 500_000])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--persons", type=int, default=1, help="4 with --frames 100: clips of a real dataset's size")
    ap.add_argument("--batches", type=int, default=20, help="batches timed after the first")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per measurement (median, range)")
    ap.add_argument("--materialize-max", type=int, default=50_000,
                    help="largest size to also run the whole-shard loader at")
    ap.add_argument("--work", default=None, help="folder for the datasets (default: a temp folder, removed)")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    ap.add_argument("--regroup", action="store_true", help="measure regrouping an interleaved dataset instead")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.batches)))
        return
    load_start = os.getloadavg()[0]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_dataset_"))
    results = {}
    try:
        for n in args.sizes if args.regroup else []:
            path = work / f"interleaved_{n}"
            row = {"generate_s": _generate(path, n, args.frames, args.persons, grouped=False)
                   if not (path / "_dataset.json").exists() else None}
            row["disk_mb"] = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20
            row["regroup"] = _repeated("regroup", path, 0, args.repeats)
            regrouped = path.with_name(path.name + "_regrouped")
            for name, p in (("old", path), ("regrouped", regrouped)):
                _run_child("validate", p, 0)  # the driver's report first, as in a real start
                row[f"stream_{name}"] = _repeated("stream", p, args.batches, args.repeats)
            results[str(n)] = json.loads(json.dumps(row), parse_float=lambda x: round(float(x), 4))
            print(f"# {n} clips: {json.dumps(results[str(n)])}", file=sys.stderr, flush=True)
        for n in [] if args.regroup else args.sizes:
            path = work / f"ds_{n}"
            fresh = not (path / "_dataset.json").exists()
            row: dict = {"generate_s": _generate(path, n, args.frames, args.persons) if fresh else None}
            row["files"] = len(list(path.glob("part-*.parquet")))
            row["disk_mb"] = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20
            # the driver's preflight runs first; workers then use its report
            row["validate"] = _repeated("validate", path, 0, args.repeats)
            row["stream"] = _repeated("stream", path, args.batches, args.repeats)
            by_index = work / f"by_index_{n}"
            _legacy_copy(path, by_index, keep_index=True)
            _run_child("validate", by_index, 0)  # its own validation report, as the driver would have made
            row["stream_index"] = _repeated("stream", by_index, args.batches, args.repeats)
            if n <= args.materialize_max:
                row["materialize"] = _repeated("materialize", path, args.batches, args.repeats)
            legacy = work / f"legacy_{n}"
            _legacy_copy(path, legacy)
            row["legacy_open"] = _repeated("legacy_open", legacy, 0, args.repeats)
            results[str(n)] = json.loads(json.dumps(row), parse_float=lambda x: round(float(x), 4))
            print(f"# {n} clips: {json.dumps(results[str(n)])}", file=sys.stderr, flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    save_result({"bench": "dataset_regroup" if args.regroup else "dataset", "date": now(), "commit": git_commit(),
                 "machine": machine(),
                 "load_avg_1m": os.getloadavg()[0], "load_avg_1m_start": load_start,
                 "repeats": args.repeats, "frames": args.frames, "persons": args.persons,
                 "batch": BATCH,
                 "buffer_clips": DEFAULT_BUFFER_CLIPS, "sizes": results}, args.out)


if __name__ == "__main__":
    main()
