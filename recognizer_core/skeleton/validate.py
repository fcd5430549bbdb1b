"""Validate a skeleton store on the driver, once per dataset version, before any training worker starts.

A deterministic data error (NaN, a clip with 0 frames, a label outside the classes, list lengths that disagree
with the shape columns, coordinates far outside the image) found inside Ray Train workers is retried by
FailureConfig for minutes before the run fails. `validate_dataset` finds it first, in one streamed pass over
the part files (a row group at a time, light columns and keypoints together, no per-clip index read; vectorised
numpy on the Arrow buffers, never a Python loop per joint), and raises one SkeletonDataError line naming the
file, row, clip and field.

The result is cached as a small JSON report keyed by the dataset's fingerprint (names, sizes and mtimes of its
files) and the checks' parameters: a re-run or every Tune trial on the same data reads the report instead of
the data. The report also lists the all-zero (no person) clips of the whole dataset, which the training
loader uses to skip them without reading keypoints (`empty_positions_for`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from recognizer_core.storage import atomic_write, join_uri, read_text

from .clip import NanPolicy, SkeletonDataError
from .store import DATASET_JSON, INDEX_FILE, SkeletonDataset
from .store_member import SplitMember

log = logging.getLogger(__name__)

REPORT_DIR = "_validated"  # inside the dataset folder (Parquet readers skip names starting with '_')
_VERSION = 2  # bump when the checks change, so old reports are not trusted (2: empty after NaN zeroing)
COORD_TOLERANCE = 1.0  # a joint may sit up to one image size outside the image (people at the border)
# every column the checks need, read a row group at a time from the part files (never from `_index.parquet`: the
# light columns ride along with the keypoints, so validation opens no per-clip index either)
_COLUMNS = ["clip_id", "split", "label", "total_frames", "num_person", "num_frames", "num_joints", "img_h", "img_w",
            "keypoint", "keypoint_score"]


def user_cache_dir() -> Path:
    return Path(os.environ.get("RECOGNIZER_CACHE", Path.home() / ".cache" / "recognizer")) / "validated"


def dataset_fingerprint(ds: SkeletonDataset) -> str:
    """Hash of the names, sizes and mtimes of the dataset's data and metadata files (one folder listing)."""
    infos = ds._fs.get_file_info(pafs.FileSelector(ds._root))
    keep = sorted((os.path.basename(i.path), i.size, i.mtime_ns) for i in infos
                  if i.type == pafs.FileType.File and (os.path.basename(i.path) in (DATASET_JSON, INDEX_FILE)
                                                      or os.path.basename(i.path).startswith("part-")))
    return hashlib.sha1(json.dumps([_VERSION, keep]).encode()).hexdigest()[:16]


def _report_paths(ds: SkeletonDataset, name: str) -> list[str]:
    return [join_uri(ds.uri, REPORT_DIR, name), str(user_cache_dir() / name)]


def _load_report(paths: Sequence[str]) -> dict | None:
    for p in paths:
        try:
            text = read_text(p)
        except OSError:
            continue
        if text:
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                log.warning("%s: ignoring an unreadable validation report", p)
    return None


def _save_report(report: dict, paths: Sequence[str]) -> str | None:
    for p in paths:  # the dataset folder first (shared by every node); a read-only dataset: the user cache
        try:
            with atomic_write(p, "w") as f:
                f.write(json.dumps(report))
            return p
        except OSError as err:
            log.debug("cannot write validation report %s: %s", p, err)
    return None


def empty_positions_for(ds: SkeletonDataset) -> np.ndarray | None:
    """Positions of all-zero clips from any cached report of this dataset version (None when there is none)."""
    fp = dataset_fingerprint(ds)
    for folder in (join_uri(ds.uri, REPORT_DIR), str(user_cache_dir())):
        path = join_uri(folder, f"{fp}.empty.json")
        report = _load_report([path])
        if report is not None:
            return np.asarray(report["empty_positions"], dtype=np.int64)
    return None


