"""Skeleton pipeline: config validation, train-mode sampling, augmentations, prepare_batch."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from recognizer_core.config import ConfigError, validate_config
from recognizer_core.skeleton import sampling, transforms
from recognizer_core.skeleton.augment import apply_affine, sample_affine
from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.transforms import PipelineConfig, prepare_batch, train_sample

H, W = 480, 640


def _clip(m: int, t: int, seed: int = 0, label: int = 1, clip_id: str = "c"):
    rng = np.random.default_rng(seed)
    kp = (rng.random((m, t, 17, 2)) * [W, H]).astype(np.float32)
    score = rng.random((m, t, 17)).astype(np.float32)
    return SkeletonClip(clip_id=clip_id, label=label, keypoint=kp, keypoint_score=score, img_shape=(H, W),
                        total_frames=t)


# ---- config ----

def test_config_defaults_and_validation():
    cfg = PipelineConfig()
    assert cfg.feats == ["b"] and cfg.clip_len == 100 and cfg.num_person == 4 and cfg.in_channels == 3
    assert PipelineConfig(feats=["j", "b", "jm", "bm"]).in_channels == 12
    with pytest.raises(ConfigError, match="dataset.*nturgb\\+d.*3D"):
        validate_config(PipelineConfig, {"dataset": "nturgb+d"}, "fight.yaml")
    with pytest.raises(ConfigError, match="feats"):
        validate_config(PipelineConfig, {"feats": ["b", "b"]}, "x.yaml")
    with pytest.raises(ConfigError, match="feats"):
        validate_config(PipelineConfig, {"feats": ["bone"]}, "x.yaml")
    with pytest.raises(ConfigError, match="random_rescale"):
        validate_config(PipelineConfig, {"random_rescale": [1.2, 0.8]}, "x.yaml")
    with pytest.raises(ConfigError, match="unknown field"):
        validate_config(PipelineConfig, {"clip_length": 50}, "x.yaml")


# ---- train-mode frame sampling ----

@pytest.mark.parametrize("t", [1, 37, 100, 150, 199, 200, 1000])
def test_train_frame_indices_regimes(t):
    clip_len, num_clips = 100, 3
    inds = sampling.train_frame_indices(t, clip_len, num_clips, np.random.default_rng(t))
    assert inds.dtype == np.int32 and inds.shape == (clip_len * num_clips,)
    assert inds.min() >= 0 and inds.max() < t
    for clip in inds.reshape(num_clips, clip_len):
        if t < clip_len:  # consecutive frames from a random start, looping
            np.testing.assert_array_equal(clip, (clip[0] + np.arange(clip_len)) % t)
        else:  # increasing, every skipped gap is a single frame when t < 2 * clip_len
            steps = np.diff(clip)
            assert (steps >= 1).all()
            if t < 2 * clip_len:
                assert set(np.unique(steps)) <= {1, 2} and (steps == 2).sum() + clip[0] <= t - clip_len
            else:  # one frame per uniform bin
                bins = np.arange(clip_len) * t // clip_len
                assert ((clip >= bins) & (clip < np.append(bins[1:], t))).all()


def test_train_frame_indices_deterministic_and_random():
    a = sampling.train_frame_indices(150, 100, 2, np.random.default_rng(1))
    b = sampling.train_frame_indices(150, 100, 2, np.random.default_rng(1))
    c = sampling.train_frame_indices(150, 100, 2, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="total_frames"):
        sampling.train_frame_indices(0, 100, 1, np.random.default_rng(0))


def test_train_sample_without_augmentation_is_the_test_pipeline_on_the_sampled_frames():
    clip = _clip(3, 260, seed=3)
    cfg = PipelineConfig(feats=["j", "b"], clip_len=50, num_clips=2, num_person=2)
    x = train_sample(clip.keypoint, clip.keypoint_score, clip.img_shape, cfg, np.random.default_rng(5))
    inds = sampling.train_frame_indices(260, 50, 2, np.random.default_rng(5))
    # A clip made of exactly the sampled frames is sampled as-is by the test pipeline (k = 0 skips).
    sub_cfg = PipelineConfig(feats=["j", "b"], clip_len=100, num_person=2)
    want, sub_inds = transforms.test_sample(clip.keypoint[:, inds], clip.keypoint_score[:, inds], (H, W), sub_cfg)
    np.testing.assert_array_equal(sub_inds, np.arange(100))
    assert x.shape == (2, 2, 50, 17, 6)
    np.testing.assert_array_equal(x, _split_clips(want[0], 2))


def _split_clips(x: np.ndarray, num_clips: int) -> np.ndarray:
    """(M, num_clips * L, V, C) -> (num_clips, M, L, V, C), FormatGCNInput's reshape."""
    m, total, v, c = x.shape
    return x.reshape(m, num_clips, total // num_clips, v, c).transpose(1, 0, 2, 3, 4)


# ---- augmentations ----

# Three known points in normalised coordinates: the image centre, the right-edge and bottom-edge midpoints.
PX = np.array([0.0, 1.0, 0.0], dtype=np.float32)
PY = np.array([0.0, 0.0, 1.0], dtype=np.float32)


def _apply_all(a: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The three points moved by each sample's affine: x, y (n, 3)."""
    moved = [apply_affine(PX, PY, a[i], t[i]) for i in range(len(a))]
    return np.stack([m[0] for m in moved]), np.stack([m[1] for m in moved])


def test_rescale_scales_about_the_image_centre():
    a, t = sample_affine(np.random.default_rng(0), 64, np.full(64, W / H), scale=(0.8, 1.2))
    x, y = _apply_all(a, t)
    s = x[:, 1]  # the right-edge point moves to (s, 0)
    assert ((s >= 0.8) & (s <= 1.2)).all() and s.std() > 0.05
    np.testing.assert_allclose(np.stack([x[:, 0], y[:, 0]]), 0, atol=1e-7)  # the centre is fixed
    np.testing.assert_allclose(y[:, 2], s, rtol=1e-6)  # isotropic
    np.testing.assert_allclose(y[:, 1], 0, atol=1e-7)


def test_rotate_is_an_image_plane_rotation_within_the_angle():
    aspect = W / H
    a, t = sample_affine(np.random.default_rng(1), 256, np.full(256, aspect), rotate_deg=15.0)
    x, y = (v.astype(np.float64) for v in _apply_all(a, t))
    # In pixel-proportional units (x * W/H) the right-edge point keeps its distance to the centre.
    px, py = x[:, 1] * aspect, y[:, 1]
    np.testing.assert_allclose(np.hypot(px, py), aspect, rtol=1e-5)
    angle = np.degrees(np.arctan2(-py, px))  # screen counter-clockwise (y down) is positive
    assert np.abs(angle).max() <= 15.0 + 1e-4 and angle.min() < -10 and angle.max() > 10
    # Right angles stay right angles (no shear on a 4:3 frame).
    qx, qy = x[:, 2] * aspect, y[:, 2]
    np.testing.assert_allclose(px * qx + py * qy, 0, atol=1e-5)


def test_known_rotation_by_90_degrees():
    theta = np.deg2rad(90.0)
    a = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]], dtype=np.float32)
    x, y = apply_affine(PX, PY, a, np.zeros(2, np.float32))
    np.testing.assert_allclose([x[1], y[1]], [0.0, -1.0], atol=1e-6)  # right edge -> top (y down)
    np.testing.assert_allclose([x[2], y[2]], [1.0, 0.0], atol=1e-6)  # bottom -> right


