"""Skeleton features of mmaction2 1.2.0 (`PreNormalize2D`, `GenSkeFeat` = JointToBone / ToMotion /
MergeSkeFeat), computed on the sampled frames only.

mmaction2 computes every feature on all T frames and then samples clip_len of them. The features are
per-frame except motion, which needs frame t+1; so gathering frames `inds` and `inds + 1` first and computing
on those gives the same numbers with clip_len / T of the work. Motion at the last frame of the original
sequence is 0 in every channel (score included), as in `ToMotion`.

Arrays are handled as x / y / score planes (..., L, V) rather than (..., V, 2|3): NumPy loops over a
2- or 3-long last axis are slow, while a plane written into one channel of the output is one strided loop.

Arithmetic follows mmaction2 operation by operation (same dtypes, same order) so the output is bitwise equal,
not just close: normalisation in the keypoint dtype, joints/joint-motion in the dtype of the
keypoint+score concatenation, bones cast to float32 before bone-motion (JointToBone allocates float32).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from recognizer_core.skeleton.coco import BONES as COCO_BONES

FEATURES = ("j", "b", "jm", "bm")
# Bone pairs of mmaction2 JointToBone, for the layouts whose bones keep a score channel (coco, openpose).
BONES_BY_DATASET: dict[str, tuple[tuple[int, int], ...]] = {"coco": COCO_BONES}

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]  # x, y, score: each (..., L, V)


def normalize_2d(keypoint: np.ndarray, img_shape: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """PreNormalize2D of (..., V, 2) pixels -> x, y planes (..., V) in [-1, 1] around the image centre.

    Computed in the keypoint's float dtype with mmaction2's Python-float constants cast to it (NumPy's rule
    for `array - float`), so float16 / float64 annotations round exactly as in mmaction2.
    """
    h, w = (float(v) for v in img_shape)
    if not (h > 0 and w > 0 and math.isfinite(h) and math.isfinite(w)):
        raise ValueError(f"img_shape must be positive (H, W), got {tuple(img_shape)!r}")
    if keypoint.dtype.kind != "f":
        keypoint = keypoint.astype(np.float32)
    hw, hh = keypoint.dtype.type(w / 2), keypoint.dtype.type(h / 2)
    return (keypoint[..., 0] - hw) / hw, (keypoint[..., 1] - hh) / hh


def bone_index(dataset: str, num_joints: int) -> tuple[np.ndarray, np.ndarray]:
    """(child, parent) index arrays of mmaction2 JointToBone for `dataset` (read-only)."""
    pairs = BONES_BY_DATASET[dataset]
    if num_joints != len(pairs):
        raise ValueError(f"dataset={dataset!r} has {len(pairs)} joints, keypoints have {num_joints}")
    return _bone_arrays(dataset)[:2]


@lru_cache(maxsize=None)
def _bone_arrays(dataset: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """child, parent (read-only) and whether child == 0..V-1 (every joint a child, in order: coco)."""
    arr = np.asarray(BONES_BY_DATASET[dataset], dtype=np.intp)
    child, parent = arr[:, 0].copy(), arr[:, 1].copy()
    child.setflags(write=False)
    parent.setflags(write=False)
    return child, parent, bool(np.array_equal(child, np.arange(len(child))))


def _bones(planes: Planes, child: np.ndarray, parent: np.ndarray, out: Planes | None = None,
           dense: bool = False) -> Planes:
    """JointToBone into float32 planes `out` (allocated if None): computed in the joint dtype, stored as f32."""
    x, y, s = planes
    if out is None:
        out = tuple(np.zeros(p.shape, dtype=np.float32) for p in planes)
    # np.take is ~10x faster than fancy indexing on an inner axis; ufunc out= fuses compute and store.
    if dense:  # child == 0..V-1 (coco): no scatter needed
        np.subtract(x, x.take(parent, axis=-1), out=out[0])
        np.subtract(y, y.take(parent, axis=-1), out=out[1])
        np.add(s, s.take(parent, axis=-1), out=out[2])
    else:
        for o, p in zip(out[:2], (x, y)):
            o[..., child] = np.take(p, child, axis=-1) - np.take(p, parent, axis=-1)
        out[2][..., child] = np.take(s, child, axis=-1) + np.take(s, parent, axis=-1)
    np.divide(out[2], 2, out=out[2])  # (a + b) / 2: halving is exact, so halving after the store rounds alike
    return out


def _motion(cur: Planes, nxt: Planes, keep: np.ndarray, out: Planes) -> None:
    """ToMotion into float32 planes: next - current, score mean; 0 where keep is 0 (the last frame)."""
    np.subtract(nxt[0], cur[0], out=out[0])
    np.subtract(nxt[1], cur[1], out=out[1])
    np.add(cur[2], nxt[2], out=out[2])
    np.divide(out[2], 2, out=out[2])
    for o in out:
        np.multiply(o, keep, out=o)


def skeleton_features(joints: Planes, feats: Sequence[str], dataset: str = "coco", next_joints: Planes | None = None,
                      has_next: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """GenSkeFeat on sampled frames: float32 (..., L, V, 3 * len(feats)), streams concatenated in order.

    joints: normalised x, y and score planes (..., L, V) in the joint dtype (see module doc). Motion features
    (jm, bm) also need next_joints (the frames after each sampled frame) and has_next, bool broadcastable to
    the planes' (..., L), False where the sampled frame is the sequence's last one. `out`: optional
    preallocated float32 (..., L, V, C) array or view to write into.
    """
    unknown = [f for f in feats if f not in FEATURES]
    if unknown or not feats:
        raise ValueError(f"feats must be a non-empty list of {FEATURES}, got {list(feats)}")
    need_motion = any(f in ("jm", "bm") for f in feats)
    if need_motion and (next_joints is None or has_next is None):
        raise ValueError("motion features (jm, bm) need next_joints and has_next")
    if out is None:
        out = np.empty(joints[0].shape + (3 * len(feats),), dtype=np.float32)

    def slot(feat: str) -> Planes:  # the three output channels of a stream, as writable views
        k = 3 * list(feats).index(feat)
        return out[..., k], out[..., k + 1], out[..., k + 2]

    keep = has_next[..., None].astype(np.float32) if need_motion else None
    if "j" in feats:
        for o, p in zip(slot("j"), joints):
            o[...] = p
    if "b" in feats or "bm" in feats:
        bone_index(dataset, joints[0].shape[-1])  # checks V
        child, parent, dense = _bone_arrays(dataset)
        if "bm" in feats:  # bone motion reads float32 bones of both frames (JointToBone output is float32)
            bones = _bones(joints, child, parent, dense=dense)
            _motion(bones, _bones(next_joints, child, parent, dense=dense), keep, slot("bm"))
            if "b" in feats:
                for o, p in zip(slot("b"), bones):
                    o[...] = p
        else:
            _bones(joints, child, parent, out=slot("b"), dense=dense)
    if "jm" in feats:
        _motion(joints, next_joints, keep, slot("jm"))
    return out
