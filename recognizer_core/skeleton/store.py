"""The skeleton store: a folder of Parquet files, one row per SkeletonClip.

Layout: `<dir>/part-00000.parquet, part-00001.parquet, ...` plus `<dir>/_dataset.json` (label names,
schema version, split counts, per-file row counts, free-form metadata). Keypoints are flat list<float32>
columns with shape columns (num_person, num_frames, num_joints) beside them, so a row becomes arrays by a
zero-copy reshape. Light columns (ids, labels, splits, shapes) can be read without touching keypoints,
which is how a 100k-clip dataset is indexed without loading it. Every file is written to a hidden temp
name and renamed; `_dataset.json` is written last, so a crashed write never looks like a dataset (Parquet
readers, Ray Data included, skip names starting with '.' or '_').
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .clip import NanPolicy, SkeletonClip, SkeletonDataError
from .store_rows import (CLIP_SCHEMA, HEAVY_COLUMNS, LIGHT_COLUMNS, clip_from_row, clips_from_batch,
                         clips_to_table)

__all__ = ["CLIP_SCHEMA", "DATASET_JSON", "HEAVY_COLUMNS", "LIGHT_COLUMNS", "SCHEMA_VERSION", "SkeletonDataset",
           "check_file_schema", "clip_from_row", "clips_from_batch", "clips_to_table", "write_dataset"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DATASET_JSON = "_dataset.json"
_META_PREFIX = b"recognizer."
_STRING_COLUMNS = ["clip_id", "label_name", "split", "source_video"]

# ---------------------------------------------------------------- writing

def _write_parquet_atomic(table: pa.Table, path: Path, row_group_size: int) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd",
                       use_dictionary=_STRING_COLUMNS)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json_atomic(data: dict, path: Path) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def write_dataset(clips: Iterable[SkeletonClip], out_dir: str | Path, label_names: Sequence[str] | None = None,
                  rows_per_file: int = 1024, *, row_group_size: int = 64,
                  split_map: Mapping[str, Sequence[str]] | None = None, metadata: Mapping[str, Any] | None = None,
                  overwrite: bool = False, nan_policy: NanPolicy = "reject", num_joints: int | None = None,
                  on_error: Literal["raise", "skip"] = "raise") -> Path:
    """Validate and write clips (any iterable, consumed in `rows_per_file` chunks) as a Parquet dataset.

    label_names: class names by label; every clip's label must index it and a set label_name must match.
    split_map: optional {split: [clip_id, ...]} for clips in several splits (mmaction2's xsub/xview
    lists); kept verbatim in `_dataset.json` and used by `index(split)`. metadata: free-form JSON dict kept
    in `_dataset.json` (e.g. {'synthetic': True}). on_error='skip' records bad clips instead of raising.
    The previous dataset in out_dir is replaced only once the new one is complete (needs overwrite=True).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob("part-*.parquet")) + ([out / DATASET_JSON] if (out / DATASET_JSON).exists() else [])
    if old and not overwrite:
        raise FileExistsError(f"{out}: already holds a skeleton dataset (pass overwrite=True to replace it)")
    label_names = list(label_names) if label_names is not None else None
    file_meta = {_META_PREFIX + b"schema_version": str(SCHEMA_VERSION).encode(),
                 _META_PREFIX + b"label_names": json.dumps(label_names).encode()}
    seen: set[str] = set()
    names_by_label: dict[int, str] = {}
    split_counts: Counter = Counter()
    joints: set[int] = set()
    skipped: list[dict] = []
    max_label = -1
    staged: list[tuple[Path, Path, int]] = []  # (tmp, final, rows)
    token = uuid.uuid4().hex[:8]

    def check(clip: SkeletonClip) -> SkeletonClip:
        clip.validate(str(out), nan_policy=nan_policy, num_joints=num_joints,
                      num_classes=len(label_names) if label_names is not None else None)
        if clip.clip_id in seen:
            raise SkeletonDataError(f"{out}: clip {clip.clip_id!r}: clip_id is not unique")
        if label_names is not None and clip.label_name and clip.label_name != label_names[clip.label]:
            raise SkeletonDataError(f"{out}: clip {clip.clip_id!r}: label_name {clip.label_name!r} does not match "
                                    f"label {clip.label} ({label_names[clip.label]!r}); label names: {label_names}")
        if label_names is None and clip.label_name:
            if names_by_label.setdefault(clip.label, clip.label_name) != clip.label_name:
                raise SkeletonDataError(f"{out}: clip {clip.clip_id!r}: label {clip.label} is named "
                                        f"{clip.label_name!r} here but {names_by_label[clip.label]!r} before")
        return clip

    def flush(chunk: list[SkeletonClip]) -> None:
        final = out / f"part-{len(staged):05d}.parquet"
        tmp = out / f".{final.name}.{token}.staged"
        _write_parquet_atomic(clips_to_table(chunk, label_names).replace_schema_metadata(file_meta), tmp,
                              row_group_size)
        staged.append((tmp, final, len(chunk)))

    try:
        chunk: list[SkeletonClip] = []
        for clip in clips:
            try:
                check(clip)
            except SkeletonDataError as err:
                if on_error != "skip":
                    raise
                skipped.append({"clip_id": str(getattr(clip, "clip_id", "")), "error": str(err)})
                log.warning("skipping clip: %s", err)
                continue
            seen.add(clip.clip_id)
            split_counts[clip.split] += 1
            joints.add(clip.num_joints)
            max_label = max(max_label, clip.label)
            chunk.append(clip)
            if len(chunk) >= rows_per_file:
                flush(chunk)
                chunk = []
        if chunk or not staged:
            flush(chunk)
    except BaseException:
        for tmp, _, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    if label_names is None and names_by_label:
        label_names = [names_by_label.get(i, "") for i in range(max_label + 1)]
    if split_map is not None:
        split_map = {str(k): [str(x) for x in v] for k, v in split_map.items()}
        split_counts = Counter({k: sum(x in seen for x in v) for k, v in split_map.items()})
    info = {
        "format": "recognizer.skeleton", "schema_version": SCHEMA_VERSION, "label_names": label_names or [],
        "num_clips": len(seen), "num_joints": sorted(joints),
        "files": [{"name": final.name, "num_rows": rows} for _, final, rows in staged],
        "splits": dict(sorted(split_counts.items())), "metadata": dict(metadata or {}), "skipped": skipped,
    }
    if split_map is not None:
        info["split_map"] = split_map
    (out / DATASET_JSON).unlink(missing_ok=True)  # the dataset is invalid until the new json lands
    for path in old:
        path.unlink(missing_ok=True)
    for tmp, final, _ in staged:
        os.replace(tmp, final)
    _write_json_atomic(info, out / DATASET_JSON)
    return out


