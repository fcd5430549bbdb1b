"""The skeleton input pipeline: annotation arrays -> STGCN++ input, batched and vectorised.

Test mode equals mmaction2 1.2.0's

    PreNormalize2D -> GenSkeFeat(dataset, feats) -> UniformSampleFrames(clip_len, num_clips, test_mode=True)
    -> PoseDecode -> FormatGCNInput(num_person)

bitwise (tests/test_transforms_parity.py checks the golden outputs). Train mode samples frames at random
(mmaction2's train-mode UniformSampleFrames regimes, from a caller's np.random.Generator) and applies the
augmentations of `augment.py`. The work differs from mmaction2's order: frame indices first (cached in
test mode), then only the sampled frames (and their successors, for motion) of the first num_person persons
are gathered, normalised and turned into features with whole-array NumPy ops, written straight into the
batch array. No per-frame Python: bench/bench_pipeline.py measures it against mmaction2.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, Sequence

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from recognizer_core.config import StrictModel
from recognizer_core.skeleton.augment import apply_affine, sample_affine
from recognizer_core.skeleton.clip import DTYPE_KEY
from recognizer_core.skeleton.features import BONES_BY_DATASET, normalize_2d, skeleton_features
from recognizer_core.skeleton.sampling import test_frame_indices, train_frame_indices

Feat = Literal["j", "b", "jm", "bm"]


class PipelineConfig(StrictModel):
    """Input pipeline of the skeleton recognizer (mmaction2 pipeline parameters + training augmentations)."""

    feats: list[Feat] = Field(default_factory=lambda: ["b"],
                              description="GenSkeFeat streams, concatenated on channels: j, b, jm, bm")
    clip_len: int = Field(100, ge=1, description="frames per clip (UniformSampleFrames clip_len)")
    num_clips: int = Field(1, ge=1, description="clips per sample in training")
    test_num_clips: int = Field(1, ge=1, description="clips per sample in validation / test (averaged)")
    num_person: int = Field(4, ge=1, description="persons M after FormatGCNInput (zero-padded / truncated)")
    dataset: str = Field("coco", description="joint layout for bones (2D keypoints + scores): coco")
    random_rescale: tuple[float, float] | None = Field(
        None, description="training: isotropic scale factor range about the image centre, e.g. [0.8, 1.2]")
    random_shift: float | None = Field(
        None, ge=0.0, lt=1.0, description="training: max shift as a fraction of image width/height, e.g. 0.1")
    random_rotate: float | None = Field(
        None, ge=0.0, le=180.0, description="training: max rotation in degrees about the image centre, e.g. 15")

    @field_validator("feats")
    @classmethod
    def _feats_unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one feature stream is needed (j, b, jm, bm)")
        if len(set(v)) != len(v):
            raise ValueError(f"feature streams must not repeat, got {v}")
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset_supported(cls, v: str) -> str:
        if v not in BONES_BY_DATASET:
            hint = (" ('nturgb+d' is mmaction2's 3D layout without keypoint scores; its GenSkeFeat rejects 2D "
                    "keypoint+score input)" if v == "nturgb+d" else "")
            raise ValueError(f"unsupported dataset {v!r} for 2D keypoints with scores; use one of "
                             f"{sorted(BONES_BY_DATASET)}{hint}")
        return v

    @model_validator(mode="after")
    def _rescale_range(self) -> "PipelineConfig":
        if self.random_rescale is not None:
            lo, hi = self.random_rescale
            if not 0 < lo <= hi:
                raise ValueError(f"random_rescale must be (lo, hi) with 0 < lo <= hi, got {self.random_rescale}")
        return self

    @property
    def in_channels(self) -> int:
        return 3 * len(self.feats)

    @property
    def augments(self) -> bool:
        return bool(self.random_rescale is not None or self.random_shift or self.random_rotate)


def _field(clip: Any, name: str) -> Any:
    if isinstance(clip, Mapping):
        if name not in clip:
            raise KeyError(f"annotation is missing {name!r}")
        return clip[name]
    return getattr(clip, name)


def _clip_name(clip: Any) -> str:
    name = clip.get("frame_dir") if isinstance(clip, Mapping) else getattr(clip, "clip_id", None)
    return f"clip {name!r}" if name else "clip"


def _clip_arrays(clip: Any) -> tuple[Any, Any]:
    kp, sc = _field(clip, "keypoint"), _field(clip, "keypoint_score")
    # A SkeletonClip read from a PYSKL float16 pkl holds float32 copies and remembers the file's dtypes;
    # mmaction2 normalises in the file's dtype, so cast back (float16 -> float32 -> float16 is exact).
    dtypes = (getattr(clip, "extra", None) or {}).get(DTYPE_KEY) if not isinstance(clip, Mapping) else None
    if isinstance(dtypes, Mapping):
        kp = np.asarray(kp).astype(dtypes.get("keypoint", np.asarray(kp).dtype), copy=False)
        sc = np.asarray(sc).astype(dtypes.get("keypoint_score", np.asarray(sc).dtype), copy=False)
    return kp, sc


def _checked_arrays(keypoint: Any, keypoint_score: Any, where: str = "clip") -> tuple[np.ndarray, np.ndarray]:
    kp = np.asarray(keypoint)
    if keypoint_score is None:
        raise ValueError(f"{where}: keypoint_score is required (2D keypoints carry a score channel)")
    sc = np.asarray(keypoint_score)
    if kp.ndim != 4 or kp.shape[-1] != 2:
        raise ValueError(f"{where}: keypoint must be (M, T, V, 2), got shape {kp.shape}")
    if sc.shape != kp.shape[:-1]:
        raise ValueError(f"{where}: keypoint_score must be (M, T, V) = {kp.shape[:-1]}, got {sc.shape}")
    if kp.shape[1] < 1:
        raise ValueError(f"{where}: keypoint has no frames (T=0)")
    if kp.dtype.kind != "f" or sc.dtype.kind != "f":
        kp, sc = kp.astype(np.float32), sc.astype(np.float32)
    return kp, sc


def _checked_shape(img_shape: Any, where: str = "clip") -> tuple[float, float]:
    try:
        h, w = (float(v) for v in img_shape)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: img_shape must be (H, W), got {img_shape!r}") from None
    if not (h > 0 and w > 0 and math.isfinite(h) and math.isfinite(w)):
        raise ValueError(f"{where}: img_shape must be positive (H, W), got {img_shape!r}")
    return h, w


def _gather(kp: np.ndarray, sc: np.ndarray, img_shape: tuple[float, float], inds: np.ndarray, m: int):
    """x, y, score planes (m, len(inds), V) of the first m persons, PreNormalize2D-ed, in the joint dtype."""
    x, y = normalize_2d(kp[:m].take(inds, axis=1), img_shape)  # take: ~5x faster than kp[:m, inds]
    s = sc[:m].take(inds, axis=1)
    jd = np.result_type(x.dtype, s.dtype)  # GenSkeFeat concatenates keypoint and score
    return x.astype(jd, copy=False), y.astype(jd, copy=False), s.astype(jd, copy=False)


def _run(items: Sequence[tuple[np.ndarray, np.ndarray, tuple[float, float]]], inds_list: Sequence[np.ndarray],
         cfg: PipelineConfig, num_clips: int, rng: np.random.Generator | None) -> np.ndarray:
    """Features for a batch: float32 (N, num_clips, num_person, clip_len, V, C).

    Clip by clip into a zeroed batch array: only the sampled frames (+ successors for motion) of the first
    num_person persons are gathered, and padding persons are never computed (they are the zeros already
    there, as FormatGCNInput pads). Per-clip arrays stay cache-sized; measured faster than one pass over
    the padded batch (bench/bench_pipeline.py).
    """
    n, mp, cl = len(items), cfg.num_person, cfg.clip_len
    length = num_clips * cl
    v = items[0][0].shape[2]
    motion = any(f in ("jm", "bm") for f in cfg.feats)
    out = np.zeros((n, num_clips, mp, cl, v, cfg.in_channels), dtype=np.float32)
    affine = None
    if rng is not None and cfg.augments:
        aspect = np.array([w / h for _, _, (h, w) in items])
        affine = sample_affine(rng, n, aspect, cfg.random_rescale, cfg.random_rotate, cfg.random_shift)

    for i, ((kp, sc, shape), inds) in enumerate(zip(items, inds_list)):
        if kp.shape[2] != v:
            raise ValueError(f"all clips in a batch need the same joint count, got {kp.shape[2]} and {v}")
        m = min(kp.shape[0], mp)  # FormatGCNInput keeps the first num_person persons
        if m == 0:
            continue
        t = kp.shape[1]
        # Motion needs each sampled frame's successor (clamped; has_next zeroes the last frame's motion).
        frames = np.concatenate([inds, np.minimum(inds + 1, t - 1)]) if motion else inds
        x, y, s = _gather(kp, sc, shape, frames, m)
        if affine is not None:
            x, y = apply_affine(x, y, affine[0][i], affine[1][i])

        def clip_major(p: np.ndarray) -> np.ndarray:  # (m, num_clips * cl, V) -> (num_clips, m, cl, V), a view
            return p.reshape(m, num_clips, cl, v).transpose(1, 0, 2, 3)

        kwargs = {}
        if motion:
            kwargs = dict(next_joints=(clip_major(x[:, length:]), clip_major(y[:, length:]), clip_major(s[:, length:])),
                          has_next=(inds < t - 1).reshape(num_clips, 1, cl))
        joints = (clip_major(x[:, :length]), clip_major(y[:, :length]), clip_major(s[:, :length]))
        skeleton_features(joints, cfg.feats, cfg.dataset, out=out[i, :, :m], **kwargs)
    return out


def _check_finite(x: np.ndarray, clips: Sequence[Any]) -> None:
    # mmaction2 passes NaN/inf through to the loss; name the clip instead (SkeletonClip.validate's
    # nan_policy='zero' is the way to keep such clips).
    if not np.isfinite(x).all():
        bad = [_clip_name(clips[i]) for i in np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))]
        raise ValueError(f"prepare_batch: non-finite keypoint or keypoint_score in {', '.join(bad)} "
                         "(clean with SkeletonClip.validate(nan_policy='zero'))")


def test_sample(keypoint: Any, keypoint_score: Any, img_shape: Sequence[int], cfg: PipelineConfig,
                num_clips: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """mmaction2 test-mode pipeline for one clip: (float32 (num_clips, M, clip_len, V, C), int32 frame_inds).

    keypoint (M, T, V, 2) pixels, keypoint_score (M, T, V), img_shape (H, W); num_clips defaults to
    cfg.test_num_clips. frame_inds are mmaction2's (num_clips * clip_len,) indices into the T frames.
    """
    kp, sc = _checked_arrays(keypoint, keypoint_score)
    img_shape = _checked_shape(img_shape)
    nc = cfg.test_num_clips if num_clips is None else int(num_clips)
    inds = test_frame_indices(kp.shape[1], cfg.clip_len, nc)
    return _run([(kp, sc, img_shape)], [inds], cfg, nc, None)[0], inds.copy()


test_sample.__test__ = False  # a pipeline API, not a pytest test, even when imported into a test module


def train_sample(keypoint: Any, keypoint_score: Any, img_shape: Sequence[int], cfg: PipelineConfig,
                 rng: np.random.Generator) -> np.ndarray:
    """Training pipeline for one clip (random frames + augmentations): float32 (num_clips, M, clip_len, V, C)."""
    kp, sc = _checked_arrays(keypoint, keypoint_score)
    img_shape = _checked_shape(img_shape)
    inds = train_frame_indices(kp.shape[1], cfg.clip_len, cfg.num_clips, rng)
    return _run([(kp, sc, img_shape)], [inds], cfg, cfg.num_clips, rng)[0]


def prepare_batch(clips: Sequence[Any], cfg: PipelineConfig, train: bool, rng: np.random.Generator | None = None,
                  num_clips: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of clips -> (float32 (N, num_clips, M, clip_len, V, C), int64 labels (N,)).

    clips: SkeletonClip objects or mmaction2 annotation dicts (keypoint, keypoint_score, img_shape,
    total_frames, label). train=True samples frames at random and augments (needs rng); train=False is the
    mmaction2 test-mode pipeline. num_clips defaults to cfg.num_clips (train) / cfg.test_num_clips (test).
    """
    if len(clips) == 0:
        raise ValueError("prepare_batch needs at least one clip")
    if train and rng is None:
        raise ValueError("prepare_batch(train=True) needs an np.random.Generator (rng)")
    nc = int(num_clips) if num_clips is not None else (cfg.num_clips if train else cfg.test_num_clips)
    items, inds_list, labels = [], [], []
    for clip in clips:
        where = _clip_name(clip)
        try:
            kp, sc = _checked_arrays(*_clip_arrays(clip), where)
            total = int(_field(clip, "total_frames"))
            if total != kp.shape[1]:
                raise ValueError(f"{where}: total_frames={total} but keypoint has {kp.shape[1]} frames")
            shape = _checked_shape(_field(clip, "img_shape"), where)
            labels.append(int(_field(clip, "label")))
        except KeyError as err:
            raise ValueError(f"{where}: {err.args[0]}") from None
        items.append((kp, sc, shape))
        inds_list.append(train_frame_indices(total, cfg.clip_len, nc, rng) if train
                         else test_frame_indices(total, cfg.clip_len, nc))
    try:
        x = _run(items, inds_list, cfg, nc, rng if train else None)
    except ValueError as err:
        raise ValueError(f"prepare_batch: {err}") from None
    _check_finite(x, clips)
    return torch.from_numpy(x), torch.tensor(labels, dtype=torch.int64)