def test_shift_translates_all_joints_by_the_same_bounded_offset():
    a, t = sample_affine(np.random.default_rng(2), 128, np.ones(128), shift=0.1)
    x, y = _apply_all(a, t)
    np.testing.assert_allclose(x - PX, np.repeat(t[:, :1], 3, axis=1), atol=1e-6)
    np.testing.assert_allclose(y - PY, np.repeat(t[:, 1:], 3, axis=1), atol=1e-6)
    assert np.abs(t).max() <= 0.2 and np.abs(t).max() > 0.15  # 10% of the image = 0.2 normalised units


def test_augmentation_is_deterministic_keeps_scores_padding_and_bones_under_shift():
    clips = [_clip(1, 120, seed=1), _clip(3, 90, seed=2)]
    base = dict(feats=["j", "b"], clip_len=40, num_person=4)
    aug = PipelineConfig(**base, random_rescale=(0.8, 1.2), random_shift=0.1, random_rotate=15)
    x1, _ = prepare_batch(clips, aug, train=True, rng=np.random.default_rng(9))
    x2, _ = prepare_batch(clips, aug, train=True, rng=np.random.default_rng(9))
    x3, _ = prepare_batch(clips, aug, train=True, rng=np.random.default_rng(10))
    np.testing.assert_array_equal(x1.numpy(), x2.numpy())
    assert not np.array_equal(x1.numpy(), x3.numpy())
    assert (x1[0, :, 1:] == 0).all()  # clip 0 has one person: persons 1..3 are padding
    # Same frames without augmentation: the scores (channels 2, 5) are unchanged.
    plain, _ = prepare_batch(clips, PipelineConfig(**base), train=True, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(x1[..., [2, 5]].numpy(), plain[..., [2, 5]].numpy())
    # Shift alone moves joints but not bones (a difference of joints).
    shifted, _ = prepare_batch(clips, PipelineConfig(**base, random_shift=0.1), train=True,
                               rng=np.random.default_rng(9))
    np.testing.assert_allclose(shifted[..., 3:5].numpy(), plain[..., 3:5].numpy(), atol=1e-6)
    assert np.abs(shifted[1, ..., :2].numpy() - plain[1, ..., :2].numpy()).max() > 1e-3


# ---- prepare_batch ----

def test_prepare_batch_shapes_labels_and_inputs():
    clips = [_clip(2, 150, seed=0, label=1), _clip(6, 30, seed=1, label=0), _clip(0, 10, seed=2, label=1)]
    cfg = PipelineConfig(feats=["j", "b", "jm", "bm"], clip_len=32, num_clips=2, test_num_clips=3, num_person=4)
    x, y = prepare_batch(clips, cfg, train=False)
    assert tuple(x.shape) == (3, 3, 4, 32, 17, 12) and str(x.dtype) == "torch.float32"
    assert y.tolist() == [1, 0, 1] and str(y.dtype) == "torch.int64"
    assert (x[2] == 0).all()  # no persons: all padding, no NaN
    for i, c in enumerate(clips[:2]):  # batched == per-sample
        one, _ = transforms.test_sample(c.keypoint, c.keypoint_score, c.img_shape, cfg)
        np.testing.assert_array_equal(x[i].numpy(), one)
    xt, _ = prepare_batch(clips, cfg, train=True, rng=np.random.default_rng(0))
    assert tuple(xt.shape) == (3, 2, 4, 32, 17, 12)
    # mmaction2 annotation dicts and duck-typed objects give the same result as SkeletonClip.
    anns = [c.to_annotation() for c in clips]
    ducks = [SimpleNamespace(**{k: getattr(c, k) for k in ("keypoint", "keypoint_score", "img_shape",
                                                            "total_frames", "label")}) for c in clips]
    for other in (anns, ducks):
        xo, yo = prepare_batch(other, cfg, train=False)
        np.testing.assert_array_equal(xo.numpy(), x.numpy())
        assert yo.tolist() == y.tolist()


@pytest.mark.parametrize("chunk_bytes", [1, 200_000, transforms.CHUNK_BYTES])
@pytest.mark.parametrize("num_clips", [1, 2])
def test_prepare_batch_runs_equal_per_sample(monkeypatch, chunk_bytes, num_clips):
    """Clips are computed in runs (cut by size and dtype; in place or scattered): each equals its own test_sample."""
    monkeypatch.setattr(transforms, "CHUNK_BYTES", chunk_bytes)
    clips = [_clip(m, t, seed=i) for i, (m, t) in enumerate([(3, 80), (1, 45), (5, 130), (0, 12), (2, 60), (4, 90)])]
    clips[4].keypoint = clips[4].keypoint.astype(np.float16)  # another dtype: its own run, in float16
    full = [_clip(2, 70, seed=7), _clip(3, 50, seed=8)]  # every person kept: rows fill out in order
    cfg = PipelineConfig(feats=["bm", "j", "jm", "b"], clip_len=24, num_person=2, test_num_clips=num_clips)
    for batch in (clips, full):
        x, _ = prepare_batch(batch, cfg, train=False)
        again, _ = prepare_batch(full, cfg, train=False)  # work arrays are reused: earlier outputs stay intact
        for i, c in enumerate(batch):
            one, _ = transforms.test_sample(c.keypoint, c.keypoint_score, c.img_shape, cfg)
            np.testing.assert_array_equal(x[i].numpy(), one, err_msg=f"clip {i}")
        if batch is clips:
            assert (x[3] == 0).all()  # no persons: all padding


def test_prepare_batch_all_zero_skeleton_has_no_nan():
    clip = _clip(2, 50)
    clip.keypoint[:] = 0
    clip.keypoint_score[:] = 0
    cfg = PipelineConfig(feats=["j", "b", "jm", "bm"], clip_len=20, random_rescale=(0.8, 1.2),
                         random_shift=0.1, random_rotate=15)
    for train in (False, True):
        x, _ = prepare_batch([clip], cfg, train=train, rng=np.random.default_rng(0))
        assert np.isfinite(x.numpy()).all()


def test_prepare_batch_errors_name_the_clip_and_field():
    cfg = PipelineConfig(clip_len=10)
    bad_total = _clip(1, 20, clip_id="walk_03")
    bad_total.total_frames = 25
    with pytest.raises(ValueError, match="walk_03.*total_frames=25"):
        prepare_batch([bad_total], cfg, train=False)
    ann = _clip(1, 20).to_annotation()
    del ann["keypoint_score"]
    with pytest.raises(ValueError, match="keypoint_score"):
        prepare_batch([ann], cfg, train=False)
    zero_shape = _clip(1, 20, clip_id="cam2").to_annotation()
    zero_shape["img_shape"] = (0, 640)
    with pytest.raises(ValueError, match="cam2.*img_shape"):
        prepare_batch([zero_shape], cfg, train=False)
    with pytest.raises(ValueError, match="rng"):
        prepare_batch([_clip(1, 20)], cfg, train=True)
    nan_clip = _clip(2, 20, clip_id="nan_clip")
    nan_clip.keypoint[1, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite.*nan_clip"):
        prepare_batch([_clip(1, 20), nan_clip], PipelineConfig(clip_len=20, feats=["j"]), train=False)
    with pytest.raises(ValueError, match="keypoint must be"):
        transforms.test_sample(np.zeros((1, 20, 17, 3)), np.zeros((1, 20, 17)), (H, W), cfg)
