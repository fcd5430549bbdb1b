"""A dataset rewritten in place: a reader that opened it before (training reopens part files: at most _OPEN_FILES
stay open) errors instead of reading the new clips at the old positions, and a reader that opens it during the
rewrite, or after an interrupted one, errors instead of opening the part files present as a smaller dataset."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from recognizer_core.skeleton import store, store_write
from recognizer_core.skeleton.clip import SkeletonClip, SkeletonDataError
from recognizer_core.skeleton.store import DATASET_JSON, INDEX_FILE, SkeletonDataset, write_dataset

# the on-disk names (store_write's WRITE_ID, WRITE_ID_KEY, WRITING_MARKER), spelled out: they are the format
WRITE_ID, WRITE_ID_KEY, WRITING_MARKER = "write_id", b"recognizer.write_id", "_dataset.writing"
NAMES = ["a", "b"]
REWRITTEN = r"rewritten since it was opened \(part-00000.parquet is of another write\): open it again"
INTERRUPTED = "being written, or a write was interrupted"


def _clips(prefix: str, label: int, splits: list[str]) -> list[SkeletonClip]:
    kp, sc = np.full((1, 2, 17, 2), 10.0 + label, np.float32), np.ones((1, 2, 17), np.float32)
    return [SkeletonClip(clip_id=f"{prefix}{i}", label=label, keypoint=kp, keypoint_score=sc, img_shape=(100, 100),
                         total_frames=2, split=s) for i, s in enumerate(splits)]


def _old_then_new(path):
    """Write the 'old' dataset; return a function writing the 'new' one over it: the same rows per file, the splits
    swapped (old: train rows then val rows; new: val rows then train rows)."""
    write_dataset(_clips("old", 0, ["train"] * 4 + ["val"] * 4), path, NAMES, rows_per_file=4, group_by_split=True)
    return lambda: write_dataset(_clips("new", 1, ["val"] * 4 + ["train"] * 4), path, NAMES, rows_per_file=4,
                                 overwrite=True, group_by_split=True)


def test_a_handle_opened_before_a_rewrite_errors_instead_of_reading_other_clips(tmp_path):
    rewrite = _old_then_new(tmp_path / "ds")
    ds = SkeletonDataset(tmp_path / "ds")  # a training run has opened the dataset
    train = ds.split_positions("train")
    rewrite()
    with pytest.raises(SkeletonDataError, match=REWRITTEN):
        ds.read(train)  # before: the new file's first rows, 4 val clips, read as train
    with pytest.raises(SkeletonDataError, match="rewritten since it was opened"):
        ds.index()  # the index file is of the new write too
    again = SkeletonDataset(tmp_path / "ds")
    assert [(c.clip_id, c.split) for c in again.read(again.split_positions("train"))] == \
        [(f"new{i}", "train") for i in range(4, 8)]


def test_a_file_reopened_after_a_rewrite_errors(tmp_path, monkeypatch):
    """Files stay open up to _OPEN_FILES: a file read before the rewrite, closed to make room, then reopened."""
    monkeypatch.setattr(store, "_OPEN_FILES", 1)
    rewrite = _old_then_new(tmp_path / "ds")
    ds = SkeletonDataset(tmp_path / "ds")
    assert [c.clip_id for c in ds.read([0, 4])] == ["old0", "old4"]  # file 0 read, then closed for file 1
    rewrite()
    assert [c.clip_id for c in ds.read([5])] == ["old5"]  # still open (file 1): its old inode reads on
    with pytest.raises(SkeletonDataError, match=REWRITTEN):
        ds.read([1])


def test_a_file_replaced_alone_says_so_and_a_plain_folder_rewritten_errors(tmp_path):
    path = tmp_path / "ds"
    write_dataset(_clips("x", 0, ["train"] * 4), path, NAMES, rows_per_file=2)
    other = write_dataset(_clips("y", 1, ["train"] * 2), tmp_path / "other", NAMES)
    ds = SkeletonDataset(path)
    os.replace(other / "part-00000.parquet", path / "part-00001.parquet")  # same rows, of another write
    with pytest.raises(SkeletonDataError, match=r"part-00001.parquet: of write \w+ but _dataset.json lists write "
                                                 r"\w+: the file was replaced after the dataset was written"):
        ds.read([2])
    plain = tmp_path / "plain"  # a folder of part files without the json, opened from the footers
    write_dataset(_clips("p", 0, ["train"] * 2), plain, NAMES)
    (plain / DATASET_JSON).unlink()
    ds = SkeletonDataset(plain)
    write_dataset(_clips("q", 1, ["val"] * 2), plain, NAMES, overwrite=True)
    with pytest.raises(SkeletonDataError, match=REWRITTEN):
        ds.read([0])


def test_a_dataset_written_before_write_ids_still_reads(tmp_path):
    path = write_dataset(_clips("x", 0, ["train", "val"] * 3), tmp_path / "ds", NAMES, rows_per_file=4)
    for name in ["part-00000.parquet", "part-00001.parquet", INDEX_FILE]:
        table = pq.read_table(path / name)
        meta = dict(table.schema.metadata or {})
        assert meta.pop(WRITE_ID_KEY)
        pq.write_table(table.replace_schema_metadata(meta), path / name)
    info = json.loads((path / DATASET_JSON).read_text())
    del info[WRITE_ID]
    (path / DATASET_JSON).write_text(json.dumps(info))
    ds = SkeletonDataset(path)
    assert [c.clip_id for c in ds.read(range(6))] == [f"x{i}" for i in range(6)]
    assert ds.index("val")["clip_id"].to_pylist() == ["x1", "x3", "x5"]


def test_a_reader_during_or_after_an_interrupted_rewrite_refuses_the_folder(tmp_path, monkeypatch):
    path = tmp_path / "ds"
    rewrite = _old_then_new(path)
    real, seen = os.replace, []

    def replace_and_open(a, b):  # another process opens the folder at each rename of the write
        real(a, b)
        try:
            seen.append(len(SkeletonDataset(path)))
        except SkeletonDataError as err:
            seen.append(str(err))
    monkeypatch.setattr(store_write.os, "replace", replace_and_open)
    rewrite()
    # the two staged parts written (the old json and parts in place: the old 8 clips), then the commit's renames
    # of part-00000, part-00001 and the index: refused until the new json lands (then the new 8 clips)
    assert len(seen) == 6 and seen[:2] == [8, 8] and all(INTERRUPTED in str(s) for s in seen[2:5]) and seen[5] == 8

    def dying(a, b):
        if str(b).endswith("part-00001.parquet"):
            raise KeyboardInterrupt("killed during the commit")
        real(a, b)
    monkeypatch.setattr(store_write.os, "replace", dying)
    with pytest.raises(KeyboardInterrupt):
        rewrite()
    monkeypatch.setattr(store_write.os, "replace", real)
    with pytest.raises(SkeletonDataError, match=f"^{path}: no {DATASET_JSON} but {WRITING_MARKER} of a write: the "
                                                f"dataset is {INTERRUPTED} \\(write it again\\)$"):
        SkeletonDataset(path)  # before: the one part file renamed, 4 clips, opened as the dataset
    (path / WRITING_MARKER).unlink()
    with pytest.raises(SkeletonDataError, match=f"staged of a write: the dataset is {INTERRUPTED}"):
        SkeletonDataset(path)  # the staged files alone say so too
    rewrite()  # written again: the interrupted write's staged files are gone
    assert len(SkeletonDataset(path)) == 8
    assert sorted(p.name for p in path.iterdir()) == [DATASET_JSON, INDEX_FILE, "part-00000.parquet",
                                                     "part-00001.parquet"]


def test_the_format_names_are_the_writers():
    assert (store_write.WRITE_ID, store_write.WRITE_ID_KEY, store_write.WRITING_MARKER) == \
        (WRITE_ID, WRITE_ID_KEY, WRITING_MARKER)
