"""Skeleton features of mmaction2 1.2.0 (`PreNormalize2D`, `GenSkeFeat` = JointToBone / ToMotion /
MergeSkeFeat), computed on the sampled frames only.

mmaction2 computes every feature on all T frames and then samples clip_len of them. The features are
per-frame except motion, which needs frame t+1; so gathering frames `inds` and `inds + 1` first and computing
on those gives the same numbers with clip_len / T of the work. Motion at the last frame of the original
sequence is 0 in every channel (score included), as in `ToMotion`.

Layout, for speed: joints stay as gathered, x/y interleaved (R, F, V, 2), and an (x, y) pair is handled as one
complex number (complex subtraction is the two float subtractions, so the results are bitwise the same).
The output (..., V, C) interleaves the channels of all streams; writing a channel is a strided store, the
dominant cost, and a pair store moves two channels at the price of one. Scores (R, F, V) are real planes.

Arithmetic follows mmaction2 operation by operation (same dtypes, same order) so the output is bitwise equal,
not just close: normalisation in the keypoint dtype, joints/joint-motion in the dtype of the
keypoint+score concatenation, bones computed in that dtype and stored as float32 (JointToBone allocates
float32) before bone-motion.
"""
from __future__ import annotations

import math
import threading
from functools import lru_cache
from typing import Sequence

import numpy as np
from numpy.typing import DTypeLike

from recognizer_core.skeleton.coco import BONES as COCO_BONES

FEATURES = ("j", "b", "jm", "bm")
_FEATURE_SET = frozenset(FEATURES)
# Bone pairs of mmaction2 JointToBone, for the layouts whose bones keep a score channel (coco, openpose).
BONES_BY_DATASET: dict[str, tuple[tuple[int, int], ...]] = {"coco": COCO_BONES}
_PAIR_DTYPES = {np.dtype(np.float32): np.complex64, np.dtype(np.float64): np.complex128}


def half_image(img_shape: Sequence[float], dtype: np.dtype) -> np.ndarray:
    """(W/2, H/2) in `dtype`: PreNormalize2D's centre and scale, broadcastable over (..., 2) x/y pairs."""
    h, w = (float(v) for v in img_shape)
    if not (h > 0 and w > 0 and math.isfinite(h) and math.isfinite(w)):
        raise ValueError(f"img_shape must be positive (H, W), got {tuple(img_shape)!r}")
    return np.array([w / 2, h / 2], dtype=dtype)


def bone_index(dataset: str, num_joints: int) -> tuple[np.ndarray, np.ndarray]:
    """(child, parent) index arrays of mmaction2 JointToBone for `dataset` (read-only)."""
    pairs = BONES_BY_DATASET[dataset]
    if num_joints != len(pairs):
        raise ValueError(f"dataset={dataset!r} has {len(pairs)} joints, keypoints have {num_joints}")
    arr = _bone_arrays(dataset)
    return arr[0], arr[1]


@lru_cache(maxsize=None)
def _bone_arrays(dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """child, parent and parent_of (parent_of[child] = parent; bone[v] = joint[v] - joint[parent_of[v]])."""
    arr = np.asarray(BONES_BY_DATASET[dataset], dtype=np.intp)
    child, parent = arr[:, 0].copy(), arr[:, 1].copy()
    # Every layout here lists each joint once as a child, so every joint has exactly one bone.
    if sorted(child.tolist()) != list(range(len(child))):
        raise ValueError(f"dataset={dataset!r}: bone children must be each joint once")
    parent_of = np.empty_like(parent)
    parent_of[child] = parent
    for a in (child, parent, parent_of):
        a.setflags(write=False)
    return child, parent, parent_of


_SCRATCH = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: DTypeLike) -> np.ndarray:
    """A reusable per-thread work array (contents undefined) for slot `name`; valid until that slot's next use.

    Fresh multi-MB temporaries per batch are mmapped and page-faulted by the allocator each time, which cost
    as much as the arithmetic; these buffers only grow.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    buffers = _SCRATCH.__dict__
    buf = buffers.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = buffers[name] = np.empty(max(nbytes, 64), dtype=np.uint8)
    return np.ndarray(shape, dtype=dtype, buffer=buf)


def _pairs(a: np.ndarray) -> np.ndarray:
    """(..., 2) float32/float64 -> (...) complex view of the x/y pairs."""
    return a.view(_PAIR_DTYPES[a.dtype])[..., 0]


def _pair_operand(a: np.ndarray) -> np.ndarray:
    # float16 has no complex type; a float32 copy stores the same values (float16 -> float32 is exact).
    return _pairs(a) if a.dtype in _PAIR_DTYPES else _pairs(a.astype(np.float32))


def _sub_pairs(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out (complex64) = a - b for (..., 2) pairs, computed in the inputs' dtype."""
    if a.dtype in _PAIR_DTYPES:
        np.subtract(_pairs(a), _pairs(b), out=out)
    else:
        np.copyto(out, _pairs(np.subtract(a, b).astype(np.float32)))


