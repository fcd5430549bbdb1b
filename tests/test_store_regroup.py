"""Regrouping an older dataset (splits interleaved, no ranges in `_dataset.json`) by split: a new dataset with the same
clips, columns and metadata that lists its split ranges, so training and folds read no `_index.parquet`, and whose
training and validation batches equal the old dataset's for the same seed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recognizer_core.config import load_config
from recognizer_core.skeleton.clip import SkeletonDataError
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import INDEX_FILE, SkeletonDataset, write_dataset
from recognizer_core.skeleton.store_regroup import regroup_by_split
from recognizer_core.skeleton.store_write import WRITE_ID, WRITE_ID_KEY
from recognizer_core.train.context import LocalContext
from recognizer_core.train.stgcn import data as tdata
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.stgcn.loop import load_data

REPO = Path(__file__).resolve().parents[1]
NAMES = ["NonFight", "Fight"]
CFG = ["pipeline.clip_len=8", "train.batch_size=4", "data.loader_workers=0", "train.seed=5"]


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Path:
    """240 clips, splits interleaved in runs of 1-3 rows (as windows of short videos come), 2 files of 120 rows in
    row groups of 16: 80 ranges per file, over the cap, so `_dataset.json` lists none (like a pre-ranges dataset)."""
    clips = make_demo_clips("fight", 240, seed=7)
    for i, c in enumerate(clips):
        c.split = "val" if i % 6 == 0 else "test" if i % 6 == 3 else "train"
    path = write_dataset(clips, tmp_path_factory.mktemp("old") / "ds", NAMES, rows_per_file=120, row_group_size=16,
                         metadata={"source": "unit test", "fps": 25})
    assert SkeletonDataset(path).split_ranges("train") is None
    return path


@pytest.fixture(scope="module")
def new(old, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("new") / "grouped"
    summary = regroup_by_split(old, out)
    assert summary["clips"] == 240 and summary["files"] == 2 and summary["row_groups_before"] == 16
    no_index = out.with_name("no_index")
    shutil.copytree(out, no_index)
    (no_index / INDEX_FILE).unlink()  # whatever reads it from here on fails
    return no_index


def _table(path: Path) -> pa.Table:
    ds = SkeletonDataset(path)
    return pa.concat_tables(pq.read_table(f) for f in ds.files).sort_by("clip_id")


def test_same_clips_columns_and_metadata_one_range_per_split(old, new):
    a, b = _table(old), _table(new)
    assert a.schema == b.schema and a.equals(b)  # every column of every clip, keypoints included
    src, out = SkeletonDataset(old), SkeletonDataset(new)
    assert out.label_names == src.label_names and out.metadata == src.metadata == {"source": "unit test", "fps": 25}
    # the footers keep their metadata (schema version, label names) under a new write id: the rows moved
    meta_out, meta_src = pq.read_schema(out.files[0]).metadata, pq.read_schema(src.files[0]).metadata
    assert meta_out.pop(WRITE_ID_KEY) == out.info[WRITE_ID].encode() != meta_src.pop(WRITE_ID_KEY)
    assert meta_out == meta_src
    assert out.splits() == src.splits() and len(out) == len(src)
    for f, old_f in zip(out.info["files"], src.info["files"]):
        assert f["num_rows"] == old_f["num_rows"] and f["splits"] == old_f["splits"]  # clips stay in their file
        assert all(len(r) == 1 for r in f["split_rows"].values())
    for split in ("train", "val", "test"):
        labels = src.index(split, columns=["label"])["label"].to_pylist()
        assert out.split_label_counts(split) == {lb: labels.count(lb) for lb in set(labels)}
        # a split's clips in the old order, read through the ranges (the index is gone)
        assert out.split_columns(split, ["clip_id"])["clip_id"].to_pylist() == \
            src.index(split, columns=["clip_id"])["clip_id"].to_pylist()
    regrouped_index = pq.read_table(Path(new).with_name("grouped") / INDEX_FILE)
    assert regrouped_index["clip_id"].to_pylist() == [x for f in out.files for x in pq.read_table(f)["clip_id"]
                                                      .to_pylist()]


def _epoch_ids(path: Path, cfg, rank: int, world: int, epoch: int) -> tuple[list[str], list[str]]:
    """(clip ids of one rank's training epoch, in batch order with wrap padding; its validation clip ids)."""
    ds = SkeletonDataset(path)
    info = tdata.split_info(ds, "train", 2)
    shard = tdata.StreamedShard(ds, tdata.shard_positions(info, rank, world), cfg.data, 2, 17, "t")
    batches = tdata.ShardBatches(shard, tdata.num_batches_for(len(shard), 4) + 1, 4, cfg.pipeline, train=True,
                                 seed=5, rank=rank, buffer_clips=8)  # windows of 8: several per row group
    idx, _ = batches.order(epoch)
    val = tdata.shard_positions(tdata.split_info(ds, "val", 2), rank, world)
    return ds.clip_ids(shard.ranges.take(idx)), ds.clip_ids(val.positions())


def test_training_batches_equal_the_old_datasets(old, new, tmp_path):
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml", CFG)
    for world in (1, 3):
        for rank in range(world):
            for epoch in (0, 2):
                assert _epoch_ids(new, cfg, rank, world, epoch) == _epoch_ids(old, cfg, rank, world, epoch)
    tensors = []
    for path, tmp in ((old, tmp_path / "a"), (new, tmp_path / "b")):  # the real start: old through the index
        data = load_data(cfg, str(path), LocalContext(tmp))
        data.train_sampler.set_epoch(1)
        tensors.append([next(iter(data.train_loader))[:2], next(iter(data.val_loader))[:2]])
    assert all(torch.equal(a, b) for pa_, pb in zip(*tensors) for a, b in zip(pa_, pb))


def test_bad_input_is_one_line_naming_the_path(old, new, tmp_path):
    with pytest.raises(SkeletonDataError, match=str(tmp_path / "nothing")):
        regroup_by_split(tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SkeletonDataError, match=str(tmp_path / "empty")):
        regroup_by_split(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(SkeletonDataError, match=f"{new}: already exists"):
        regroup_by_split(old, new)
    view = tmp_path / "view"
    shutil.copytree(old, view)
    info = json.loads((view / "_dataset.json").read_text())
    info["split_map"] = {"train": ["x"]}
    (view / "_dataset.json").write_text(json.dumps(info))
    with pytest.raises(SkeletonDataError, match=f"{view}: has a split_map"):
        regroup_by_split(view, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_build_dataset_cli_regroups(old, tmp_path, capsys):
    from rayjobs.build_dataset import main

    assert main(["--regroup", str(old), "--output", str(tmp_path / "g")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["path"] == str(tmp_path / "g") and SkeletonDataset(tmp_path / "g").split_ranges("val") is not None
    assert main(["--regroup", str(tmp_path / "missing"), "--output", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(tmp_path / "missing") in err[0]