def validate_dataset(path: str | Path, splits: Sequence[str], num_classes: int, nan_policy: NanPolicy = "reject",
                     *, num_joints: int | None = 17, skip_empty: bool = True, coord_tolerance: float = COORD_TOLERANCE,
                     batch_rows: int = 256, use_cache: bool = True, progress: bool | None = None) -> dict:
    """Check every clip of `splits` in one streamed pass over the part files (per row group: the light columns,
    then the keypoints; `_index.parquet` is not read); return a report.

    Raises SkeletonDataError (one line: file, row, clip, field) on: labels outside [0, num_classes), 0 frames,
    a joint count other than num_joints (None: any), total_frames != frames, list lengths that disagree with
    num_person x num_frames x num_joints (x 2), NaN/inf (nan_policy='reject'; 'zero' counts them, the loader
    zeroes them), coordinates farther than coord_tolerance x the image size outside the image (same policy)
    and, with skip_empty=False, all-zero clips. A cached report for the same dataset version and parameters is
    returned without reading the data (report['cached'] is True)."""
    ds = SkeletonDataset(path)
    splits = [splits] if isinstance(splits, str) else list(splits)
    params = {"splits": sorted(splits), "num_classes": num_classes, "nan_policy": nan_policy,
              "num_joints": num_joints, "skip_empty": skip_empty, "coord_tolerance": coord_tolerance}
    fp = dataset_fingerprint(ds)
    name = f"{fp}-{hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]}.json"
    if use_cache:
        report = _load_report(_report_paths(ds, name))
        if report is not None and report.get("params") == params:
            return {**report, "cached": True}
    start = time.perf_counter()
    # split membership per batch: by the split column, or by clip_id for a split_map (clips in several splits),
    # the map's ids hashed once for the whole pass (per batch, the pass was quadratic in the clip count)
    member = SplitMember(ds.split_map, splits)
    light = (num_classes, num_joints)
    empty, counts = _pass(ds, member, light, nan_policy, skip_empty, coord_tolerance, batch_rows, progress)
    report = {"version": _VERSION, "fingerprint": fp, "dataset": str(ds.path), "params": params,
              "num_clips": counts.pop("clips"), "splits": {s: int(n) for s, n in ds.splits().items() if s in splits},
              "empty_positions": empty.tolist(), **counts, "seconds": round(time.perf_counter() - start, 3)}
    if use_cache:
        _save_report(report, _report_paths(ds, name))
        _save_report({"fingerprint": fp, "empty_positions": report["empty_positions"]},
                     _report_paths(ds, f"{fp}.empty.json"))
    return {**report, "cached": False}


def _check_light(batch: pa.RecordBatch, wanted: np.ndarray, num_classes: int, num_joints: int | None, fail) -> None:
    col = {c: batch[c].to_numpy(zero_copy_only=False) for c in ("label", "num_frames", "num_joints", "total_frames")}
    checks = [
        ("label", (col["label"] < 0) | (col["label"] >= num_classes),
         lambda i: f"label={col['label'][i]} outside [0, {num_classes}) (model.num_classes)"),
        ("num_frames", col["num_frames"] <= 0, lambda i: f"keypoint has {col['num_frames'][i]} frames"),
        ("num_joints", (col["num_joints"] != num_joints) if num_joints is not None else np.zeros_like(wanted),
         lambda i: f"keypoint has {col['num_joints'][i]} joints, expected {num_joints}"),
        ("total_frames", col["total_frames"] != col["num_frames"],
         lambda i: f"total_frames={col['total_frames'][i]} but keypoint has T={col['num_frames'][i]} frames"),
    ]
    for fld, bad, say in checks:
        hits = np.flatnonzero(bad & wanted)
        if hits.size:
            fail(int(hits[0]), f"{fld}: {say(int(hits[0]))}", hits)


