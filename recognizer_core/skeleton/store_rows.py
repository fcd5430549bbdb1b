"""Store rows <-> SkeletonClips: the Arrow schema and the fast conversions both ways.

Kept apart from the file handling in store.py because training workers (Ray Data `map_batches`) only need
this half: `clips_from_batch` turns a batch of rows into clips with zero-copy reshapes, no per-joint Python.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from .clip import SkeletonClip, SkeletonDataError, decode_extra, encode_extra

CLIP_SCHEMA = pa.schema([
    ("clip_id", pa.string()),
    ("label", pa.int32()),
    ("label_name", pa.string()),
    ("split", pa.string()),
    ("source_video", pa.string()),
    ("img_h", pa.int32()),
    ("img_w", pa.int32()),
    ("orig_h", pa.int32()),  # null when the clip has no original_shape
    ("orig_w", pa.int32()),
    ("total_frames", pa.int32()),
    ("fps", pa.float64()),
    ("num_person", pa.int32()),
    ("num_frames", pa.int32()),
    ("num_joints", pa.int32()),
    ("keypoint", pa.list_(pa.float32())),  # flat (M*T*V*2)
    ("keypoint_score", pa.list_(pa.float32())),  # flat (M*T*V)
    ("track_ids", pa.list_(pa.int32())),  # (M,) or null
    ("frame_inds", pa.list_(pa.int32())),  # (T,) or null
    ("extra", pa.string()),  # lossless JSON of SkeletonClip.extra ('' when empty)
])
HEAVY_COLUMNS = ("keypoint", "keypoint_score", "track_ids", "frame_inds", "extra")
LIGHT_COLUMNS = tuple(n for n in CLIP_SCHEMA.names if n not in HEAVY_COLUMNS)


# ---------------------------------------------------------------- clips -> Arrow

def int64_array(a: np.ndarray) -> pa.Array:
    """A numpy integer array as an Arrow int64 array, zero-copy (pa.array converts through its type checks)."""
    a = np.ascontiguousarray(a, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(a), [None, pa.py_buffer(a)])


def _list_array(arrays: Sequence[np.ndarray | None], dtype: Any, pa_type: pa.DataType) -> pa.Array:
    lengths = np.array([0 if a is None else a.size for a in arrays], dtype=np.int32)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [np.ravel(a).astype(dtype, copy=False) for a in arrays if a is not None]
    values = np.concatenate(present) if present else np.zeros(0, dtype=dtype)
    mask = np.array([a is None for a in arrays])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa_type),
                                    mask=pa.array(mask) if mask.any() else None)


def clips_to_table(clips: Sequence[SkeletonClip], label_names: Sequence[str] | None = None) -> pa.Table:
    """Arrow table (CLIP_SCHEMA) of already validated clips; label_name is filled from label_names if empty."""
    def names(c: SkeletonClip) -> str:
        if c.label_name or not label_names:
            return c.label_name
        return label_names[c.label]

    orig = [c.original_shape for c in clips]
    cols = {
        "clip_id": pa.array([c.clip_id for c in clips], pa.string()),
        "label": pa.array([c.label for c in clips], pa.int32()),
        "label_name": pa.array([names(c) for c in clips], pa.string()),
        "split": pa.array([c.split for c in clips], pa.string()),
        "source_video": pa.array([c.source_video for c in clips], pa.string()),
        "img_h": pa.array([c.img_shape[0] for c in clips], pa.int32()),
        "img_w": pa.array([c.img_shape[1] for c in clips], pa.int32()),
        "orig_h": pa.array([None if o is None else o[0] for o in orig], pa.int32()),
        "orig_w": pa.array([None if o is None else o[1] for o in orig], pa.int32()),
        "total_frames": pa.array([c.total_frames for c in clips], pa.int32()),
        "fps": pa.array([c.fps for c in clips], pa.float64()),
        "num_person": pa.array([c.keypoint.shape[0] for c in clips], pa.int32()),
        "num_frames": pa.array([c.keypoint.shape[1] for c in clips], pa.int32()),
        "num_joints": pa.array([c.keypoint.shape[2] for c in clips], pa.int32()),
        "keypoint": _list_array([c.keypoint for c in clips], np.float32, pa.float32()),
        "keypoint_score": _list_array([c.keypoint_score for c in clips], np.float32, pa.float32()),
        "track_ids": _list_array([c.track_ids for c in clips], np.int32, pa.int32()),
        "frame_inds": _list_array([c.frame_inds for c in clips], np.int32, pa.int32()),
        "extra": pa.array([encode_extra(c.extra, c.clip_id) for c in clips], pa.string()),
    }
    return pa.Table.from_pydict(cols, schema=CLIP_SCHEMA)


# ---------------------------------------------------------------- Arrow / Ray batches -> clips

def _column(batch: Any, name: str) -> Any:
    try:
        return batch[name]
    except KeyError:
        raise SkeletonDataError(f"batch has no column {name!r}") from None


def _arrow_lists(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if isinstance(col, pa.ChunkedArray):   # a row group's column is one chunk: combining it would copy it
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    values = col.values.to_numpy(zero_copy_only=False)
    offsets = col.offsets.to_numpy()
    valid = col.is_valid().to_numpy(zero_copy_only=False) if col.null_count else None
    return values, offsets, valid


_LIST_DTYPES = {"keypoint": np.float32, "keypoint_score": np.float32, "track_ids": np.int32,
                "frame_inds": np.int32}


def _rows_of_lists(col: Any, n: int, dtype: Any) -> list:
    """Per-row 1-D arrays (None for nulls) of a list column given as Arrow or as Ray's numpy forms."""
    if isinstance(col, (pa.Array, pa.ChunkedArray)):
        values, offsets, valid = _arrow_lists(col)
        return [None if valid is not None and not valid[i] else values[offsets[i]:offsets[i + 1]]
                for i in range(n)]
    if isinstance(col, np.ndarray) and col.dtype != object:  # Ray stacks equal-length lists into (N, L)
        col = col.astype(dtype, copy=False)
        return [col[i] for i in range(n)]
    return [None if _is_null(v) else np.asarray(v, dtype=dtype) for v in col]


