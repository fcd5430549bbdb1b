"""What a skeleton store folder holds when it is opened: its `_dataset.json`, or (a folder without one) the paths
of its part files, never a subset of a rewrite's part files.

A folder listing is not atomic: entries renamed, created or removed while it runs may be missing from it. A
rewrite committing during the listing (store_write: marker, json removed, old parts removed, staged parts renamed,
new json, marker removed) could list some of the new part files but neither its marker nor the new json, and
that subset opened as a smaller dataset with no error. A write keeps its json or its marker in the folder at
every instant, so after listing, the json and the marker are looked up directly: the json there -> the dataset
opens through it; the marker there -> it is being written (refused).
"""
from __future__ import annotations

import posixpath
from typing import Any, Callable

import pyarrow.fs as pafs

from .clip import SkeletonDataError
from .store_write import DATASET_JSON, WRITING_MARKER, refuse_write_in_progress


def read_text(fs: pafs.FileSystem, path: str) -> str | None:
    """The file's text; None when it is not there, or is removed between the lookup and the read (a commit)."""
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except FileNotFoundError:
        return None


def json_or_parts(fs: pafs.FileSystem, root: str, join: Callable[[str], str], dataset: Any) -> tuple[str | None,
                                                                                                   list[str]]:
    """(`_dataset.json`'s text, []) or, for a folder without one, (None, its part files' paths in name order).
    A folder being written, or whose write was interrupted, is refused (SkeletonDataError naming `dataset`)."""
    raw = read_text(fs, join(DATASET_JSON))
    if raw is not None:
        return raw, []
    names = sorted(posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(root))
                   if i.type == pafs.FileType.File)
    # json, marker, json again: a commit that ends between the first two lookups has its json in place for the
    # third (a single writer's next commit cannot start that soon: it writes all its part files first)
    for name in (DATASET_JSON, WRITING_MARKER, DATASET_JSON):
        if fs.get_file_info(join(name)).type != pafs.FileType.File:
            continue
        raw = read_text(fs, join(DATASET_JSON)) if name == DATASET_JSON else None
        if raw is None:  # the marker, or a json removed again since its lookup (the next write's commit began)
            refuse_write_in_progress(dataset, [WRITING_MARKER])
        return raw, []
    refuse_write_in_progress(dataset, names)  # a listed marker or staged files: staging, or an interrupted write
    parts = [join(n) for n in names if n.startswith("part-") and n.endswith(".parquet")]
    if not parts:
        raise SkeletonDataError(f"{dataset}: no {DATASET_JSON} and no part-*.parquet files")
    return None, parts
