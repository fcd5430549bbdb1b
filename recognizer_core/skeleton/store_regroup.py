"""Rewrite a skeleton store with each file's rows grouped by split, so that a dataset written before split ranges
existed (or with its splits interleaved past the per-file cap) lists its split ranges in `_dataset.json` and trains,
validates and builds folds without reading the per-clip `_index.parquet`.

What stays: every clip in the file it was in, every column and its values, the part files' schema metadata, and
`_dataset.json`'s label names, metadata and other fields. Each old row group is cut into one new row group per split
it held (its rows in their old order) and a file's pieces are written split by split, each split's in the old
order. So every split is the same sequence of row groups (blocks) with the same clips as before: the ranks' shards
(row groups dealt round-robin, then balanced), each epoch's block shuffle and window shuffle, hence every training and
validation batch for a seed, are unchanged. What changes: row positions (a split's rows are now one range per
file), row groups are smaller where the old ones held several splits, and the write id (a new one, in the json and
every footer: the rows moved, so a reader of the old dataset must not take these files for its own).
The input is only read. Memory: one part file at a time, as when it was written.
"""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .clip import SkeletonDataError
from .store import SkeletonDataset
from .store_rows import CLIP_SCHEMA, LIGHT_COLUMNS
from .store_write import DATASET_JSON, INDEX_FILE, PART_FILE_OPTIONS, SCHEMA_VERSION, WRITE_ID, WRITE_ID_KEY


def regroup_by_split(src_path: str | Path, out_dir: str | Path) -> dict:
    """Write `src_path`'s dataset, each file's rows grouped by split, as a new dataset in `out_dir` (a local folder
    that must not exist; it appears complete or not at all). Returns a summary (clips, files, row groups before
    and after). SkeletonDataError (one line naming the path) for a source that is not a
    skeleton dataset, one with a split_map (its splits are clip lists, not row ranges) or an existing `out_dir`."""
    src = SkeletonDataset(src_path)
    if src.split_map is not None:
        raise SkeletonDataError(f"{src.path}: has a split_map (clips listed in several splits, e.g. a folds view): "
                                "its splits are clip lists, not row ranges, so regrouping cannot give it ranges")
    if "://" in str(out_dir):
        raise SkeletonDataError(f"{out_dir}: regrouping writes a local folder (copy it to remote storage after)")
    out = Path(out_dir)
    if out.exists():
        raise SkeletonDataError(f"{out}: already exists (regrouping writes a new dataset: give a new folder)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.staged")
    tmp.mkdir()
    try:
        summary = _write_grouped(src, tmp)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(out), "source": str(src.path), **summary}


def _write_grouped(src: SkeletonDataset, out: Path) -> dict:
    entries, split_counts, split_labels = [], Counter(), {}
    groups_before = groups_after = 0
    index_writer: pq.ParquetWriter | None = None
    write_id = uuid.uuid4().hex
    with_id = {WRITE_ID_KEY: write_id.encode()}
    try:
        for fi, path in enumerate(src.files):
            pf = src._file(fi)
            name = posixpath.basename(path)
            pieces: dict[str, list[pa.Table]] = {}
            for g in range(pf.metadata.num_row_groups):  # each old row group read once
                table = src._row_group(fi, g)   # the store's own read: its lock, its error naming file and group
                splits = table["split"].to_numpy(zero_copy_only=False)
                for s in sorted(set(splits.tolist())):
                    pieces.setdefault(s, []).append(table.filter(pa.array(splits == s)))
                groups_before += 1
            # the part file's own schema (and its metadata: schema version, label names), not a rebuilt one
            order = [p for s in sorted(pieces) for p in pieces[s]]
            schema = pf.schema_arrow.with_metadata({**(pf.schema_arrow.metadata or {}), **with_id})
            with pq.ParquetWriter(out / name, schema, **PART_FILE_OPTIONS) as writer:
                for piece in order:  # one row group per piece: the old blocks, cut by split
                    writer.write_table(piece, row_group_size=max(1, piece.num_rows))
            sizes = [p.num_rows for p in order] or [0]
            groups_after += len(order)
            rows, counts = 0, {}
            for s in sorted(pieces):
                n = sum(p.num_rows for p in pieces[s])
                counts[s] = [[rows, rows + n]]
                rows += n
                split_counts[s] += n
                labels = np.concatenate([p["label"].to_numpy() for p in pieces[s]])
                for lb, c in zip(*np.unique(labels, return_counts=True)):
                    split_labels.setdefault(s, Counter())[int(lb)] += int(c)
            entries.append({"name": name, "num_rows": rows, "row_groups": sizes,
                            "splits": {s: r[0][1] - r[0][0] for s, r in counts.items()}, "split_rows": counts})
            light = pa.concat_tables([p.select(list(LIGHT_COLUMNS)) for p in order]) if order else None
            if light is not None and light.num_rows:
                if index_writer is None:
                    index_writer = pq.ParquetWriter(out / INDEX_FILE, light.schema.with_metadata(with_id),
                                                    compression="zstd")
                index_writer.write_table(light, row_group_size=1 << 16)
    finally:
        if index_writer is not None:
            index_writer.close()
    if index_writer is None:  # no clips at all: an empty index, as write_dataset writes
        pq.write_table(pa.schema([CLIP_SCHEMA.field(c) for c in LIGHT_COLUMNS], metadata=with_id).empty_table(),
                       out / INDEX_FILE)
    info = dict(src.info)
    info.update({
        "format": info.get("format", "recognizer.skeleton"), "schema_version": info.get("schema_version",
                                                                                       SCHEMA_VERSION),
        "num_clips": len(src), "files": entries, "index_file": INDEX_FILE, "splits": dict(sorted(split_counts.items())),
        "split_labels": {k: {str(lb): n for lb, n in sorted(v.items())} for k, v in sorted(split_labels.items())},
        "regrouped_from": str(src.path), WRITE_ID: write_id,
    })
    with open(out / DATASET_JSON, "w") as f:
        f.write(json.dumps(info, indent=1))
    return {"clips": len(src), "files": len(entries), "row_groups_before": groups_before,
            "row_groups_after": groups_after}
