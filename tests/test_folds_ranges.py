"""Folds and the ensemble's clip ids on a dataset that lists its split ranges read a split's clips through the ranges
(the part files a row group at a time), not `_index.parquet`, and give exactly what the index path gives."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import INDEX_FILE, SkeletonDataset, write_dataset
from recognizer_core.train.stgcn import data as tdata
from recognizer_core.tune.folds import write_fold_store

NAMES = ["NonFight", "Fight"]
COLS = ["clip_id", "label", "source_video", "split", "num_frames"]


def _dataset(root: Path) -> tuple[Path, Path, Path]:
    """(with ranges, the same without them (as written before they existed), with ranges and no index)."""
    clips = make_demo_clips("fight", 150, seed=11)
    for i, c in enumerate(clips):  # interleaved by video (5 clips each), as the builder's windows come
        c.split = ("train", "train", "val", "train", "test")[(i // 5) % 5]
        c.source_video = f"video{i // 5}"
    ranged = write_dataset(clips, root / "ranged", NAMES, rows_per_file=40, row_group_size=8)
    assert SkeletonDataset(ranged).split_ranges("train") is not None
    old = root / "old"
    shutil.copytree(ranged, old)
    info = json.loads((old / "_dataset.json").read_text())
    for f in info["files"]:
        f.pop("split_rows")
    info.pop("split_labels")
    (old / "_dataset.json").write_text(json.dumps(info))
    no_index = root / "no_index"
    shutil.copytree(ranged, no_index)
    (no_index / INDEX_FILE).unlink()  # a read of it would fail
    return ranged, old, no_index


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("folds"))


def test_split_columns_through_ranges_equal_the_index(datasets):
    ranged, old, no_index = datasets
    for split in ("train", "val", "test", "nope"):
        by_index = SkeletonDataset(old).split_columns(split, COLS)  # no ranges: the index path
        assert by_index.equals(SkeletonDataset(ranged).index(split, columns=COLS))
        assert SkeletonDataset(no_index).split_columns(split, COLS).equals(by_index)
    ds = SkeletonDataset(no_index)
    with pytest.raises(Exception, match=INDEX_FILE):  # the index really is gone
        ds.index("train")


def test_folds_without_the_index_are_the_index_paths_folds(datasets, tmp_path):
    ranged, old, no_index = datasets
    a = write_fold_store(old, tmp_path / "a", 3, seed=2)
    b = write_fold_store(no_index, tmp_path / "b", 3, seed=2)
    assert {k: v for k, v in a.items() if k != "path"} == {k: v for k, v in b.items() if k != "path"}
    map_a = json.loads((tmp_path / "a/_dataset.json").read_text())["split_map"]
    map_b = json.loads((tmp_path / "b/_dataset.json").read_text())["split_map"]
    assert map_a == map_b and list(map_a) == list(map_b)  # same folds, same ids, same order
    assert len(map_a["cv0_val"]) and len(map_a["test"]) == 30
    # the view of the index-less source reads its light columns from the linked part files
    view = SkeletonDataset(tmp_path / "b")
    assert not (tmp_path / "b" / INDEX_FILE).exists()
    assert sorted(view.index("cv1_val", columns=["clip_id"])["clip_id"].to_pylist()) == sorted(map_a["cv1_val"])


def test_split_info_labels_and_clip_ids_without_the_index(datasets):
    ranged, old, no_index = datasets
    for split in ("train", "val"):
        a, b = tdata.split_info(SkeletonDataset(no_index), split, 2), tdata.split_info(SkeletonDataset(old), split, 2)
        assert a._labels is None  # the ranges path: read lazily, from the split's row groups
        assert list(a.clip_ids) == list(b.clip_ids) and np.array_equal(a.labels, b.labels)


def test_a_fold_view_lists_its_splits_as_ranges_and_trains_without_the_index(datasets, tmp_path):
    ranged, old, no_index = datasets
    write_fold_store(ranged, tmp_path / "view", 3, seed=2)
    by_map = tmp_path / "by_map"  # the same view as written before: a split_map only, rows from the index
    shutil.copytree(tmp_path / "view", by_map)
    info = json.loads((by_map / "_dataset.json").read_text())
    info.pop("split_map_as_rows")
    (by_map / "_dataset.json").write_text(json.dumps(info))
    (tmp_path / "view" / INDEX_FILE).unlink()
    view, legacy = SkeletonDataset(tmp_path / "view"), SkeletonDataset(by_map)
    assert legacy.split_ranges("cv0_train") is None
    for split in ["trainval", "test"] + [f"cv{f}_{s}" for f in range(3) for s in ("train", "val")]:
        assert view.split_ranges(split) is not None
        a, b = tdata.split_info(view, split, 2), tdata.split_info(legacy, split, 2)
        assert np.array_equal(a.positions, b.positions) and a.label_counts == b.label_counts
        assert list(a.clip_ids) == list(b.clip_ids)
    from recognizer_core.skeleton.validate import validate_dataset  # membership by clip id, no index either
    assert validate_dataset(tmp_path / "view", ["cv1_val"], 2, use_cache=False)["num_clips"] == \
        len(info["split_map"]["cv1_val"])
