"""The skeleton input pipeline as batched torch ops on the training worker's device (`pipeline.device: worker`).

Split in two so the loader processes do only memory copies and the device does the arithmetic:

1. `gather_batch` (loader process, CPU, NumPy): validates the clips, draws the frame indices and the
   augmentation from the batch's np.random.Generator exactly as `transforms.prepare_batch` does (same calls,
   same order: frame indices clip by clip, then one `sample_affine` for the batch), and gathers the sampled
   frames (and their successors, for motion) of the first num_person persons into one zero-padded
   `RawBatch` of pixel coordinates and scores.
2. `batch_features` (training worker, any device): PreNormalize2D, the random rescale/rotate/shift,
   GenSkeFeat (j, b, jm, bm) and FormatGCNInput's padding, as whole-batch tensor ops.

The arithmetic follows `features.py` operation by operation (normalisation in the keypoint dtype, joints and
joint motion in the keypoint+score dtype, bones stored as float32 before bone motion), so on CPU the output
equals the NumPy path bit for bit in test mode and, given the same random draws, in train mode too (the
affine is the same products and sums in the same order; tests/test_transforms_torch.py). On a GPU expect
float rounding differences (other kernels, possible FMA contraction). The random draws are the NumPy path's,
so exact resume keeps working whichever path a run uses. A batch whose clips have different keypoint dtypes is
computed in their common dtype (the NumPy path computes each dtype's clips separately).

The training loop's one call, with `x_raw` the loader's RawBatch:  `x = batch_features(x_raw.to(device), cfg)`
(under train.compile with `compute=compiled_features(cfg)`: `features_of`, the pure tensor part, compiled).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any, Callable, Sequence

import numpy as np
import torch

from recognizer_core.skeleton.augment import sample_affine
from recognizer_core.skeleton.features import _bone_arrays, bone_index
from recognizer_core.skeleton.transforms import PipelineConfig, _clip_name, batch_items, non_finite_error


@dataclass
class RawBatch:
    """Sampled, not yet normalised frames of a batch (what a loader process hands to the training worker)."""

    keypoint: torch.Tensor  # (N, num_clips, M, K, clip_len, V, 2) pixels; K = 2 with motion (frame, next frame)
    score: torch.Tensor  # (N, num_clips, M, K, clip_len, V)
    half_image: torch.Tensor  # (N, 2) (W/2, H/2) in the keypoint dtype: PreNormalize2D's centre and scale
    persons: torch.Tensor  # (N,) int64 persons kept (<= M); the rest is FormatGCNInput's zero padding
    has_next: torch.Tensor | None  # (N, num_clips, clip_len) bool, False at a sequence's last frame (motion 0)
    affine: torch.Tensor | None  # (N, 2, 3) float32 [A | t] of the random rescale/rotate/shift, or None
    names: list[str]  # clip names, for error messages

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "RawBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device, non_blocking=non_blocking)
        return RawBatch(**moved)

    def pin_memory(self) -> "RawBatch":  # DataLoader(pin_memory=True) calls this on custom batch types
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return RawBatch(**{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in moved.items()})


def _motion(cfg: PipelineConfig) -> bool:
    return "jm" in cfg.feats or "bm" in cfg.feats


def gather_batch(clips: Sequence[Any], cfg: PipelineConfig, train: bool, rng: np.random.Generator | None = None,
                 num_clips: int | None = None) -> tuple[RawBatch, torch.Tensor]:
    """Loader side: (RawBatch, int64 labels (N,)); same arguments and RNG draws as `prepare_batch`."""
    items, inds_list, labels, nc = batch_items(clips, cfg, train, rng, num_clips)
    n, mp, cl = len(items), cfg.num_person, cfg.clip_len
    v = items[0][0].shape[2]
    affine = None
    if train and cfg.augments:  # after the frame indices, as prepare_batch draws them
        aspect = np.array([w / h for _, _, (h, w) in items])
        a, t = sample_affine(rng, n, aspect, cfg.random_rescale, cfg.random_rotate, cfg.random_shift)
        affine = torch.from_numpy(np.concatenate([a, t[:, :, None]], axis=2))
    kdt = np.result_type(*(kp.dtype for kp, _, _ in items))
    sdt = np.result_type(*(sc.dtype for _, sc, _ in items))
    k = 2 if _motion(cfg) else 1
    # empty, not zeros: only the padded persons are zeroed (below), the rest is overwritten by the gather
    kp_out = np.empty((n, nc, mp, k, cl, v, 2), dtype=kdt)
    sc_out = np.empty((n, nc, mp, k, cl, v), dtype=sdt)
    has_next = np.ones((n, nc, cl), dtype=bool) if k == 2 else None
    half = np.empty((n, 2), dtype=kdt)
    persons = np.empty(n, dtype=np.int64)
    for i, ((kp, sc, (h, w)), inds) in enumerate(zip(items, inds_list)):
        if kp.shape[2] != v:
            raise ValueError(f"prepare_batch: all clips in a batch need the same joint count, got {kp.shape[2]} and {v}")
        m = persons[i] = min(kp.shape[0], mp)
        half[i] = (w / 2, h / 2)  # as features.half_image: Python floats cast to the keypoint dtype
        frames = [inds]
        if k == 2:
            last = kp.shape[1] - 1
            frames.append(np.minimum(inds + 1, last))
            has_next[i] = (inds < last).reshape(nc, cl)
        kp_out[i, :, m:] = 0
        sc_out[i, :, m:] = 0
        for j, f in enumerate(frames):  # (m, nc * cl, V, ...) -> (nc, m, cl, V, ...)
            if nc == 1 and kp.dtype == kdt and sc.dtype == sdt:  # contiguous destination: gather straight in
                np.take(kp[:m], f, axis=1, out=kp_out[i, 0, :m, j], mode="clip")
                np.take(sc[:m], f, axis=1, out=sc_out[i, 0, :m, j], mode="clip")
            else:
                kp_out[i, :, :m, j] = kp[:m, f].reshape(m, nc, cl, v, 2).transpose(1, 0, 2, 3, 4)
                sc_out[i, :, :m, j] = sc[:m, f].reshape(m, nc, cl, v).transpose(1, 0, 2, 3)
    raw = RawBatch(torch.from_numpy(kp_out), torch.from_numpy(sc_out), torch.from_numpy(half),
                   torch.from_numpy(persons), None if has_next is None else torch.from_numpy(has_next), affine,
                   [_clip_name(c) for c in clips])
    return raw, torch.tensor(labels, dtype=torch.int64)


def _mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a + b) / 2  # mmaction2's score of a bone / motion, in the operands' dtype (then stored float32)


def batch_features(raw: RawBatch, cfg: PipelineConfig, compute: Callable | None = None) -> torch.Tensor:
    """Worker side: float32 (N, num_clips, M, clip_len, V, C) on raw's device, as `prepare_batch` returns.
    `compute`: `features_of` (the default) or it compiled (`compiled_features`); a non-finite sample is an error
    naming its clip either way."""
    parent = None
    if "b" in cfg.feats or "bm" in cfg.feats:  # outside features_of: the cached NumPy table is not for tracing
        v = raw.keypoint.shape[-2]
        if v != len(_bone_arrays(cfg.dataset)[2]):
            bone_index(cfg.dataset, v)  # raises, naming the joint counts
        parent = _parents_on(cfg.dataset, raw.keypoint.device)
    out, bad = (compute or features_of)(raw.keypoint, raw.score, raw.half_image, raw.persons, raw.has_next,
                                        raw.affine, parent, cfg=cfg)
    if bool(bad.any()):  # one sync per batch, as the NumPy path's check
        raise non_finite_error(raw.names, bad.nonzero().flatten().tolist())
    return out


@functools.lru_cache(maxsize=None)
def _parents_on(dataset: str, device: torch.device) -> torch.Tensor:
    """Each joint's bone parent as a tensor on `device`, made once: a copy from NumPy to a GPU at every batch would
    wait for the GPU (pageable memory)."""
    return torch.as_tensor(_bone_arrays(dataset)[2].copy(), device=device)


def compiled_features(cfg: PipelineConfig) -> Callable:
    """`features_of` for `cfg` under torch.compile (inductor, default mode, static shapes: a loader's batches have
    one shape), for train.compile: its ~30 elementwise passes fused into a few kernels, launches that bind a GPU
    at small batches. On CPU its output equals the eager one bit for bit (tests/test_transforms_torch.py). No
    CUDA graphs here: the model's graph takes this output as its input, and two graph trees in a row are not
    what CUDA graph trees are made for."""
    # emulate_precision_casts: inductor otherwise keeps a float16 pkl's intermediates in float32 between the
    # ops that eager rounds to float16 after each (up to 3e-3 apart from the eager and NumPy features)
    return torch.compile(functools.partial(features_of, cfg=cfg), dynamic=False,
                         options={"emulate_precision_casts": True})


def _put(dst: torch.Tensor, op: Callable, *args) -> None:
    """op(*args) written into `dst` (a strided slice of the output): with out=, no temporary, in eager mode;
    assigned while dynamo traces, which cannot trace out= into a non-contiguous tensor (inductor fuses the copy)."""
    if torch.compiler.is_compiling():
        dst.copy_(op(*args))
    else:
        op(*args, out=dst)


def features_of(keypoint: torch.Tensor, score: torch.Tensor, half_image: torch.Tensor, persons: torch.Tensor,
                has_next: torch.Tensor | None, affine: torch.Tensor | None, parent: torch.Tensor | None, *,
                cfg: PipelineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A RawBatch's tensors (and `parent`: each joint's bone parent, where bones are wanted) -> (features, (N,)
    bool: the sample has a NaN / inf): pure tensor arithmetic, so it can be compiled."""
    feats = list(cfg.feats)
    half = half_image.view(-1, 1, 1, 1, 1, 1, 2)
    kp = (keypoint - half) / half  # PreNormalize2D, in the keypoint dtype
    if affine is not None:  # augment.apply_affine: x' = a00 x + a01 y + t0, y' = a10 x + a11 y + t1
        a = affine.to(kp.dtype).view(-1, 1, 1, 1, 1, 1, 2, 3)
        x, y = kp[..., 0], kp[..., 1]
        kp = torch.stack([a[..., 0, 0] * x + a[..., 0, 1] * y + a[..., 0, 2],
                          a[..., 1, 0] * x + a[..., 1, 1] * y + a[..., 1, 2]], dim=-1)
    jd = torch.promote_types(kp.dtype, score.dtype)  # GenSkeFeat concatenates keypoint and score
    joints, scores = kp.to(jd), score.to(jd)
    n, nc, mp, _, cl, v, _ = joints.shape
    # Each stream is written straight into its channels of the output (ops with out=: computed in the
    # operands' dtype, stored as float32), no per-stream temporaries and no concatenation.
    out = torch.empty((n, nc, mp, cl, v, 3 * len(feats)), dtype=torch.float32, device=joints.device)

    def slot(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        k = 3 * feats.index(name)
        return out[..., k:k + 2], out[..., k + 2]

    if "j" in feats:
        xy, sc = slot("j")
        xy.copy_(joints[:, :, :, 0])
        sc.copy_(scores[:, :, :, 0])
    if "b" in feats or "bm" in feats:
        if "bm" in feats:  # bones of the frame and the next frame, float32 as JointToBone stores them
            bone = (joints - joints.index_select(-2, parent)).float()
            bone_s = _mean(scores, scores.index_select(-1, parent)).float()
            if "b" in feats:
                xy, sc = slot("b")
                xy.copy_(bone[:, :, :, 0])
                sc.copy_(bone_s[:, :, :, 0])
            xy, sc = slot("bm")
            _put(xy, torch.sub, bone[:, :, :, 1], bone[:, :, :, 0])
            _put(sc, torch.div, bone_s[:, :, :, 0] + bone_s[:, :, :, 1], 2)
        else:
            cur, cur_s = joints[:, :, :, 0], scores[:, :, :, 0]
            xy, sc = slot("b")
            _put(xy, torch.sub, cur, cur.index_select(-2, parent))
            _put(sc, torch.div, cur_s + cur_s.index_select(-1, parent), 2)
    if "jm" in feats:
        xy, sc = slot("jm")
        _put(xy, torch.sub, joints[:, :, :, 1], joints[:, :, :, 0])
        _put(sc, torch.div, scores[:, :, :, 0] + scores[:, :, :, 1], 2)
    if has_next is not None:  # ToMotion: motion at the sequence's last frame is 0, score included
        last = ~has_next[:, :, None, :, None, None]
        for name in ("jm", "bm"):
            if name in feats:
                k = 3 * feats.index(name)
                out[..., k:k + 3].masked_fill_(last, 0.0)
    padded = torch.arange(mp, device=out.device) >= persons[:, None]  # (N, M)
    out.masked_fill_(padded[:, None, :, None, None, None], 0.0)  # FormatGCNInput's zero padding
    # NaN / inf propagate into a per-sample sum: one reduction instead of an isfinite pass
    return out, ~torch.isfinite(out.view(n, -1).sum(dim=1))


def model_inputs(x: torch.Tensor | RawBatch, device: torch.device | str, cfg: PipelineConfig | None,
                 compute: Callable | None = None) -> torch.Tensor:
    """A loader batch's model input on `device`: a tensor (pipeline.device=cpu) is moved there; a RawBatch
    (pipeline.device=worker) is moved there and its features computed there (by `compute`, see batch_features)."""
    if isinstance(x, RawBatch):
        if cfg is None:
            raise ValueError("a RawBatch (pipeline.device=worker) needs the pipeline config to compute its features")
        return batch_features(x.to(device, non_blocking=True), cfg, compute)
    return x.to(device, non_blocking=True)


def prepare_batch_torch(clips: Sequence[Any], cfg: PipelineConfig, train: bool, rng: np.random.Generator | None = None,
                        num_clips: int | None = None, device: torch.device | str = "cpu"
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """`prepare_batch` with the features computed by torch on `device`: (x on device, labels on CPU)."""
    raw, labels = gather_batch(clips, cfg, train, rng, num_clips)
    return batch_features(raw.to(device), cfg), labels
