"""A split and a training shard as row ranges: set arithmetic equal to the per-clip arrays, the window-at-a-time
epoch order equal to the materialised one, and a training start whose memory does not grow with the clip count."""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from recognizer_core.skeleton.clip import SkeletonDataError
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import SkeletonDataset, write_dataset
from recognizer_core.skeleton.store_ranges import RowRanges
from recognizer_core.skeleton.transforms import PipelineConfig
from recognizer_core.train.stgcn import data as tdata
from recognizer_core.train.stgcn.config import DataConfig
from recognizer_core.train.shard_order import BlockShuffle


def _bounds(rng, n_groups: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(rng.integers(1, 9, n_groups))]).astype(np.int64)


def test_row_ranges_are_the_position_sets():
    rng = np.random.default_rng(0)
    for trial in range(30):
        bounds = _bounds(rng, int(rng.integers(1, 40)))
        n = int(bounds[-1])
        pos = np.flatnonzero(rng.random(n) < rng.random())
        r = RowRanges.from_positions(rng.permutation(np.concatenate([pos, pos[:3]])), bounds)
        assert np.array_equal(r.positions(), pos) and np.array_equal(np.asarray(r), pos) and len(r) == len(pos)
        group = np.searchsorted(bounds, pos, side="right") - 1
        assert np.array_equal(np.repeat(r.groups, r.lengths()), group)  # each range inside its one row group
        assert np.all(group[np.searchsorted(pos, r.stops - 1)] == r.groups) and np.all(r.lengths() > 0)
        idx = rng.integers(0, max(len(pos), 1), 10) if len(pos) else np.zeros(0, np.int64)
        assert np.array_equal(r.take(idx), pos[idx])
        drop = rng.choice(n, size=min(n, 5), replace=False)
        rest, hit = r.without(drop)
        assert np.array_equal(rest.positions(), np.setdiff1d(pos, drop)) and np.array_equal(hit,
                                                                                            np.intersect1d(pos, drop))
        mask = rng.random(len(r.starts)) < 0.5
        assert np.array_equal(r.select(mask).positions(), pos[np.repeat(mask, r.lengths())])
        # ranges of any length (a file's split rows) cut at the row groups
        cut = RowRanges.cut([0, n // 2], [n // 3, n], bounds)
        want = np.r_[0:n // 3, n // 2:n]
        assert np.array_equal(cut.positions(), want) and np.array_equal(
            np.repeat(cut.groups, cut.lengths()), np.searchsorted(bounds, want, side="right") - 1)


def _materialised_order(sizes: np.ndarray, window: int, seed: int, epoch: int, rank: int) -> np.ndarray:
    """The block shuffle as the loader computed it before, over every clip of the shard at once."""
    blocks = np.repeat(np.arange(len(sizes)), sizes)
    perm = np.random.default_rng([seed, epoch, rank, 1]).permutation(int(blocks.max()) + 1)
    stream = np.argsort(np.argsort(perm)[blocks], kind="stable")
    for w, start in enumerate(range(0, len(stream), window)):
        part = stream[start:start + window]
        stream[start:start + window] = part[np.random.default_rng([seed, epoch, rank, 3, w]).permutation(len(part))]
    return stream


def test_window_at_a_time_order_equals_the_materialised_one():
    rng = np.random.default_rng(1)
    for trial in range(40):
        sizes = rng.integers(1, 70, int(rng.integers(1, 30)))
        window = int(rng.choice([1, 4, 12, 64, 5000]))
        shuffle = BlockShuffle(sizes, window, seed=7, rank=trial % 3)
        for epoch in (0, 4):
            want = _materialised_order(sizes, window, 7, epoch, trial % 3)
            places = rng.permutation(len(want))[:25]  # any places, any order (a resumed or other loader process)
            assert np.array_equal(shuffle.base(epoch, places), want[places])
            assert np.array_equal(shuffle.base(epoch, np.arange(len(want))), want)
        assert len(shuffle._windows) <= 2  # a bounded cache, however many windows were asked for


def _metadata_only_dataset(path: Path, files: int, rows: int, group: int) -> Path:
    """A `_dataset.json` describing files x rows clips (the part files themselves never written): the training
    start must take its rows from this metadata alone."""
    path.mkdir()
    train = rows * 4 // 5
    entries = [{"name": f"part-{i:05d}.parquet", "num_rows": rows, "row_groups": [group] * (rows // group),
                "splits": {"train": train, "val": rows - train},
                "split_rows": {"train": [[0, train]], "val": [[train, rows]]}} for i in range(files)]
    info = {"format": "recognizer.skeleton", "schema_version": 1, "label_names": ["a", "b"],
            "num_clips": files * rows, "files": entries, "index_file": "_index.parquet",
            "splits": {"train": files * train, "val": files * (rows - train)}, "metadata": {},
            "split_labels": {"train": {"0": files * train // 2, "1": files * train - files * train // 2},
                             "val": {"0": files * (rows - train)}}}
    (path / "_dataset.json").write_text(json.dumps(info))
    return path


def test_training_start_memory_does_not_grow_with_the_clips(tmp_path):
    """10M clips in 2000 files: open, split rows, a rank's shard and the first batch's positions stay within a few
    MB (one int64 per clip would be 80 MB) and never touch a data file or the index."""
    files, rows, group = 2000, 5120, 512
    path = _metadata_only_dataset(tmp_path / "big", files, rows, group)
    cfg = DataConfig(skip_empty_clips=False)
    tracemalloc.start()
    try:
        ds = SkeletonDataset(path)  # opening stats no listed file
        info = tdata.split_info(ds, "train", 2)
        shard, skipped = tdata.load_shard(ds, tdata.shard_positions(info, 1, 4), cfg, 2, 17, "t")
        batches = tdata.ShardBatches(shard, tdata.num_batches_for(len(shard), 16), 16,
                                     PipelineConfig(feats=["j"], clip_len=8, num_person=1), train=True, seed=0,
                                     rank=1)
        idx, valid = batches.indices(3, 0, 16)
        first = shard.ranges.take(idx)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(ds) == files * rows and len(info) == files * rows * 4 // 5 and not skipped
    assert len(shard) == len(info) // 4 and len(info.ranges.starts) == files * 8 and valid.all()
    assert peak < 16 * 2**20, f"training start allocated {peak / 2**20:.1f} MB"
    # the batch's rows are training rows of this rank's row groups (every 4th group from the second one)
    assert np.all(first % rows < rows * 4 // 5) and len(set(first.tolist())) == 16
    assert set((first // group).tolist()) <= set(np.unique(info.ranges.groups)[1::4].tolist())
    with pytest.raises(SkeletonDataError, match=r"_dataset.json: lists part-\d+\.parquet but the file is missing"):
        ds.read(first[:1])  # the missing file is named at its first read


def test_skipped_clips_are_named_without_the_index(tmp_path):
    clips = make_demo_clips("fight", 30, seed=2)
    for c in clips[4:7]:
        c.split = "train"
    for c in clips[4:6]:
        c.keypoint[:] = 0
        c.keypoint_score[:] = 0
    path = write_dataset(clips, tmp_path / "ds", ["NonFight", "Fight"], rows_per_file=10, row_group_size=4,
                         group_by_split=True)
    (path / "_index.parquet").unlink()
    ds = SkeletonDataset(path)
    info = tdata.split_info(ds, "train", 2)
    shard, skipped = tdata.load_shard(ds, info.ranges, DataConfig(), 2, 17, "t")  # scans the two columns
    assert skipped == [c.clip_id for c in clips[4:6]] and len(shard) == len(info) - 2
    assert clips[6].clip_id in [c.clip_id for c in shard.load(np.arange(len(shard))).values()]


def test_clip_ids_at_any_positions_in_their_order(tmp_path):
    clips = make_demo_clips("fight", 30, seed=3)
    path = write_dataset(clips, tmp_path / "ds", ["NonFight", "Fight"], rows_per_file=10, row_group_size=4,
                         group_by_split=True)
    ds = SkeletonDataset(path)
    by_position = ds.index(columns=["clip_id"])["clip_id"].to_pylist()
    pos = np.array([29, 0, 13, 13, 4, 27, 9, 0])  # across files and row groups, unordered, repeated
    (path / "_index.parquet").unlink()
    assert SkeletonDataset(path).clip_ids(pos) == [by_position[p] for p in pos]
    assert SkeletonDataset(path).clip_ids([]) == []
