"""The skeleton store: a folder of Parquet files, one row per SkeletonClip, on a local path or any pyarrow.fs URI.

Layout: `<dir>/part-00000.parquet, part-00001.parquet, ...` plus `<dir>/_dataset.json` (label names,
schema version, split counts, per-file row and row-group counts, free-form metadata) and `<dir>/_index.parquet`
(the light columns of every clip). Keypoints are flat list<float32> columns with shape columns (num_person,
num_frames, num_joints) beside them, so a row becomes arrays by a zero-copy reshape. Opening reads only
`_dataset.json` (no part file is opened or even stat'ed: a missing one is named at its first read), and so does
taking a split's rows and label counts (`split_ranges` -> RowRanges, `split_label_counts`: per-file row ranges and
per-split label counts written with the dataset), so the training start costs O(files + row groups), not
O(clips); `_index.parquet` (one row per clip) is read only by `index`, for datasets without ranges (a split's
per-clip columns otherwise come from its row groups: `split_columns`).
Part files are opened (schema checked) when first read; at each (re)open their write id must be the one the
dataset was opened with (a rewrite since then errors, not reads other clips). Older datasets and plain folders of
part files are opened from the footers, their split rows from the index; a json-less folder with a write's marker
or staged files is refused (being written, or interrupted), and one whose json a commit put there while it was
being listed opens through that json (store_open.py). Writing is in store_write.py.
"""
from __future__ import annotations

import json
import os
import posixpath
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recognizer_core.storage import filesystem, is_remote, to_uri

from .clip import SkeletonClip, SkeletonDataError
from .store_member import SplitMember
from .store_open import json_or_parts, read_text
from .store_ranges import RowRanges
from .store_rows import (CLIP_SCHEMA, HEAVY_COLUMNS, LIGHT_COLUMNS, clip_from_row, clips_from_batch, clips_to_table,
                         int64_array)
from .store_write import (DATASET_JSON, INDEX_FILE, META_PREFIX, SCHEMA_VERSION, SPLIT_MAP_AS_ROWS, WRITE_ID,
                          check_file_schema, write_dataset, write_error, write_id_of)

__all__ = ["CLIP_SCHEMA", "DATASET_JSON", "HEAVY_COLUMNS", "INDEX_FILE", "LIGHT_COLUMNS", "SCHEMA_VERSION",
           "SPLIT_MAP_AS_ROWS",
           "SkeletonDataset", "check_file_schema", "clip_from_row", "clips_from_batch", "clips_to_table",
           "write_dataset"]

_OPEN_FILES = 32

# ---------------------------------------------------------------- reading

