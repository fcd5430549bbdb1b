"""Gaussian keypoint heatmaps: encode (unbiased, sub-pixel centres) and decode (argmax + DARK refinement).

Coordinates are continuous, pixel i covering [i, i + 1) with its centre at i + 0.5 (PIL's convention), so image,
crop and heatmap coordinates differ by a plain scale: x_heatmap = x_input * W_heatmap / W_input, and a horizontal
flip is x -> W - x at every resolution. COCO's keypoints are pixel indices instead (pixel i's centre at i):
coco_pose/dataset.py's `coco_to_continuous` adds 0.5 to them on loading, and `continuous_to_coco` subtracts it
where predictions become COCO results. Encoding evaluates the Gaussian at pixel centres with the exact (float)
keypoint as mean (mmpose's `use_udp`-style unbiased encoding); decoding takes the argmax and refines it with
DARK's second-order Taylor step on the log of a locally blurred heatmap (Zhang et al., CVPR 2020), which
recovers an encoded keypoint to a small fraction of a pixel.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def keypoint_weights(visibility: np.ndarray, occluded_weight: float = 0.5) -> np.ndarray:
    """COCO visibility (0 unlabelled, 1 labelled but occluded, 2 visible) -> loss weight (0, 0.5, 1)."""
    v = np.asarray(visibility)
    return np.where(v >= 2, 1.0, np.where(v >= 1, occluded_weight, 0.0)).astype(np.float32)


def to_heatmap_coords(keypoints: np.ndarray, input_size: tuple[int, int], heatmap_size: tuple[int, int]) -> np.ndarray:
    (in_h, in_w), (hm_h, hm_w) = input_size, heatmap_size
    return np.asarray(keypoints, dtype=np.float64).reshape(-1, 2) * np.array([hm_w / in_w, hm_h / in_h])


def target_weights(mu: np.ndarray, weights: np.ndarray, heatmap_size: tuple[int, int], sigma: float) -> np.ndarray:
    """Weights of keypoints at heatmap coordinates `mu`: 0 where the Gaussian lies entirely outside the heatmap
    (3 sigma) or the keypoint is not finite: an all-zero target would teach the model to predict nothing for a
    joint that is merely cut off."""
    hm_h, hm_w = heatmap_size
    w = np.asarray(weights, dtype=np.float32).copy()
    r = 3 * sigma
    with np.errstate(invalid="ignore"):
        outside = (mu[:, 0] < -r) | (mu[:, 0] > hm_w + r) | (mu[:, 1] < -r) | (mu[:, 1] > hm_h + r)
    w[outside | ~np.isfinite(mu).all(axis=1)] = 0.0
    return w


def encode_heatmaps(keypoints: np.ndarray, weights: np.ndarray, input_size: tuple[int, int],
                    heatmap_size: tuple[int, int], sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (K, 2) as (x, y) in input pixels -> heatmaps (K, Hh, Wh) float32 and per-keypoint weights (K,)."""
    mu = to_heatmap_coords(keypoints, input_size, heatmap_size)
    w = target_weights(mu, weights, heatmap_size, sigma)
    maps = render_heatmaps(torch.from_numpy(np.nan_to_num(mu))[None], torch.from_numpy(w)[None], heatmap_size,
                           sigma)[0]
    return maps.numpy(), w


def render_heatmaps(mu: torch.Tensor, weights: torch.Tensor, heatmap_size: tuple[int, int],
                    sigma: float) -> torch.Tensor:
    """Gaussians at heatmap coordinates mu (B, K, 2) -> (B, K, Hh, Wh) float32, zero where weight is 0.

    Runs wherever `mu` lives: the training loop renders targets on the GPU, so a 512x512x17 target never
    passes through the DataLoader's inter-process queues or host-to-device copies.
    """
    hm_h, hm_w = heatmap_size
    mu = mu.to(torch.float32)
    xs = torch.arange(hm_w, dtype=torch.float32, device=mu.device) + 0.5
    ys = torch.arange(hm_h, dtype=torch.float32, device=mu.device) + 0.5
    gx = torch.exp(-((xs - mu[..., :1]) ** 2) / (2 * sigma ** 2))  # (B, K, Wh)
    gy = torch.exp(-((ys - mu[..., 1:]) ** 2) / (2 * sigma ** 2))  # (B, K, Hh)
    maps = gy[..., :, None] * gx[..., None, :]
    return maps * (weights > 0).to(maps.dtype)[..., None, None]


