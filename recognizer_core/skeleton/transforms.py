"""The skeleton input pipeline: annotation arrays -> STGCN++ input, batched and vectorised.

Test mode equals mmaction2 1.2.0's

    PreNormalize2D -> GenSkeFeat(dataset, feats) -> UniformSampleFrames(clip_len, num_clips, test_mode=True)
    -> PoseDecode -> FormatGCNInput(num_person)

bitwise (tests/test_transforms_parity.py checks the golden outputs). Train mode samples frames at random
(mmaction2's train-mode UniformSampleFrames regimes, from a caller's np.random.Generator) and applies the
augmentations of `augment.py`. The work differs from mmaction2's order: frame indices first (cached in
test mode), then only the sampled frames (and their successors, for motion) of the first num_person persons
of a run of clips are gathered into one work array, normalised and turned into features with a few
whole-array NumPy ops per run (see `_run`). No per-frame Python, and per-clip Python only for the gather:
bench/bench_pipeline.py measures it against mmaction2.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator, model_validator

from recognizer_core.config import StrictModel
from recognizer_core.skeleton.augment import apply_affine, sample_affine
from recognizer_core.skeleton.clip import DTYPE_KEY, MMACTION_DEFAULT_IMG_SHAPE
from recognizer_core.skeleton.features import BONES_BY_DATASET, half_image, scratch, skeleton_features
from recognizer_core.skeleton.sampling import test_frame_indices, train_frame_indices

Feat = Literal["j", "b", "jm", "bm"]
# Work arrays of one run of clips (bytes): ~L2-sized, measured fastest (bench/bench_pipeline.py).
CHUNK_BYTES = 1 << 22


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
    device: Literal["cpu", "worker"] = Field(
        "cpu", description="where features are computed: cpu = NumPy in the loader processes; worker = the "
                           "loaders only gather the sampled frames and the training worker computes the features "
                           "on its device (skeleton/transforms_torch.py; same numbers, same RNG draws)")

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


def _is_mapping(clip: Any) -> bool:
    return isinstance(clip, dict) or isinstance(clip, Mapping)  # dict first: the ABC check costs ~1 us


def _field(clip: Any, name: str, is_map: bool) -> Any:
    if is_map:
        if name not in clip:
            raise KeyError(f"annotation is missing {name!r}")
        return clip[name]
    return getattr(clip, name)


def _clip_name(clip: Any) -> str:
    name = clip.get("frame_dir") if _is_mapping(clip) else getattr(clip, "clip_id", None)
    return f"clip {name!r}" if name else "clip"


def _clip_arrays(clip: Any, is_map: bool) -> tuple[Any, Any]:
    kp, sc = _field(clip, "keypoint", is_map), _field(clip, "keypoint_score", is_map)
    # A SkeletonClip read from a PYSKL float16 pkl holds float32 copies and remembers the file's dtypes;
    # mmaction2 normalises in the file's dtype, so cast back (float16 -> float32 -> float16 is exact).
    dtypes = None if is_map else (getattr(clip, "extra", None) or {}).get(DTYPE_KEY)
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


@lru_cache(maxsize=64)
def _half_image_tiled(h: float, w: float, frames: int, v: int, dtype: str) -> np.ndarray:
    """(W/2, H/2) repeated over (frames, V, 2): normalising a clip is then two whole-array ops (read-only)."""
    tiled = np.broadcast_to(half_image((h, w), np.dtype(dtype)), (frames, v, 2)).copy()
    tiled.setflags(write=False)
    return tiled


Items = Sequence[tuple[np.ndarray, np.ndarray, tuple[float, float]]]  # (keypoint, keypoint_score, (H, W))


def _run(items: Items, inds_list: Sequence[np.ndarray], cfg: PipelineConfig, num_clips: int,
         rng: np.random.Generator | None, non_finite: list[int] | None = None) -> np.ndarray:
    """Features for a batch: float32 (N, num_clips, num_person, clip_len, V, C).

    The sampled frames (+ successors for motion) of the first num_person persons of a run of clips are
    gathered into (rows, frames, V, 2|.) work arrays, one row per kept person, and the features of all rows are
    computed at once. Runs are cut at CHUNK_BYTES of work arrays so the Python cost per run is amortised while
    the arrays stay in cache; the arrays are reused (fresh multi-MB temporaries per batch cost more in page
    faults than the arithmetic). Padding persons are never computed (zeros, as FormatGCNInput pads). Clips
    whose keypoint / score dtypes differ from the run's start a new run, computed in their own dtypes.
    non_finite: if given, the indices of clips with NaN / inf features are appended to it.
    """
    n, mp = len(items), cfg.num_person
    v = items[0][0].shape[2]
    out = np.empty((n, num_clips, mp, cfg.clip_len, v, cfg.in_channels), dtype=np.float32)
    affine = None
    if rng is not None and cfg.augments:
        aspect = np.array([w / h for _, _, (h, w) in items])
        affine = sample_affine(rng, n, aspect, cfg.random_rescale, cfg.random_rotate, cfg.random_shift)
    motion = "jm" in cfg.feats or "bm" in cfg.feats
    row_bytes = (2 if motion else 1) * num_clips * cfg.clip_len * v * (6 + 2 * len(cfg.feats)) * 4
    max_rows = max(1, CHUNK_BYTES // row_bytes)
    run: list[int] = []
    rows, dtypes = 0, None
    for i, (kp, sc, _) in enumerate(items):
        if kp.shape[2] != v:
            raise ValueError(f"all clips in a batch need the same joint count, got {kp.shape[2]} and {v}")
        m = min(kp.shape[0], mp)  # FormatGCNInput keeps the first num_person persons
        if m < mp:
            out[i, :, m:] = 0  # FormatGCNInput's zero padding
        if m == 0:
            continue
        if run and (rows + m > max_rows or (kp.dtype, sc.dtype) != dtypes):
            _run_rows(items, inds_list, run, cfg, num_clips, affine, out, non_finite)
            run, rows = [], 0
        run.append(i)
        rows, dtypes = rows + m, (kp.dtype, sc.dtype)
    if run:
        _run_rows(items, inds_list, run, cfg, num_clips, affine, out, non_finite)
    return out


def _run_rows(items: Items, inds_list: Sequence[np.ndarray], clips: list[int], cfg: PipelineConfig, num_clips: int,
              affine: tuple[np.ndarray, np.ndarray] | None, out: np.ndarray, non_finite: list[int] | None) -> None:
    """Gather, normalise, (augment) and compute the features of `clips` (same dtypes), into out."""
    mp, cl, c = cfg.num_person, cfg.clip_len, cfg.in_channels
    kdt, sdt = items[clips[0]][0].dtype, items[clips[0]][1].dtype
    v = out.shape[-2]
    motion = "jm" in cfg.feats or "bm" in cfg.feats
    frames_per_row = (2 if motion else 1) * num_clips * cl
    persons = [min(items[i][0].shape[0], mp) for i in clips]
    rows = sum(persons)
    kp_rows = scratch("kp", (rows, frames_per_row, v, 2), kdt)
    sc_rows = scratch("score", (rows, frames_per_row, v), sdt)
    frames, has_next = [inds_list[i] for i in clips], None
    if motion:  # each sampled frame's successor too (clamped; has_next zeroes the last frame's motion)
        inds = np.stack(frames)
        last_frame = np.array([items[i][0].shape[1] - 1 for i in clips])[:, None]
        has_next = np.repeat((inds < last_frame).reshape(len(clips), num_clips, cl), persons, axis=0)
        frames = np.concatenate([inds, np.minimum(inds + 1, last_frame)], axis=1)
    r = 0
    for i, m, f in zip(clips, persons, frames):
        kp, sc, (h, w) = items[i]
        block = kp_rows[r:r + m]
        np.take(kp[:m], f, axis=1, out=block, mode="clip")  # indices are in range; "clip" skips a copy
        np.take(sc[:m], f, axis=1, out=sc_rows[r:r + m], mode="clip")
        half = _half_image_tiled(h, w, frames_per_row, v, kdt.str)  # PreNormalize2D in the keypoint dtype
        np.subtract(block, half, out=block)
        np.divide(block, half, out=block)
        r += m
    if affine is not None:
        row_clip = np.repeat(clips, persons)
        a, t = affine[0][row_clip, None, None], affine[1][row_clip, None, None]
        kp_rows[..., 0], kp_rows[..., 1] = apply_affine(kp_rows[..., 0], kp_rows[..., 1], a, t)
    joints, scores = kp_rows, sc_rows
    if kdt != sdt:
        jd = np.result_type(kdt, sdt)  # GenSkeFeat concatenates keypoint and score
        joints, scores = kp_rows.astype(jd, copy=False), sc_rows.astype(jd, copy=False)
    first, stop = clips[0], clips[-1] + 1
    # Write straight into out where the rows are a view of it, else into a work array scattered after.
    in_place = True
    if len(clips) == 1:
        target = out[first, :, :rows].transpose(1, 0, 2, 3, 4)
    elif num_clips == 1 and rows == mp * len(clips) == mp * (stop - first):  # rows fill out[first:stop]
        target = out[first:stop].reshape(rows, 1, cl, v, c)
    else:
        target, in_place = scratch("features", (rows, num_clips, cl, v, c), np.float32), False
    rows_out = target
    if num_clips == 1:  # frames as one axis: fewer reshapes
        rows_out, has_next = target[:, 0], None if has_next is None else has_next[:, 0]
    skeleton_features(joints, scores, cfg.feats, cfg.dataset, has_next=has_next, out=rows_out)
    # NaN / inf propagate into max / min: one pass each over cache-hot rows (a full isfinite is slower).
    if non_finite is not None and not (np.isfinite(target.max()) and np.isfinite(target.min())):
        r = 0
        for i, m in zip(clips, persons):
            if not np.isfinite(target[r:r + m]).all():
                non_finite.append(i)
            r += m
    if not in_place:
        r = 0
        for i, m in zip(clips, persons):
            out[i, :, :m] = target[r:r + m].transpose(1, 0, 2, 3, 4)
            r += m


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


def batch_items(clips: Sequence[Any], cfg: PipelineConfig, train: bool, rng: np.random.Generator | None,
                num_clips: int | None) -> tuple[list, list[np.ndarray], list[int], int]:
    """Validated (keypoint, keypoint_score, (H, W)) per clip, frame indices, labels and num_clips of a batch.

    The frame indices are drawn here, clip by clip, from rng (train): the first draws of a batch's RNG contract,
    shared by the NumPy (prepare_batch) and torch (transforms_torch) paths.
    """
    if len(clips) == 0:
        raise ValueError("prepare_batch needs at least one clip")
    if train and rng is None:
        raise ValueError("prepare_batch(train=True) needs an np.random.Generator (rng)")
    nc = int(num_clips) if num_clips is not None else (cfg.num_clips if train else cfg.test_num_clips)
    items, inds_list, labels = [], [], []
    for clip in clips:
        where = _clip_name(clip)
        is_map = _is_mapping(clip)
        try:
            kp, sc = _checked_arrays(*_clip_arrays(clip, is_map), where)
            total = int(_field(clip, "total_frames", is_map))
            if total != kp.shape[1]:
                raise ValueError(f"{where}: total_frames={total} but keypoint has {kp.shape[1]} frames")
            # An annotation dict without img_shape: mmaction2's PreNormalize2D default frame (see clip.py).
            shape = _checked_shape(clip.get("img_shape", MMACTION_DEFAULT_IMG_SHAPE) if is_map else clip.img_shape,
                                   where)
            labels.append(int(_field(clip, "label", is_map)))
        except KeyError as err:
            raise ValueError(f"{where}: {err.args[0]}") from None
        items.append((kp, sc, shape))
        inds_list.append(train_frame_indices(total, cfg.clip_len, nc, rng) if train
                         else test_frame_indices(total, cfg.clip_len, nc))
    return items, inds_list, labels, nc


def non_finite_error(names: Sequence[str], bad: Sequence[int]) -> ValueError:
    """The error for clips (`_clip_name`s, indices `bad`) whose features are NaN / inf."""
    # mmaction2 passes NaN/inf through to the loss; name the clips instead (SkeletonClip.validate's
    # nan_policy='zero' is the way to keep such clips).
    listed = ", ".join(names[i] for i in sorted(bad))
    return ValueError(f"prepare_batch: non-finite keypoint or keypoint_score in {listed} "
                      "(clean with SkeletonClip.validate(nan_policy='zero'))")


def prepare_batch(clips: Sequence[Any], cfg: PipelineConfig, train: bool, rng: np.random.Generator | None = None,
                  num_clips: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of clips -> (float32 (N, num_clips, M, clip_len, V, C), int64 labels (N,)).

    clips: SkeletonClip objects or mmaction2 annotation dicts (keypoint, keypoint_score, img_shape,
    total_frames, label). train=True samples frames at random and augments (needs rng); train=False is the
    mmaction2 test-mode pipeline. num_clips defaults to cfg.num_clips (train) / cfg.test_num_clips (test).
    """
    import torch  # here, not at the top: the ONNX Runtime recognize path uses test_sample without torch

    items, inds_list, labels, nc = batch_items(clips, cfg, train, rng, num_clips)
    non_finite: list[int] = []
    try:
        x = _run(items, inds_list, cfg, nc, rng if train else None, non_finite)
    except ValueError as err:
        raise ValueError(f"prepare_batch: {err}") from None
    if non_finite:
        raise non_finite_error([_clip_name(c) for c in clips], non_finite)
    return torch.from_numpy(x), torch.tensor(labels, dtype=torch.int64)