def _mean(a: np.ndarray, b: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> None:
    """out = (a + b) / 2 in the inputs' dtype (tmp: a contiguous scratch of that dtype), as mmaction2 scores."""
    np.add(a, b, out=tmp)
    np.divide(tmp, 2, out=out)


def skeleton_features(joints: np.ndarray, scores: np.ndarray, feats: Sequence[str], dataset: str = "coco",
                      out: np.ndarray | None = None, has_next: np.ndarray | None = None) -> np.ndarray:
    """GenSkeFeat on sampled frames: float32 (R, *frames, V, 3 * len(feats)), streams concatenated in order.

    joints: normalised (R, F2, V, 2) x/y in the joint dtype (see module doc); scores: (R, F2, V) in that dtype.
    Without motion features F2 = F, the frames; with jm / bm, F2 = 2F: the F frames, then the frame after each
    (any frame where has_next is False). out: optional float32 (R, *frames, V, C) array or view to write, last
    axis contiguous, prod(frames) = F (e.g. (num_clips, clip_len)); default (R, F, V, C). has_next: bool,
    broadcastable to (R, *frames), False where the sampled frame is the sequence's last one (motion 0).
    """
    feats = list(feats)
    if not feats or not _FEATURE_SET.issuperset(feats):
        raise ValueError(f"feats must be a non-empty list of {FEATURES}, got {feats}")
    motion = "jm" in feats or "bm" in feats
    if motion and has_next is None:
        raise ValueError("motion features (jm, bm) need has_next and the next frames")
    r, f2, v, _ = joints.shape
    f = f2 // 2 if motion else f2
    if motion and f2 != 2 * f:
        raise ValueError(f"motion features need 2 * F gathered frames, got {f2}")
    if out is None:
        out = np.empty((r, f, v, 3 * len(feats)), dtype=np.float32)
    frames = out.shape[1:-2]
    if out.dtype != np.float32 or out.strides[-1] != 4 or math.prod(frames) != f or out.shape[-1] != 3 * len(feats):
        raise ValueError(f"out must be float32 (R, *frames, V, {3 * len(feats)}) with contiguous channels")
    shape = (r, *frames, v)
    split = frames != (f,)

    def fr(a: np.ndarray, second: bool = False) -> np.ndarray:  # frames [0, F) or [F, 2F), as (R, *frames, ...)
        part = a[:, f:] if second else (a[:, :f] if motion else a)
        return part.reshape(shape + part.shape[3:]) if split else part

    def slot(feat: str) -> tuple[np.ndarray, np.ndarray]:  # the stream's x/y pair view and score view of out
        k = 3 * feats.index(feat)
        return _pairs(out[..., k:k + 2]), out[..., k + 2]

    tmp = scratch("mean", shape, scores.dtype)
    if "j" in feats:
        xy, s = slot("j")
        np.copyto(xy, fr(_pair_operand(joints)))
        np.copyto(s, fr(scores))
    if "b" in feats or "bm" in feats:
        if v != len(BONES_BY_DATASET[dataset]):
            bone_index(dataset, v)  # raises, naming the joint counts
        parent = _bone_arrays(dataset)[2]
        src, src_s = (joints, scores) if "bm" in feats else (joints[:, :f], scores[:, :f])
        parent_xy = src.take(parent, axis=2, out=scratch("parent_xy", src.shape, src.dtype), mode="clip")
        parent_s = src_s.take(parent, axis=2, out=scratch("parent_score", src_s.shape, src_s.dtype), mode="clip")
        if "bm" in feats:  # bones of both frames, float32 as JointToBone stores them
            bxy, bs = scratch("bone_xy", src.shape[:3], np.complex64), scratch("bone_score", src.shape[:3], np.float32)
            _sub_pairs(src, parent_xy, bxy)
            _mean(src_s, parent_s, bs, scratch("bone_mean", src.shape[:3], scores.dtype))
            if "b" in feats:
                xy, s = slot("b")
                np.copyto(xy, fr(bxy))
                np.copyto(s, fr(bs))
            xy, s = slot("bm")
            np.subtract(fr(bxy, True), fr(bxy), out=xy)
            _mean(fr(bs), fr(bs, True), s, scratch("mean32", shape, np.float32))   # not a cast of float64 scratch
        else:
            xy, s = slot("b")
            _sub_pairs(fr(src), fr(parent_xy), xy)
            _mean(fr(src_s), fr(parent_s), s, tmp)
    if "jm" in feats:
        xy, s = slot("jm")
        _sub_pairs(fr(joints, True), fr(joints), xy)
        _mean(fr(scores), fr(scores, True), s, tmp)
    if motion and not np.all(has_next):
        last = np.nonzero(~np.broadcast_to(has_next, shape[:-1]))
        if len(last[0]):
            for feat in ("jm", "bm"):
                if feat in feats:
                    k = 3 * feats.index(feat)
                    out[last + (slice(None), slice(k, k + 3))] = 0
    return out
