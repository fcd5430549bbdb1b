"""Training augmentations of the training guide (section 6.3): RandomRescale, RandomRotate, RandomShift.

mmaction2 1.2.0 has no skeleton transforms of these names (its RandomRescale resizes images); PYSKL has
RandomScale / RandomRot acting on normalised joint coordinates before GenSkeFeat. These follow PYSKL's
placement and act on the PreNormalize2D coordinates (image centre at 0, image edges at +-1) of the sampled
joints, before features are computed, one random draw per sample (all persons and frames alike):

    xy' = shift + rotate(scale * xy)

- RandomRescale(scale_factor=(lo, hi)): s ~ U(lo, hi), isotropic about the image centre (PYSKL draws one
  factor per axis; isotropic keeps body proportions, which a fall detector reads).
- RandomRotate(angle=a degrees): theta ~ U(-a, a), a rotation of the image plane about its centre, positive =
  counter-clockwise on screen (y points down). Done in pixel-proportional units (x scaled by W/H) so the body
  is rotated, not sheared, on non-square frames (PYSKL rotates the normalised coordinates directly).
- RandomShift(shift_ratio=r): translation by U(-r, r) of the image width (x) and height (y), i.e. by
  U(-2r, 2r) normalised units.

Scale and rotation are linear, so applying them before features equals applying them to the coordinate
channels of j/b/jm/bm afterwards (where the guide lists RandomRescale); shift moves joints only (bones and
motion are differences). Scores are untouched. Padded persons (added after) stay zero.
"""
from __future__ import annotations

import numpy as np


def sample_affine(rng: np.random.Generator, n: int, aspect: np.ndarray,
                  scale: tuple[float, float] | None = None, rotate_deg: float | None = None,
                  shift: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (A (n, 2, 2) float32, t (n, 2) float32) with xy' = A @ xy + t; aspect = W / H per sample.

    Draw order is fixed (scale, angle, shift), so the same Generator state gives the same augmentation.
    """
    aspect = np.broadcast_to(np.asarray(aspect, dtype=np.float64), (n,))
    s = rng.uniform(scale[0], scale[1], size=n) if scale is not None else np.ones(n)
    theta = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg, size=n)) if rotate_deg else np.zeros(n)
    t = rng.uniform(-2 * shift, 2 * shift, size=(n, 2)) if shift else np.zeros((n, 2))
    cos, sin = np.cos(theta), np.sin(theta)
    # Screen rotation with y down: (x, y) -> (x cos + y sin, -x sin + y cos) in square units; conjugated by
    # D = diag(W/H, 1) to act on normalised coordinates: A = D^-1 R D.
    a = np.empty((n, 2, 2))
    a[:, 0, 0] = cos
    a[:, 0, 1] = sin / aspect
    a[:, 1, 0] = -sin * aspect
    a[:, 1, 1] = cos
    a *= s[:, None, None]
    return a.astype(np.float32), t.astype(np.float32)


def apply_affine(x: np.ndarray, y: np.ndarray, a: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x, y coordinate planes -> (x', y') = a @ (x, y) + t, with a (..., 2, 2), t (..., 2) from sample_affine.

    One sample's a (2, 2), t (2,); or per-row a[..., i, j], t[..., i] that broadcast against x, y (a batch).
    """
    a, t = a.astype(x.dtype), t.astype(x.dtype)
    return a[..., 0, 0] * x + a[..., 0, 1] * y + t[..., 0], a[..., 1, 0] * x + a[..., 1, 1] * y + t[..., 1]