def _is_null(v: Any) -> bool:
    # None (Arrow/numpy), NaN (Ray's numpy format for null ints), pandas.NA (pandas format)
    return v is None or (isinstance(v, float) and v != v) or type(v).__name__ == "NAType"


def _plain(col: Any) -> list:
    if isinstance(col, (pa.Array, pa.ChunkedArray)):
        return col.to_pylist()
    return list(col.tolist() if isinstance(col, np.ndarray) else col)


def _check_lengths(plain: dict, lists: dict, idx: np.ndarray, source: str, rows: Sequence[int] | None) -> None:
    """Each row's flat list lengths must match its shape columns (a file written by another tool may not):
    one SkeletonDataError naming the file, row, clip and the lengths found vs expected, not numpy's reshape.
    Only the rows `idx` are checked (a bad row nobody asked for does not stop the reading of its neighbours)."""
    m = np.asarray(plain["num_person"], dtype=np.int64)
    t = np.asarray(plain["num_frames"], dtype=np.int64)
    v = np.asarray(plain["num_joints"], dtype=np.int64)
    for name, per_joint in (("keypoint", 2), ("keypoint_score", 1)):
        got = np.full(len(m), -2, dtype=np.int64)
        for i in idx:
            a = lists[name][i]
            got[i] = -1 if a is None else a.size
        bad = idx[got[idx] != (m * t * v * per_joint)[idx]]
        if bad.size:
            i = int(bad[0])
            dims = f"{m[i]} x {t[i]} x {v[i]}" + (" x 2" if per_joint == 2 else "")
            found = "null" if got[i] < 0 else f"{got[i]} values"
            row = rows[i] if rows is not None else i
            raise SkeletonDataError(
                f"{source or '<batch>'}: row {row}: clip {plain['clip_id'][i]!r}: {name} has {found}, expected "
                f"num_person x num_frames x num_joints{' x 2' if per_joint == 2 else ''} = {dims} = "
                f"{m[i] * t[i] * v[i] * per_joint}" + (f" ({bad.size} such rows in this batch)" if bad.size > 1
                                                       else ""))


