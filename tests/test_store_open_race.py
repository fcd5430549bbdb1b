"""A skeleton store folder opened while a rewrite commits, its listing overlapping the commit. A folder listing is
not atomic: an entry created or removed while it runs may be missing from it, so a listing can hold some of the
new part files but neither the write's marker nor its new json; that subset opened as a smaller dataset with no
error (a stress run: 124 of 188 clips). Now the json and the marker are looked up after the listing: the dataset
opens through the json, or is refused as being written.

Deterministic: write_dataset runs in a thread, halted before chosen renames (os.replace); the reader's filesystem
lists a folder as the entries present both when the listing starts and when it ends, the writer moving on in
between (the stale view a non-atomic listing can return)."""
from __future__ import annotations

import os
import threading
from typing import Callable

import numpy as np
import pyarrow.fs as pafs
import pytest

from recognizer_core.skeleton import store
from recognizer_core.skeleton.clip import SkeletonClip, SkeletonDataError
from recognizer_core.skeleton.store import DATASET_JSON, SkeletonDataset, write_dataset

WRITING_MARKER = "_dataset.writing"  # the format's name (test_store_writes checks it is store_write's)
NAMES = ["a", "b"]
WAIT_S = 60  # only a guard against a hung test: every wait is on an event the other thread sets


def _clips(prefix: str, n: int) -> list[SkeletonClip]:
    kp, sc = np.full((1, 2, 17, 2), 10.0, np.float32), np.ones((1, 2, 17), np.float32)
    return [SkeletonClip(clip_id=f"{prefix}{i}", label=i % 2, keypoint=kp, keypoint_score=sc, img_shape=(100, 100),
                         total_frames=2, split="train" if i % 3 else "val") for i in range(n)]


class _HaltingWriter:
    """write_dataset of 12 'new' clips (3 part files) into `path` in a thread, halted before each os.replace whose
    target's name starts with one of `stops`, until `run_to` the next stop (or None: to the end)."""

    def __init__(self, path, stops: list[str], monkeypatch):
        self.stops, self.error = list(stops), None
        self.halted = {s: threading.Event() for s in stops}
        self.resumed = {s: threading.Event() for s in stops}
        real = os.replace

        def replace(a, b):
            name = os.path.basename(b)
            for s in self.stops:
                if name.startswith(s) and threading.current_thread() is self.thread:
                    self.halted[s].set()
                    assert self.resumed[s].wait(WAIT_S)
            real(a, b)
        monkeypatch.setattr(os, "replace", replace)
        self.thread = threading.Thread(target=self._write, args=(path,), daemon=True)
        self.at: str | None = None

    def _write(self, path) -> None:
        try:
            write_dataset(_clips("new", 12), path, NAMES, rows_per_file=4, overwrite=True, group_by_split=True)
        except BaseException as err:  # reported by run_to
            self.error = err

    def run_to(self, stop: str | None) -> None:
        if self.at is None and not self.thread.is_alive():
            self.thread.start()
        elif self.at is not None:
            self.resumed[self.at].set()
        self.at = stop
        if stop is None:
            self.thread.join(WAIT_S)
            assert not self.thread.is_alive() and self.error is None, self.error
        else:
            assert self.halted[stop].wait(WAIT_S), f"the write never reached {stop}"


class _StaleListing(pafs.FileSystemHandler):
    """The local filesystem, but a folder lists as the entries there both before and after `during()` runs; and
    `before_marker()` runs (once) when the marker is first looked up."""

    def __init__(self, during: Callable[[], None], before_marker: Callable[[], None] | None = None):
        self.fs, self.during, self.before_marker = pafs.LocalFileSystem(), during, before_marker

    def get_file_info_selector(self, selector):
        before = {i.path for i in self.fs.get_file_info(selector)}
        self.during()
        return [i for i in self.fs.get_file_info(selector) if i.path in before]

    def get_file_info(self, paths):
        if self.before_marker is not None and any(os.path.basename(p) == WRITING_MARKER for p in paths):
            hook, self.before_marker = self.before_marker, None
            hook()
        return self.fs.get_file_info(paths)

    def get_type_name(self):
        return "stale-listing"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def _read_only(self, *args):
        raise NotImplementedError("the reader writes nothing")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _read_only
    move = copy_file = open_output_stream = open_append_stream = _read_only


def _open_with(path, handler: _StaleListing, monkeypatch) -> SkeletonDataset:
    local = store.filesystem
    monkeypatch.setattr(store, "filesystem", lambda uri: (pafs.PyFileSystem(handler), local(uri)[1]))
    return SkeletonDataset(path)


def _assert_new(ds: SkeletonDataset) -> None:
    assert len(ds) == 12 and ds.label_names == NAMES and "files" in ds.info  # opened through the json
    assert sorted(c.clip_id for c in ds.read(np.arange(len(ds)))) == sorted(f"new{i}" for i in range(12))


def test_a_commit_ending_during_the_listing_opens_through_its_json(tmp_path, monkeypatch):
    path = tmp_path / "ds"
    write_dataset(_clips("old", 12), path, NAMES, rows_per_file=4, group_by_split=True)
    writer = _HaltingWriter(path, ["part-00001.parquet"], monkeypatch)
    writer.run_to("part-00001.parquet")  # committing: marker, no json, part-00000 renamed, 2 parts still staged
    try:
        # listed mid-commit, the commit ending meanwhile: only part-00000 was there throughout (before: 4 clips
        # of the 12 opened as the dataset, from the footers)
        ds = _open_with(path, _StaleListing(lambda: writer.run_to(None)), monkeypatch)
    finally:
        if writer.thread.is_alive():
            writer.run_to(None)
    _assert_new(ds)


@pytest.mark.parametrize("commit_ends", [False, True], ids=["still-committing", "ends-before-the-marker-lookup"])
def test_a_listing_that_missed_the_marker_refuses_or_opens_through_the_json(tmp_path, monkeypatch, commit_ends):
    path = tmp_path / "ds"  # a plain folder of 2 part files (8 clips), rewritten as a dataset of 3 (12 clips)
    write_dataset(_clips("old", 8), path, NAMES, rows_per_file=4, group_by_split=True)
    (path / DATASET_JSON).unlink()
    first, last = ".part-00001.parquet.", DATASET_JSON  # staging the 2nd part; the commit's json rename
    writer = _HaltingWriter(path, [first, last], monkeypatch)
    writer.run_to(first)
    # the listing starts before the commit (old part-00000/1, staged files) and ends at its last rename (marker,
    # the new parts, no json yet): part-00000 and part-00001 were there throughout, the marker was not (before:
    # 8 of the 12 new clips opened as the dataset)
    handler = _StaleListing(lambda: writer.run_to(last), (lambda: writer.run_to(None)) if commit_ends else None)
    try:
        if commit_ends:  # the json's first lookup finds none, the marker is gone by its lookup: the json's second
            _assert_new(_open_with(path, handler, monkeypatch))
        else:
            with pytest.raises(SkeletonDataError, match=f"^{path}: no {DATASET_JSON} but {WRITING_MARKER} of a "
                                                        "write: the dataset is being written, or a write was "
                                                        r"interrupted \(write it again\)$"):
                _open_with(path, handler, monkeypatch)
    finally:
        if writer.thread.is_alive():
            writer.run_to(None)
    monkeypatch.undo()
    _assert_new(SkeletonDataset(path))  # the write, completed, opens as itself