def _gaussian_kernel(sigma: float, radius: int, device, dtype) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def decode_heatmaps(heatmaps: torch.Tensor | np.ndarray, blur_sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N, K, H, W) -> keypoints (N, K, 2) in heatmap pixels (continuous) and peak scores (N, K).

    Only a window around each peak is blurred and differentiated, so decoding a 512x512 heatmap costs the same
    as a 64x48 one. Peaks closer to the border than the blur window are refined on the raw heatmap, with the
    stencil cells beyond the border extrapolated quadratically in log space (exact for a Gaussian).
    """
    hm = torch.as_tensor(heatmaps).detach().float()
    if hm.ndim != 4:
        raise ValueError(f"heatmaps must be (N, K, H, W), got shape {tuple(hm.shape)}")
    n, k, h, w = hm.shape
    if h < 3 or w < 3:
        raise ValueError(f"heatmaps of {h}x{w} are too small to decode (3x3 at least)")
    dev = hm.device
    flat = hm.reshape(n * k, h * w)
    scores, idx = flat.max(dim=1)
    py, px = idx // w, idx % w
    radius = max(1, math.ceil(3 * blur_sigma)) if blur_sigma > 0 else 0
    pad = radius + 2  # a 5x5 log patch around the peak, each cell with full blur support
    padded = F.pad(hm.reshape(n * k, 1, h, w), (pad, pad, pad, pad))
    offs = torch.arange(-pad, pad + 1, device=dev)
    rows = (py[:, None] + pad + offs[None, :])[:, :, None]  # (NK, S, 1)
    cols = (px[:, None] + pad + offs[None, :])[:, None, :]  # (NK, 1, S)
    win = padded[torch.arange(n * k, device=dev)[:, None, None], 0, rows, cols][:, None]  # (NK, 1, S, S)
    raw = win[:, 0, radius:radius + 5, radius:radius + 5]
    if radius:
        kern = _gaussian_kernel(blur_sigma, radius, dev, hm.dtype)
        blurred = F.conv2d(F.conv2d(win, kern.view(1, 1, 1, -1)), kern.view(1, 1, -1, 1))[:, 0]
        # A blur window crossing the border would mix in zeros (biasing the peak inwards): there the raw
        # heatmap is used; the log of a Gaussian is quadratic, so the Taylor step on it is exact anyway.
        near = (px < pad) | (px > w - 1 - pad) | (py < pad) | (py > h - 1 - pad)
        raw = torch.where(near[:, None, None], raw, blurred)
    lg = torch.log(raw.clamp_min(1e-10))  # (NK, 5, 5), peak at [2, 2]
    # Cells beyond the border: quadratic extrapolation from the inside (columns first, then rows).
    left, right = (px == 0)[:, None], (px == w - 1)[:, None]
    lg[:, :, 1] = torch.where(left, 3 * lg[:, :, 2] - 3 * lg[:, :, 3] + lg[:, :, 4], lg[:, :, 1])
    lg[:, :, 3] = torch.where(right, 3 * lg[:, :, 2] - 3 * lg[:, :, 1] + lg[:, :, 0], lg[:, :, 3])
    top, bottom = (py == 0)[:, None], (py == h - 1)[:, None]
    lg[:, 1, :] = torch.where(top, 3 * lg[:, 2, :] - 3 * lg[:, 3, :] + lg[:, 4, :], lg[:, 1, :])
    lg[:, 3, :] = torch.where(bottom, 3 * lg[:, 2, :] - 3 * lg[:, 1, :] + lg[:, 0, :], lg[:, 3, :])
    c = lg[:, 1:4, 1:4]
    dx = 0.5 * (c[:, 1, 2] - c[:, 1, 0])
    dy = 0.5 * (c[:, 2, 1] - c[:, 0, 1])
    dxx = c[:, 1, 2] - 2 * c[:, 1, 1] + c[:, 1, 0]
    dyy = c[:, 2, 1] - 2 * c[:, 1, 1] + c[:, 0, 1]
    dxy = 0.25 * (c[:, 2, 2] - c[:, 2, 0] - c[:, 0, 2] + c[:, 0, 0])
    det = dxx * dyy - dxy ** 2
    # A maximum has a negative-definite Hessian; anywhere else (flat map, plateau) keep the integer peak.
    ok = (det > 1e-12) & (dxx < 0) & (scores > 0)
    safe = torch.where(ok, det, torch.ones_like(det))
    ox = torch.where(ok, -(dyy * dx - dxy * dy) / safe, torch.zeros_like(det)).clamp(-1.5, 1.5)
    oy = torch.where(ok, -(dxx * dy - dxy * dx) / safe, torch.zeros_like(det)).clamp(-1.5, 1.5)
    x = (px.float() + ox + 0.5).clamp(0, w)
    y = (py.float() + oy + 0.5).clamp(0, h)
    coords = torch.stack([x, y], dim=-1).reshape(n, k, 2)
    return coords.cpu().numpy(), scores.reshape(n, k).cpu().numpy()


def heatmap_to_input(coords: np.ndarray, input_size: tuple[int, int], heatmap_size: tuple[int, int]) -> np.ndarray:
    (in_h, in_w), (hm_h, hm_w) = input_size, heatmap_size
    return np.asarray(coords, dtype=np.float64) * np.array([in_w / hm_w, in_h / hm_h])


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Points (..., 2) through a 2x3 affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]