def clips_from_batch(batch: Any, copy: bool = False, *, source: str = "", rows: Sequence[int] | None = None,
                     select: Sequence[int] | None = None) -> list[SkeletonClip]:
    """SkeletonClips from a batch of store rows: pa.RecordBatch / pa.Table, a dict of numpy arrays or lists
    (Ray Data's "numpy" batch format) or a pandas DataFrame. Arrays are zero-copy read-only views of the
    batch unless copy=True. Values are trusted (write_dataset validated them); list lengths are checked against
    the shape columns, and a mismatch names `source` (the file) and the row (`rows[i]`, else the batch row).
    select: only these batch rows, in this order (zero-copy picking, where an Arrow `take` would copy)."""
    if hasattr(batch, "columns") and hasattr(batch, "to_dict") and not isinstance(batch, (pa.Table, pa.RecordBatch)):
        batch = {c: batch[c].to_numpy() for c in batch.columns}  # pandas
    n = batch.num_rows if isinstance(batch, (pa.Table, pa.RecordBatch)) else len(_column(batch, "clip_id"))
    if n == 0:
        return []
    plain = {name: _plain(_column(batch, name)) for name in LIGHT_COLUMNS}
    lists = {name: _rows_of_lists(_column(batch, name), n, dtype) for name, dtype in _LIST_DTYPES.items()}
    idx = np.arange(n) if select is None else np.asarray(select, dtype=np.int64).reshape(-1)
    _check_lengths(plain, lists, idx, source, rows)
    extras = _plain(_column(batch, "extra"))
    out = []
    for i in idx.tolist():
        m, t, v = plain["num_person"][i], plain["num_frames"][i], plain["num_joints"][i]
        kp = lists["keypoint"][i].reshape(m, t, v, 2)
        sc = lists["keypoint_score"][i].reshape(m, t, v)
        tid, finds = lists["track_ids"][i], lists["frame_inds"][i]
        if copy:
            kp, sc = kp.copy(), sc.copy()
            tid = None if tid is None else tid.copy()
            finds = None if finds is None else finds.copy()
        oh, ow = plain["orig_h"][i], plain["orig_w"][i]
        out.append(SkeletonClip(
            clip_id=plain["clip_id"][i], label=int(plain["label"][i]), keypoint=kp, keypoint_score=sc,
            img_shape=(int(plain["img_h"][i]), int(plain["img_w"][i])), total_frames=int(plain["total_frames"][i]),
            label_name=plain["label_name"][i] or "", split=plain["split"][i] or "",
            source_video=plain["source_video"][i] or "", fps=float(plain["fps"][i]),
            track_ids=tid, frame_inds=finds,
            original_shape=None if _is_null(oh) or _is_null(ow) else (int(oh), int(ow)),
            extra=decode_extra(extras[i])))
    return out


def clip_from_row(row: Mapping[str, Any], copy: bool = False) -> SkeletonClip:
    """One SkeletonClip from one store row (a dict, e.g. a Ray Data row or `table.to_pylist()[i]`)."""
    batch: dict[str, Any] = {}
    for key, value in row.items():
        if key in _LIST_DTYPES:  # a one-element object column, so a list value is not read as N rows
            batch[key] = np.empty(1, dtype=object)
            batch[key][0] = value
        else:
            batch[key] = [value]
    return clips_from_batch(batch, copy=copy)[0]