# ---------------------------------------------------------------- reading

def check_file_schema(path: str | Path) -> pa.Schema:
    """Read a Parquet file's footer schema; SkeletonDataError names the file and the missing/extra/odd columns."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise SkeletonDataError(f"{path}: not a readable Parquet file ({err})") from None
    missing = [n for n in CLIP_SCHEMA.names if n not in schema.names]
    extra = [n for n in schema.names if n not in CLIP_SCHEMA.names]
    wrong = [f"{f.name} is {schema.field(f.name).type}, expected {f.type}" for f in CLIP_SCHEMA
             if f.name in schema.names and not schema.field(f.name).type.equals(f.type)]
    if missing or extra or wrong:
        parts = ([f"missing column(s) {missing}"] if missing else []) + \
                ([f"unexpected column(s) {extra}"] if extra else []) + wrong
        raise SkeletonDataError(f"{path}: not a skeleton-store file (schema v{SCHEMA_VERSION}): " + "; ".join(parts))
    version = (schema.metadata or {}).get(_META_PREFIX + b"schema_version")
    if version is not None and int(version) > SCHEMA_VERSION:
        raise SkeletonDataError(f"{path}: schema version {int(version)} is newer than this code ({SCHEMA_VERSION})")
    return schema


class SkeletonDataset:
    """A skeleton store opened for streaming reads (only Parquet footers are read on open)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SkeletonDataError(f"{self.path}: skeleton dataset folder not found")
        info_path = self.path / DATASET_JSON
        if info_path.exists():
            try:
                self.info = json.loads(info_path.read_text())
            except json.JSONDecodeError as err:
                raise SkeletonDataError(f"{info_path}: not valid JSON ({err})") from None
            if int(self.info.get("schema_version", 0)) > SCHEMA_VERSION:
                raise SkeletonDataError(f"{info_path}: schema version {self.info['schema_version']} is newer than "
                                        f"this code ({SCHEMA_VERSION})")
            names = [f["name"] for f in self.info.get("files", [])]
            self._files = [self.path / n for n in names]
            for f in self._files:
                if not f.exists():
                    raise SkeletonDataError(f"{info_path}: lists {f.name} but the file is missing")
        else:  # plain folder of part files (e.g. copied without the json): metadata from the footers
            self._files = sorted(self.path.glob("part-*.parquet"))
            if not self._files:
                raise SkeletonDataError(f"{self.path}: no {DATASET_JSON} and no part-*.parquet files")
            self.info = {"schema_version": SCHEMA_VERSION, "label_names": [], "metadata": {}}
        self._pf: dict[int, pq.ParquetFile] = {}
        rows, groups = [], []
        for f in self._files:
            schema = check_file_schema(f)
            if not info_path.exists() and not self.info["label_names"]:
                raw = (schema.metadata or {}).get(_META_PREFIX + b"label_names")
                self.info["label_names"] = json.loads(raw) or [] if raw else []
            md = pq.read_metadata(f)
            rows.append(md.num_rows)
            groups.append(np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)]))
        self._file_start = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self._group_start = groups

    def __len__(self) -> int:
        return int(self._file_start[-1])

    def __repr__(self) -> str:
        return f"SkeletonDataset({str(self.path)!r}, {len(self)} clips, {len(self._files)} files)"

    @property
    def files(self) -> list[str]:
        return [str(f) for f in self._files]

    @property
    def label_names(self) -> list[str]:
        return list(self.info.get("label_names") or [])

    @property
    def metadata(self) -> dict:
        return dict(self.info.get("metadata") or {})

    @property
    def split_map(self) -> dict[str, list[str]] | None:
        return self.info.get("split_map")

    def splits(self) -> dict[str, int]:
        """{split name: number of clips}."""
        if "splits" in self.info:
            return dict(self.info["splits"])
        return dict(Counter(self.index(columns=["split"])["split"].to_pylist()))

    def _file(self, i: int) -> pq.ParquetFile:
        if i not in self._pf:
            self._pf[i] = pq.ParquetFile(self._files[i])
        return self._pf[i]

    def _mask(self, table: pa.Table | pa.RecordBatch, split: str | Sequence[str]) -> Any:
        names = [split] if isinstance(split, str) else list(split)
        if self.split_map is not None:  # clips may sit in several splits: membership by clip_id
            ids = [x for s in names for x in self.split_map.get(s, [])]
            return pc.is_in(table["clip_id"], value_set=pa.array(ids, pa.string()))
        return pc.is_in(table["split"], value_set=pa.array(names, pa.string()))

    def index(self, split: str | Sequence[str] | None = None, columns: Sequence[str] = LIGHT_COLUMNS) -> pa.Table:
        """Light columns of every clip (never the keypoints) plus `position` (the row number for `read`)."""
        cols = list(dict.fromkeys(list(columns) + (["clip_id", "split"] if split is not None else [])))
        bad = [c for c in cols if c not in CLIP_SCHEMA.names]
        if bad:
            raise SkeletonDataError(f"{self.path}: unknown column(s) {bad}")
        tables = []
        for i, f in enumerate(self._files):
            t = pq.read_table(f, columns=cols)
            tables.append(t.append_column("position", pa.array(
                np.arange(self._file_start[i], self._file_start[i + 1], dtype=np.int64))))
        table = pa.concat_tables(tables)
        if split is not None:
            table = table.filter(self._mask(table, split))
        return table.select(list(columns) + ["position"])

    def read(self, positions: Sequence[int] | np.ndarray, copy: bool = False) -> list[SkeletonClip]:
        """Clips at the given row positions (in that order); reads only the row groups holding them."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= len(self)):
            raise IndexError(f"{self.path}: positions out of range [0, {len(self)})")
        out: list[SkeletonClip | None] = [None] * pos.size
        fidx = np.searchsorted(self._file_start, pos, side="right") - 1
        for fi in np.unique(fidx):
            sel = np.nonzero(fidx == fi)[0]
            local = pos[sel] - self._file_start[fi]
            gstart = self._group_start[fi]
            gidx = np.searchsorted(gstart, local, side="right") - 1
            groups = np.unique(gidx)
            table = self._file(int(fi)).read_row_groups([int(g) for g in groups])
            # row offset of each selected group inside the concatenated table
            base = dict(zip(groups.tolist(), np.concatenate([[0], np.cumsum(np.diff(gstart)[groups])[:-1]])))
            take = np.array([base[g] + (loc - gstart[g]) for g, loc in zip(gidx.tolist(), local)], dtype=np.int64)
            for j, clip in zip(sel, clips_from_batch(table.take(pa.array(take)), copy=copy)):
                out[j] = clip
        return out  # type: ignore[return-value]

    def iter_batches(self, batch_size: int = 256, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        for i in range(len(self._files)):
            yield from self._file(i).iter_batches(batch_size=batch_size, columns=columns)

    def iter_clips(self, split: str | Sequence[str] | None = None, batch_size: int = 256,
                   copy: bool = False) -> Iterator[SkeletonClip]:
        """Stream clips file by file, `batch_size` rows at a time."""
        for batch in self.iter_batches(batch_size):
            if split is not None:
                batch = batch.filter(self._mask(batch, split))
            yield from clips_from_batch(batch, copy=copy)
