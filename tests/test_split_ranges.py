"""Split row ranges in `_dataset.json`: a training start takes its split's rows and label counts from the dataset's
metadata and never opens the per-clip `_index.parquet`; datasets without ranges still train through the index."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recognizer_core.config import load_config
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import INDEX_FILE, SkeletonDataset, write_dataset
from recognizer_core.train.stgcn import data as tdata
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.context import LocalContext
from recognizer_core.train.stgcn.loop import load_data

REPO = Path(__file__).resolve().parents[1]
NAMES = ["NonFight", "Fight"]


def _clips(n: int = 90):
    clips = make_demo_clips("fight", n, seed=3)
    for i, c in enumerate(clips):  # splits interleaved row by row, as build_dataset's windows come
        c.split = "val" if i % 6 == 0 else "test" if i % 6 == 3 else "train"
    return clips


def _without_ranges(src: Path, dst: Path) -> Path:
    """The same dataset as written before split ranges existed (files entries and json without them)."""
    shutil.copytree(src, dst)
    info = json.loads((dst / "_dataset.json").read_text())
    for f in info["files"]:
        f.pop("split_rows")
    info.pop("split_labels")
    (dst / "_dataset.json").write_text(json.dumps(info))
    return dst


@pytest.fixture(scope="module")
def grouped(tmp_path_factory) -> Path:
    return write_dataset(_clips(), tmp_path_factory.mktemp("r") / "ds", NAMES, rows_per_file=20, row_group_size=4,
                         group_by_split=True)


def test_grouped_rows_are_one_range_per_split_per_file(grouped):
    info = json.loads((grouped / "_dataset.json").read_text())
    for f in info["files"]:
        assert all(len(r) == 1 for r in f["split_rows"].values()), f
        assert {k: r[0][1] - r[0][0] for k, r in f["split_rows"].items()} == f["splits"]
    ds = SkeletonDataset(grouped)
    clips = _clips()
    for split in ("train", "val", "test"):
        by_index = ds.index(split, columns=["clip_id", "label"])
        assert ds.split_positions(split).tolist() == by_index["position"].to_pylist()
        # grouping is stable: a split's clips keep their input order
        assert by_index["clip_id"].to_pylist() == [c.clip_id for c in clips if c.split == split]
        labels = [c.label for c in clips if c.split == split]
        assert ds.split_label_counts(split) == {lb: labels.count(lb) for lb in set(labels)}
    assert ds.split_positions("nope").size == 0


def test_interleaved_files_get_ranges_only_while_few(tmp_path):
    small = SkeletonDataset(write_dataset(_clips(), tmp_path / "small", NAMES, rows_per_file=20))
    pos = small.split_positions("train")  # ungrouped: many short ranges, still exact
    assert pos is not None and pos.tolist() == small.index("train", columns=[])["position"].to_pylist()
    big = SkeletonDataset(write_dataset(_clips(120), tmp_path / "big", NAMES, rows_per_file=120))
    assert "split_rows" not in big.info["files"][0]  # 80 ranges in one file: over the cap (64), none listed
    assert big.split_positions("train") is None
    info = tdata.split_info(big, "train", 2)  # through the index
    assert info.positions.tolist() == big.index("train", columns=[])["position"].to_pylist()


def _first_batch(cfg, path: Path, tmp: Path):
    data = load_data(cfg, str(path), LocalContext(tmp / "ckpt"))
    data.train_sampler.set_epoch(0)
    x, y, valid = next(iter(data.train_loader))
    return data, x, y


def test_training_start_reads_no_index_and_matches_an_old_dataset(grouped, tmp_path):
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml",
                      ["pipeline.clip_len=8", "train.batch_size=4", "data.loader_workers=0"])
    old = _without_ranges(grouped, tmp_path / "old")
    no_index = tmp_path / "no_index"
    shutil.copytree(grouped, no_index)
    (no_index / INDEX_FILE).unlink()  # a start that opened it would fail

    data, x, y = _first_batch(cfg, no_index, tmp_path / "a")
    old_data, old_x, old_y = _first_batch(cfg, old, tmp_path / "b")  # no ranges: rows from the index
    assert data.counts == old_data.counts == (60, 0, 15, 0)
    assert data.num_batches == old_data.num_batches == 15
    assert torch.equal(x, old_x) and torch.equal(y, old_y)

    new, legacy = SkeletonDataset(no_index), SkeletonDataset(old)
    a, b = tdata.split_info(new, "val", 2), tdata.split_info(legacy, "val", 2)
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.blocks, b.blocks)
    assert a.label_counts == b.label_counts
    # per-clip labels and ids are read lazily, from the split's own row groups (the index is gone)
    assert list(a.labels) == list(b.labels) and list(a.clip_ids) == list(b.clip_ids)


def test_a_split_map_overrides_the_ranges(grouped, tmp_path):
    """A folds view copies its source's json (ranges included) and adds a split_map: membership is the map's."""
    view = tmp_path / "view"
    shutil.copytree(grouped, view)
    info = json.loads((view / "_dataset.json").read_text())
    train_ids = SkeletonDataset(grouped).index("train", columns=["clip_id"])["clip_id"].to_pylist()
    info["split_map"] = {"train": train_ids[:10], "cv0_val": train_ids[10:20]}
    (view / "_dataset.json").write_text(json.dumps(info))
    ds = SkeletonDataset(view)
    assert ds.split_positions("train") is None and ds.split_label_counts("train") is None
    assert len(tdata.split_info(ds, "train", 2)) == 10 and len(tdata.split_info(ds, "cv0_val", 2)) == 10
    from recognizer_core.skeleton.validate import validate_dataset  # membership by clip_id there too
    assert validate_dataset(view, ["cv0_val"], 2, use_cache=False)["num_clips"] == 10
    assert validate_dataset(view, ["train", "cv0_val"], 2, use_cache=False)["num_clips"] == 20


def test_demo_data_training_start_opens_no_index(tmp_path):
    """The built-in demo data (500 clips: 2 files, which used to hold too many interleaved ranges to list) lists one
    range per split per file, and a training start on it (the driver's split checks and validation pass, worker
    shards, first batch) works with `_index.parquet` gone."""
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml",
                      ["pipeline.clip_len=8", "train.batch_size=4", "data.loader_workers=0",
                       "data.demo_num_clips=500"])
    assert not cfg.data.path and not cfg.data.train_pkl  # the demo data
    demo = tdata.prepare_dataset(cfg.data, tmp_path / "datasets")
    info = json.loads((demo / "_dataset.json").read_text())
    assert len(info["files"]) == 2 and all(len(r) == 1 for f in info["files"] for r in f["split_rows"].values())
    no_index = tmp_path / "no_index"
    shutil.copytree(demo, no_index)
    (no_index / INDEX_FILE).unlink()
    ds = SkeletonDataset(no_index)
    assert len(tdata.split_info(ds, cfg.data.train_split, 2)) == 350  # the driver's preflight checks
    from recognizer_core.skeleton.validate import validate_dataset
    assert validate_dataset(no_index, ["train", "val", "test"], 2, use_cache=False)["num_clips"] == 500
    data, x, y = _first_batch(cfg, no_index, tmp_path / "run")
    ref, rx, ry = _first_batch(cfg, demo, tmp_path / "ref")
    assert data.counts == ref.counts == (350, 0, 75, 0) and torch.equal(x, rx) and torch.equal(y, ry)