class SkeletonDataset:
    """A skeleton store opened for streaming reads. Opening reads `_dataset.json` only (footers for datasets
    written without row-group counts); the object pickles small (open files are not carried) for loader
    processes and Ray workers."""

    def __init__(self, path: str | Path):
        self.uri = to_uri(path)
        self.path: Any = self.uri if is_remote(self.uri) else Path(self.uri)
        self._fs, self._root = filesystem(self.uri)
        if self._fs.get_file_info(self._root).type != pafs.FileType.Directory:
            raise SkeletonDataError(f"{self.path}: skeleton dataset folder not found")
        info_path = self._join(DATASET_JSON)
        raw, parts = json_or_parts(self._fs, self._root, self._join, self.path)  # parts: a json-less folder's
        self._checked: set[int] = set()
        if raw is not None:
            try:
                self.info = json.loads(raw)
            except json.JSONDecodeError as err:
                raise SkeletonDataError(f"{self._show(info_path)}: not valid JSON ({err})") from None
            if int(self.info.get("schema_version", 0)) > SCHEMA_VERSION:
                raise SkeletonDataError(f"{self._show(info_path)}: schema version {self.info['schema_version']} is "
                                        f"newer than this code ({SCHEMA_VERSION})")
            entries = list(self.info.get("files", []))
            self._files = [self._join(f["name"]) for f in entries]
            # a listed file that is missing is named by its first read (_check), locally and remotely alike: a
            # stat per file here would make opening grow with the file count
        else:  # plain folder of part files (e.g. copied without the json): metadata from the footers
            self._files = parts
            self.info = {"schema_version": SCHEMA_VERSION, "label_names": [], "metadata": {}}
            entries = [{} for _ in self._files]
        # each file's write: the json's (None before write ids existed); a plain folder's footers', read below
        self._write_ids: list[str | None] = [self.info.get(WRITE_ID)] * len(self._files)
        self._pf: dict[int, pq.ParquetFile] = {}
        self._lock, self._lock_pid = None, None  # see _files_lock
        rows, groups = [], []
        for i, (f, entry) in enumerate(zip(self._files, entries)):
            if "row_groups" in entry:  # written by this code: no footer needed to open
                sizes = [int(n) for n in entry["row_groups"]]
            else:
                schema = self._check(i)
                self._write_ids[i] = self._write_ids[i] if raw is not None else write_id_of(schema)
                if raw is None and not self.info["label_names"]:
                    names = (schema.metadata or {}).get(META_PREFIX + b"label_names")
                    self.info["label_names"] = json.loads(names) or [] if names else []
                md = pq.read_metadata(f, filesystem=self._fs)
                sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
            rows.append(sum(sizes))
            groups.append(np.cumsum([0] + sizes))
        self._file_start = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self._group_start = groups

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_pf={}, _fs=None, _lock=None, _lock_pid=None)  # open files and filesystems are per process
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fs, self._root = filesystem(self.uri)

    def _join(self, name: str) -> str:
        return posixpath.join(self._root, name) if is_remote(self.uri) else str(Path(self._root) / name)

    def _show(self, path: str) -> str:
        return f"{self.uri.split('://')[0]}://{path}" if is_remote(self.uri) else path

    def _missing(self, i: int) -> SkeletonDataError:
        return SkeletonDataError(f"{self._show(self._join(DATASET_JSON))}: lists {posixpath.basename(self._files[i])}"
                                 " but the file is missing")

    def _check(self, i: int) -> pa.Schema:
        if self._fs.get_file_info(self._files[i]).type == pafs.FileType.NotFound:
            raise self._missing(i)
        schema = check_file_schema(self._files[i], self._fs)
        self._checked.add(i)
        return schema

    def _open(self, i: int) -> pq.ParquetFile:
        """Open a part file, checking its schema on the same footer read (once per file and process)."""
        try:
            pf = pq.ParquetFile(self._fs.open_input_file(self._files[i]))
            schema = pf.schema_arrow
        except FileNotFoundError:
            raise self._missing(i) from None
        except (OSError, pa.ArrowInvalid) as err:
            raise SkeletonDataError(f"{self.files[i]}: not a readable Parquet file ({err})") from None
        if i not in self._checked:
            check_file_schema(self.files[i], self._fs, schema)
            self._checked.add(i)
        self._check_write(self.files[i], schema, self._write_ids[i])
        return pf

    def _check_write(self, what: str, schema: pa.Schema, expected: str | None) -> None:
        """A (re)opened file must be of the write the dataset was opened at: after a rewrite (same row counts)
        the old json's positions hold other clips, of other splits."""
        if expected is not None and write_id_of(schema) != expected:   # None: a json without ids (older, a view)
            json_now = read_text(self._fs, self._join(DATASET_JSON))
            raise write_error(self.path, what, write_id_of(schema), expected, json_now)

    def __len__(self) -> int:
        return int(self._file_start[-1])

    def __repr__(self) -> str:
        return f"SkeletonDataset({str(self.path)!r}, {len(self)} clips, {len(self._files)} files)"

    @property
    def files(self) -> list[str]:
        return [self._show(f) for f in self._files]

    @property
    def label_names(self) -> list[str]:
        return list(self.info.get("label_names") or [])

    @property
    def metadata(self) -> dict:
        return dict(self.info.get("metadata") or {})

    @property
    def split_map(self) -> dict[str, list[str]] | None:
        return self.info.get("split_map")

    def _map_only(self) -> bool:
        """A split_map without row ranges written for its splits (an older folds view copied its source's ranges)."""
        return self.split_map is not None and not self.info.get(SPLIT_MAP_AS_ROWS)

    def row_group_bounds(self) -> list[np.ndarray]:
        """Per file, the start row of each row group and the file's row count (global positions)."""
        return [self._file_start[i] + g for i, g in enumerate(self._group_start)]

    def splits(self) -> dict[str, int]:
        """{split name: number of clips}."""
        if "splits" in self.info:
            return dict(self.info["splits"])
        return dict(Counter(self.index(columns=["split"])["split"].to_pylist()))

    def group_starts(self) -> np.ndarray:
        """Ascending global start row of every row group, with the row count last (RowRanges' `bounds`)."""
        return np.unique(np.concatenate(self.row_group_bounds()))

    def split_ranges(self, split: str) -> RowRanges | None:
        """The rows of `split` as row ranges (cut at row groups) from `_dataset.json`, without reading any data
        file or the index, in O(ranges + row groups) whatever the clip count; None when the dataset has no
        ranges (older, interleaved or split_map datasets)."""
        entries = self.info.get("files") or []
        # a split_map (clips in several splits) overrides the row ranges, unless they were written for its splits
        if self._map_only() or "split_labels" not in self.info or len(entries) != len(self._files) \
                or any("split_rows" not in f for f in entries):
            return None
        pairs = [(a + self._file_start[i], b + self._file_start[i])
                 for i, f in enumerate(entries) for a, b in f["split_rows"].get(split, [])]
        starts, stops = (np.array(c, dtype=np.int64) for c in zip(*pairs)) if pairs else (np.zeros(0, np.int64),) * 2
        return RowRanges.cut(starts, stops, self.group_starts())

    def split_positions(self, split: str) -> np.ndarray | None:
        """Ascending row positions of `split` (split_ranges materialised: O(clips), for tools and tests)."""
        ranges = self.split_ranges(split)
        return None if ranges is None else ranges.positions()

    def split_label_counts(self, split: str) -> dict[int, int] | None:
        """{label: clips} of `split` from `_dataset.json` (None when the dataset was written without them)."""
        counts = self.info.get("split_labels")
        if counts is None or self._map_only():
            return None
        return {int(k): int(v) for k, v in (counts.get(split) or {}).items()}

    def _files_lock(self) -> threading.RLock:
        """Held around each use of the open files: pyarrow's ParquetFile is not thread-safe (a loader's read-ahead
        thread and its main thread read unlocked failed, hung or crashed). Per process: a fork's may be held."""
        if self._lock_pid != os.getpid():
            self._lock, self._lock_pid = threading.RLock(), os.getpid()
        return self._lock

    def _file(self, i: int) -> pq.ParquetFile:
        with self._files_lock():
            if i in self._pf:
                self._pf[i] = self._pf.pop(i)  # most recently used last
                return self._pf[i]
            if len(self._pf) >= _OPEN_FILES:  # a bounded number of footers in memory, whatever the file count
                del self._pf[next(iter(self._pf))]
            pf = self._open(i)
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            if sum(sizes) != int(self._group_start[i][-1]):
                raise SkeletonDataError(f"{self.files[i]}: {sum(sizes)} rows but {DATASET_JSON} says "
                                        f"{int(self._group_start[i][-1])}: the file was replaced after the dataset "
                                        f"was written (rewrite it with write_dataset, or delete {DATASET_JSON} and "
                                        f"{INDEX_FILE})")
            self._group_start[i] = np.cumsum([0] + sizes)  # a file rewritten with other row groups still reads
            self._pf[i] = pf
            return pf

    def _row_group(self, i: int, g: int, columns: list[str] | None = None) -> pa.Table:
        """Row group `g` of part file `i`; only the read holds the lock (callers decode the table in parallel)."""
        try:
            with self._files_lock():
                return self._file(i).read_row_group(g, columns=columns)
        except (OSError, pa.ArrowInvalid) as err:
            raise SkeletonDataError(f"{self.files[i]}: row group {g} unreadable ({err})") from None

    def _light(self, cols: list[str]) -> pa.Table:
        index_file = self.info.get("index_file")
        if index_file:  # one small file for the whole dataset
            path = self._join(index_file)
            try:  # ParquetFile, not read_table: no pyarrow.dataset machinery (0.2 s) for one small file
                pf = pq.ParquetFile(self._fs.open_input_file(path))
                table = pf.read(columns=cols)
            except (OSError, pa.ArrowInvalid) as err:
                raise SkeletonDataError(f"{self._show(path)}: unreadable index file ({err})") from None
            self._check_write(self._show(path), pf.schema_arrow, self.info.get(WRITE_ID))
            if table.num_rows != len(self):
                raise SkeletonDataError(f"{self._show(path)}: {table.num_rows} rows but the dataset has {len(self)}")
            return table
        with self._files_lock():
            tables = [self._file(i).read(columns=cols) for i in range(len(self._files))]
        return pa.concat_tables(tables) if tables else pa.table({c: pa.array([], CLIP_SCHEMA.field(c).type)
                                                                for c in cols})

    def index(self, split: str | Sequence[str] | None = None, columns: Sequence[str] = LIGHT_COLUMNS) -> pa.Table:
        """Light columns of every clip (never the keypoints) plus `position` (the row number for `read`)."""
        cols = list(dict.fromkeys(list(columns) + (["clip_id", "split"] if split is not None else [])))
        bad = [c for c in cols if c not in LIGHT_COLUMNS]
        if bad:
            raise SkeletonDataError(f"{self.path}: unknown or heavy column(s) {bad}")
        table = self._light(cols)
        table = table.append_column("position", int64_array(np.arange(table.num_rows)))
        if split is not None:  # by the split column, or by clip_id for a split_map (clips in several splits)
            table = table.filter(pa.array(SplitMember(self.split_map, split)(table)))
        return table.select(list(columns) + ["position"])

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(file index, row group index, row inside the file) of each position."""
        pos = np.asarray(positions, dtype=np.int64)
        fidx = np.searchsorted(self._file_start, pos, side="right") - 1
        local = pos - self._file_start[fidx]
        gidx = np.empty_like(pos)
        for fi in np.unique(fidx):
            sel = fidx == fi
            gidx[sel] = np.searchsorted(self._group_start[fi], local[sel], side="right") - 1
        return fidx, gidx, local

    def read(self, positions: Sequence[int] | np.ndarray, copy: bool = False) -> list[SkeletonClip]:
        """Clips at the given row positions (in that order); reads only the row groups holding them, one at a
        time, so the transient memory is one row group beyond the clips returned."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= len(self)):
            raise IndexError(f"{self.path}: positions out of range [0, {len(self)})")
        out: list[SkeletonClip | None] = [None] * pos.size
        fidx = np.searchsorted(self._file_start, pos, side="right") - 1
        for fi in np.unique(fidx):
            sel = np.nonzero(fidx == fi)[0]
            local = pos[sel] - self._file_start[fi]
            self._file(int(fi))  # opened first: it may correct the row-group bounds
            gstart = self._group_start[fi]
            gidx = np.searchsorted(gstart, local, side="right") - 1
            for g in np.unique(gidx):
                in_g = np.nonzero(gidx == g)[0]
                table = self._row_group(int(fi), int(g))
                rows = local[in_g] - gstart[g]
                # Views into the row group, not an Arrow take (which copies list columns slowly); copies when
                # fewer than half its rows are wanted, so the rest of the group is not kept alive by them.
                clips = clips_from_batch(table, copy=copy or 2 * len(rows) < table.num_rows, source=self.files[fi],
                                         rows=range(int(gstart[g]), int(gstart[g + 1])), select=rows)
                for j, clip in zip(sel[in_g], clips):
                    out[j] = clip
        return out  # type: ignore[return-value]

    def read_columns(self, ranges: RowRanges, columns: Sequence[str] = LIGHT_COLUMNS) -> pa.Table:
        """`columns` of the rows in `ranges`, in store order, from the part files a row group at a time (each row
        group read once, only these columns; `_index.parquet` is not opened)."""
        cols = list(columns)
        bad = [c for c in cols if c not in CLIP_SCHEMA.names]
        if bad:
            raise SkeletonDataError(f"{self.path}: unknown column(s) {bad}")
        pieces: list[pa.Table] = []
        fidx = np.searchsorted(self._file_start, ranges.starts, side="right") - 1
        for fi in np.unique(fidx).tolist():
            self._file(fi)  # opened first: it may correct the row-group bounds
            gstart, first = self._group_start[fi], int(self._file_start[fi])
            g_read, table = -1, None
            for k in np.flatnonzero(fidx == fi).tolist():
                a, b = int(ranges.starts[k]) - first, int(ranges.stops[k]) - first
                while a < b:  # ranges were cut at _dataset.json's row groups: a rewritten file may cut them anew
                    g = int(np.searchsorted(gstart, a, side="right")) - 1
                    if g != g_read:  # ranges ascend: each row group is read once
                        g_read, table = g, self._row_group(fi, g, cols)
                    n = min(b, int(gstart[g + 1])) - a
                    pieces.append(table.slice(a - int(gstart[g]), n))
                    a += n
        if not pieces:
            return pa.schema([CLIP_SCHEMA.field(c) for c in cols]).empty_table()
        return pa.concat_tables(pieces).combine_chunks()

    def split_columns(self, split: str, columns: Sequence[str] = LIGHT_COLUMNS) -> pa.Table:
        """`index(split, columns)` (the columns plus `position`, in store order), read through the split's row ranges
        when `_dataset.json` lists them (the part files a row group at a time, never `_index.parquet`), else from
        the index (older or interleaved datasets, split_map views)."""
        ranges = self.split_ranges(split)
        if ranges is None:
            return self.index(split, columns=columns)
        table = self.read_columns(ranges, columns)
        return table.append_column("position", int64_array(ranges.positions()))

    def clip_ids(self, positions: Sequence[int] | np.ndarray) -> list[str]:
        """clip_id of the clips at the given positions (in that order), from the clip_id column of their row groups,
        each read once (read_columns; no index)."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if not pos.size:
            return []
        rows, back = np.unique(pos, return_inverse=True)
        ids = self.read_columns(RowRanges.from_positions(rows, self.group_starts()), ["clip_id"])["clip_id"]
        return [ids[int(i)].as_py() for i in back.reshape(-1)]

    def iter_batches(self, batch_size: int = 256, columns: Sequence[str] | None = None,
                     files: Sequence[int] | None = None) -> Iterator[tuple[int, int, pa.RecordBatch]]:
        """(file index, first row of the batch in that file, batch) over the files, at most `batch_size` rows at a
        time. Read a row group at a time (ParquetFile.iter_batches reads ahead: a whole 1024-row file of real
        clips, ~80 MB, was resident at once)."""
        for i in (range(len(self._files)) if files is None else files):
            row = 0
            for g in range(self._file(i).metadata.num_row_groups):
                table = self._row_group(i, g, None if columns is None else list(columns))
                for batch in table.to_batches(max_chunksize=batch_size):
                    yield i, row, batch
                    row += batch.num_rows

    def iter_clips(self, split: str | Sequence[str] | None = None, batch_size: int = 256,
                   copy: bool = False) -> Iterator[SkeletonClip]:
        """Stream clips file by file, `batch_size` rows at a time (store order)."""
        member = None if split is None else SplitMember(self.split_map, split)  # a split_map's ids hashed once
        for fi, row0, batch in self.iter_batches(batch_size):
            rows = np.arange(row0, row0 + batch.num_rows)
            if member is not None:
                mask = member(batch)
                batch, rows = batch.filter(pa.array(mask)), rows[mask]
            yield from clips_from_batch(batch, copy=copy, source=self.files[fi], rows=rows.tolist())