def row_any(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per row (list offsets), whether any flag in its slice is set; rows of length 0 give False."""
    out = np.zeros(len(offsets) - 1, dtype=bool)
    lengths = np.diff(offsets)
    rows = np.flatnonzero(lengths > 0)
    if rows.size:
        out[rows] = np.logical_or.reduceat(flags, offsets[rows])
    return out


def _pass(ds: SkeletonDataset, member: SplitMember, light: tuple, nan_policy: str, skip_empty: bool,
          tol: float, batch_rows: int, progress: bool | None) -> tuple[np.ndarray, dict]:
    from tqdm import tqdm

    bounds = ds.row_group_bounds()
    total = len(ds)
    bar = tqdm(total=total, unit="clip", desc="validating skeletons", mininterval=1.0,
               disable=(total < 20_000) if progress is None else not progress)
    empty: list[np.ndarray] = []
    counts = {"clips": 0, "nonfinite_clips": 0, "far_coordinate_clips": 0}
    for fi in range(len(ds.files)):
        try:
            for _, row0, batch in ds.iter_batches(batch_rows, columns=_COLUMNS, files=[fi]):
                wanted = member(batch)
                counts["clips"] += int(wanted.sum())

                def fail(i: int, msg: str, hits: np.ndarray, fi=fi, row0=row0, batch=batch) -> None:
                    more = f" ({hits.size} clips in this batch)" if hits.size > 1 else ""
                    raise SkeletonDataError(f"{ds.files[fi]}: row {row0 + i}: clip {batch['clip_id'][i].as_py()!r}: "
                                            f"{msg}{more}")
                _check_light(batch, wanted, *light, fail)
                _check_batch(batch, int(bounds[fi][0]) + row0, wanted, nan_policy, skip_empty, tol, empty, counts,
                             fail)
                bar.update(batch.num_rows)
        except (OSError, pa.ArrowInvalid) as err:
            raise SkeletonDataError(f"{ds.files[fi]}: unreadable ({err})") from None
    bar.close()
    return (np.concatenate(empty) if empty else np.zeros(0, np.int64)), counts


def _check_batch(batch: pa.RecordBatch, pos0: int, wanted: np.ndarray, nan_policy: str, skip_empty: bool,
                 tol: float, empty: list, counts: dict, fail) -> None:
    n = batch.num_rows
    m, t, v = (batch[c].to_numpy(zero_copy_only=False).astype(np.int64) for c in ("num_person", "num_frames",
                                                                                   "num_joints"))
    h, w = (batch[c].to_numpy(zero_copy_only=False).astype(np.float32) for c in ("img_h", "img_w"))
    kp_val, kp_off = flat_list(batch["keypoint"])
    sc_val, sc_off = flat_list(batch["keypoint_score"])
    kp_nulls, sc_nulls = batch["keypoint"].null_count, batch["keypoint_score"].null_count

    for name, off, per, nulls in (("keypoint", kp_off, 2, kp_nulls), ("keypoint_score", sc_off, 1, sc_nulls)):
        got = np.diff(off)
        if nulls:
            got = np.where(batch[name].is_null().to_numpy(zero_copy_only=False), -1, got)
        bad = np.flatnonzero((got != m * t * v * per) & wanted)
        if bad.size:
            i = int(bad[0])
            found = "null" if got[i] < 0 else f"{got[i]} values"
            fail(i, f"{name} has {found}, expected num_person x num_frames x num_joints{' x 2' if per == 2 else ''}"
                    f" = {m[i] * t[i] * v[i] * per}", bad)
    kp_bad = ~np.isfinite(kp_val)
    sc_bad = ~np.isfinite(sc_val)
    nonfinite = (row_any(kp_bad, kp_off) | row_any(sc_bad, sc_off)) & wanted
    if nonfinite.any():
        if nan_policy != "zero":
            i = int(np.flatnonzero(nonfinite)[0])
            fld = "keypoint" if row_any(kp_bad, kp_off)[i] else "keypoint_score"
            fail(i, f"{fld} has NaN/inf values; use data.nan_policy=zero to zero those joints",
                 np.flatnonzero(nonfinite))
        counts["nonfinite_clips"] += int(nonfinite.sum())
    far, first = _far_coordinates(kp_val, kp_off, w, h, tol)
    far &= wanted
    if far.any():
        if nan_policy != "zero":
            i = int(np.flatnonzero(far)[0])
            j = int(first[i]) - int(kp_off[i])
            x, y = kp_val[kp_off[i] + j - j % 2], kp_val[kp_off[i] + j - j % 2 + 1]
            fail(i, f"keypoint ({x:g}, {y:g}) is far outside img_shape ({int(h[i])}, {int(w[i])}) (more than "
                    f"{tol:g} x the image size); fix the file or use data.nan_policy=zero to zero such joints",
                 np.flatnonzero(far))
        counts["far_coordinate_clips"] += int(far.sum())
    is_empty = empty_rows(kp_val, kp_off, sc_val, sc_off, w, h)
    if not skip_empty and (is_empty & wanted).any():
        i = int(np.flatnonzero(is_empty & wanted)[0])
        fail(i, "keypoint and keypoint_score are all zero (no person); set data.skip_empty_clips=true to skip",
             np.flatnonzero(is_empty & wanted))
    empty.append(pos0 + np.flatnonzero(is_empty))


def empty_rows(kp_val: np.ndarray, kp_off: np.ndarray, sc_val: np.ndarray, sc_off: np.ndarray, w: np.ndarray,
               h: np.ndarray) -> np.ndarray:
    """Per row: no person left once the loader has zeroed the NaN/inf joints and those far outside the image
    (nan_policy 'zero': clip.validate, zero_far_joints). Counting a NaN as a non-zero value let an all-NaN clip
    pass as a person here and fail the loader mid-epoch, with skip_empty_clips set."""
    kp_live = np.isfinite(kp_val) & (kp_val != 0)
    sc_live = np.isfinite(sc_val) & (sc_val > 0)
    if len(kp_val) != 2 * len(sc_val) or not np.array_equal(kp_off, 2 * sc_off):
        return ~(row_any(sc_live, sc_off) | row_any(kp_live, kp_off))  # lengths disagree: a failed row; no pairs
    xy = kp_val.reshape(-1, 2)
    per_row = np.diff(sc_off)
    size = np.stack([np.repeat(w, per_row), np.repeat(h, per_row)], axis=1)
    with np.errstate(invalid="ignore"):
        far = ((xy < -COORD_TOLERANCE * size) | (xy > (1 + COORD_TOLERANCE) * size)).any(1)
    good = np.isfinite(xy).all(1) & np.isfinite(sc_val) & ~far
    return ~row_any(good & (sc_live | kp_live.reshape(-1, 2).any(1)), sc_off)


def flat_list(col: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets from 0) of a list column, also when the batch is a slice of a larger array."""
    off = col.offsets.to_numpy().astype(np.int64)
    values = col.values.to_numpy(zero_copy_only=False)[off[0]:off[-1]]
    return values, off - off[0]


def _far_coordinates(values: np.ndarray, off: np.ndarray, w: np.ndarray, h: np.ndarray,
                     tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row: any coordinate beyond tol x the image size outside it, and the flat index of the first one.
    Values outside the bound of the smallest image in the batch are rare, so the exact per-row test (x against
    the row's width, y against its height) runs on those candidates only."""
    n = len(off) - 1
    far, first = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)
    if not n or not values.size:
        return far, first
    small = float(min(w.min(), h.min()))
    with np.errstate(invalid="ignore"):
        cand = np.flatnonzero((values < -tol * small) | (values > (1 + tol) * small))
    if not cand.size:
        return far, first
    row = np.searchsorted(off, cand, side="right") - 1
    size = np.where((cand - off[row]) % 2 == 0, w[row], h[row])
    v = values[cand]
    hit = (v < -tol * size) | (v > (1 + tol) * size)
    rows, idx = row[hit], cand[hit]
    far[rows] = True
    uniq, at = np.unique(rows, return_index=True)  # rows ascend with the flat index: first hit per row
    first[uniq] = idx[at]
    return far, first


def scan_empty_positions(ds: SkeletonDataset, positions: np.ndarray) -> np.ndarray:
    """The all-zero clips among `positions`, read a row group at a time (four columns, bounded memory): the
    fallback when no validation report of this dataset version is at hand."""
    positions = np.sort(np.asarray(positions, dtype=np.int64))
    bounds = ds.row_group_bounds()
    fidx, _, _ = ds.locate(positions)
    out = []
    for fi in np.unique(fidx):
        ds._file(int(fi))  # opened first: it may correct the row-group bounds
        gstart = ds._group_start[fi]
        local = positions[fidx == fi] - int(bounds[fi][0])
        gidx = np.searchsorted(gstart, local, side="right") - 1
        for g in np.unique(gidx):
            # through the store's lock: a loader's read-ahead thread may be reading this dataset's files, and one
            # ParquetFile used by two threads at once fails ("ReadRangeCache did not find matching cache entry")
            # or crashes the process
            t = ds._row_group(int(fi), int(g), ["keypoint", "keypoint_score", "img_h", "img_w"])
            kp_val, kp_off = flat_list(t["keypoint"].combine_chunks())
            sc_val, sc_off = flat_list(t["keypoint_score"].combine_chunks())
            w, h = (t[c].to_numpy().astype(np.float32) for c in ("img_w", "img_h"))
            empty = empty_rows(kp_val, kp_off, sc_val, sc_off, w, h)
            rows = local[gidx == g] - gstart[g]
            out.append(rows[empty[rows]] + gstart[g] + int(bounds[fi][0]))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def zero_far_joints(clip, tol: float = COORD_TOLERANCE) -> int:
    """nan_policy='zero' for coordinates: zero the joints (coordinates and score) lying more than tol x the image
    size outside the image, as NaN joints are zeroed; returns how many. validate_dataset rejects them under
    'reject', so only 'zero' datasets reach the loader with such joints."""
    h, w = clip.img_shape
    x, y = clip.keypoint[..., 0], clip.keypoint[..., 1]
    far = (x < -tol * w) | (x > (1 + tol) * w) | (y < -tol * h) | (y > (1 + tol) * h)
    n = int(far.sum())
    if n:
        clip.keypoint, clip.keypoint_score = clip.keypoint.copy(), clip.keypoint_score.copy()
        clip.keypoint[far] = 0.0
        clip.keypoint_score[far] = 0.0
    return n
