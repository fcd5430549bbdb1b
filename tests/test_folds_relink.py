"""The folds view after its source dataset was rebuilt in place (labels fixed, videos re-extracted) and the experiment
resumed: writing the view again regenerates its `_dataset.json` from the new source, so its part files must be the
new source's too (the view kept links to the old files: the split_map listed the new clips, reads returned the old)."""
from __future__ import annotations

import os

import numpy as np

from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.store import SkeletonDataset, write_dataset
from recognizer_core.tune.folds import write_fold_store

SPLITS = ["train"] * 6 + ["val"] * 4 + ["test"] * 2


def _build(src, version: int, rows_per_file: int) -> None:
    kp, sc = np.full((1, 2, 17, 2), 10.0, np.float32), np.ones((1, 2, 17), np.float32)
    clips = [SkeletonClip(clip_id=f"v{version}_{i}", label=(i + version) % 2, keypoint=kp, keypoint_score=sc,
                          img_shape=(100, 100), total_frames=2, split=s, source_video=f"vid{i}")
             for i, s in enumerate(SPLITS)]
    write_dataset(clips, src, ["a", "b"], rows_per_file=rows_per_file, group_by_split=True, overwrite=True)


def _assert_reads_its_split_map(view, version: int) -> None:
    ds = SkeletonDataset(view)
    for split in ("cv0_train", "cv0_val", "cv1_train", "test"):
        read = [c.clip_id for c in ds.read(ds.split_positions(split))]
        assert sorted(read) == sorted(ds.split_map[split]) and all(c.startswith(f"v{version}_") for c in read)


def test_a_view_written_again_after_a_rebuild_reads_the_new_clips(tmp_path):
    src, view = tmp_path / "ds", tmp_path / "folds_k2_seed0"
    _build(src, 1, rows_per_file=6)
    write_fold_store(src, view, 2)
    _assert_reads_its_split_map(view, 1)
    _build(src, 2, rows_per_file=6)  # the same rows per file: the old links read the old clips without an error
    write_fold_store(src, view, 2)
    _assert_reads_its_split_map(view, 2)
    _build(src, 3, rows_per_file=12)  # one file now: the view's second file is the old source's
    write_fold_store(src, view, 2)
    _assert_reads_its_split_map(view, 3)
    assert sorted(p.name for p in view.glob("part-*")) == ["part-00000.parquet"]
    assert os.path.samefile(view / "part-00000.parquet", src / "part-00000.parquet")


def test_copies_are_kept_for_the_same_source_and_replaced_after_a_rebuild(tmp_path, monkeypatch):
    """No hard links (the view on another device): copies, never taken for the source's files after a rebuild."""
    def no_link(a, b):
        raise OSError("cross-device link")
    monkeypatch.setattr(os, "link", no_link)
    src, view = tmp_path / "ds", tmp_path / "view"
    _build(src, 1, rows_per_file=12)
    write_fold_store(src, view, 2)
    copy = (view / "part-00000.parquet").stat()
    write_fold_store(src, view, 2)  # the same source: the copy stays (no recopy of the whole dataset)
    assert (view / "part-00000.parquet").stat().st_ino == copy.st_ino
    _build(src, 2, rows_per_file=12)  # same size of file, maybe the same mtime second
    write_fold_store(src, view, 2)
    assert (view / "part-00000.parquet").stat().st_ino != copy.st_ino
    _assert_reads_its_split_map(view, 2)
    assert not [p for p in view.iterdir() if p.name.endswith(".tmp")]


def test_a_view_of_a_plain_folder_of_part_files_reads(tmp_path):
    """A dataset copied without its _dataset.json (documented to open) made into a folds view: the view's json has
    no write id, its linked files have one, and every read failed as 'the file was replaced'."""
    import shutil

    _build(tmp_path / "ds", 1, rows_per_file=6)
    (tmp_path / "plain").mkdir()
    for part in (tmp_path / "ds").glob("part-*.parquet"):
        shutil.copy(part, tmp_path / "plain" / part.name)
    write_fold_store(str(tmp_path / "plain"), str(tmp_path / "view"), 2)
    ds = SkeletonDataset(tmp_path / "view")
    assert all(c.startswith("v1_") for c in (c.clip_id for c in ds.read(ds.split_positions("cv0_train"))))
