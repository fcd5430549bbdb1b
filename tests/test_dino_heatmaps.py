"""Gaussian heatmap encode/decode: sub-pixel round trip, visibility weights, robustness."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recognizer_core.coco_pose.heatmaps import decode_heatmaps, encode_heatmaps, heatmap_to_input, keypoint_weights


@pytest.mark.parametrize("input_size,heatmap_size,sigma", [
    ((256, 192), (64, 48), 2.0), ((64, 48), (16, 12), 1.0), ((512, 512), (512, 512), 6.0), ((128, 96), (32, 24), 2.0),
])
def test_round_trip_recovers_keypoints_to_subpixel(input_size, heatmap_size, sigma):
    rng = np.random.default_rng(1)
    n = min(40, max(2, 100_000 // (heatmap_size[0] * heatmap_size[1])))  # border included
    kp = np.stack([rng.uniform(0, input_size[1], (n, 17)), rng.uniform(0, input_size[0], (n, 17))], -1)
    maps = np.stack([encode_heatmaps(k, np.ones(17), input_size, heatmap_size, sigma)[0] for k in kp])
    coords, scores = decode_heatmaps(torch.from_numpy(maps), blur_sigma=sigma)
    back = heatmap_to_input(coords, input_size, heatmap_size)
    stride = input_size[1] / heatmap_size[1]
    assert np.abs(back - kp).max() < 0.01 * stride  # "within a pixel" with a wide margin
    assert scores.min() > 0.5  # a peak half a pixel off the grid still scores exp(-0.25/sigma^2)


def test_decoding_is_subpixel_on_noisy_heatmaps():
    rng = np.random.default_rng(0)
    kp = np.stack([rng.uniform(10, 38, 17), rng.uniform(10, 54, 17)], -1)
    hm, _ = encode_heatmaps(kp, np.ones(17), (64, 48), (64, 48), 2.0)
    noisy = hm + rng.normal(0, 0.03, hm.shape).astype(np.float32)
    coords, _ = decode_heatmaps(noisy[None], blur_sigma=2.0)
    err = np.abs(coords[0] - kp)
    assert err.max() < 0.5
    # the refinement matters: the integer argmax alone is off by up to half a pixel on average ~0.25
    argmax_err = np.abs(np.floor(coords[0]) + 0.5 - kp).mean()
    assert err.mean() < argmax_err


def test_visibility_weights_and_cut_off_keypoints():
    assert keypoint_weights(np.array([0, 1, 2])).tolist() == [0.0, 0.5, 1.0]
    kp = np.array([[20.0, 30.0], [-100.0, 10.0], [24.0, 200.0], [np.nan, 3.0]] + [[5.0, 5.0]] * 13)
    w = keypoint_weights(np.array([2, 2, 1, 2] + [0] * 13))
    hm, w_out = encode_heatmaps(kp, w, (64, 48), (16, 12), 1.0)
    assert w_out[0] == 1.0 and hm[0].max() > 0.5
    assert w_out[1] == 0.0 and w_out[2] == 0.0 and w_out[3] == 0.0  # far outside the crop / not finite
    assert not hm[1:].any()  # unlabelled and cut-off joints have all-zero targets


def test_flat_and_tiny_heatmaps():
    coords, scores = decode_heatmaps(np.zeros((1, 2, 8, 6), np.float32))
    assert np.isfinite(coords).all() and (scores == 0).all()
    with pytest.raises(ValueError, match="too small"):
        decode_heatmaps(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(N, K, H, W\)"):
        decode_heatmaps(np.zeros((2, 8, 6), np.float32))


def test_targets_are_gaussians_at_pixel_centres():
    """Independent reference: the Gaussian evaluated on the pixel-centre grid, one keypoint at a time."""
    from recognizer_core.coco_pose.heatmaps import render_heatmaps, target_weights, to_heatmap_coords

    rng = np.random.default_rng(2)
    kp = np.stack([rng.uniform(-20, 212, 17), rng.uniform(-20, 276, 17)], -1)
    w = keypoint_weights(rng.integers(0, 3, 17))
    maps, w_out = encode_heatmaps(kp, w, (256, 192), (64, 48), 2.0)
    ys, xs = np.mgrid[0:64, 0:48] + 0.5
    for j in range(17):
        mx, my = kp[j, 0] / 4, kp[j, 1] / 4
        expected = np.exp(-((xs - mx) ** 2 + (ys - my) ** 2) / 8.0) if w_out[j] > 0 else np.zeros((64, 48))
        np.testing.assert_allclose(maps[j], expected, atol=1e-6)
        far = mx < -6 or mx > 54 or my < -6 or my > 70
        assert w_out[j] == (0.0 if far else w[j])
    # the on-device path (the training loop's) gives the same maps from coordinates and weights
    mu = to_heatmap_coords(kp, (256, 192), (64, 48))
    w2 = target_weights(mu, w, (64, 48), 2.0)
    dev = render_heatmaps(torch.from_numpy(mu)[None], torch.from_numpy(w2)[None], (64, 48), 2.0)[0]
    np.testing.assert_array_equal(w2, w_out)
    np.testing.assert_allclose(dev.numpy(), maps, atol=1e-6)
