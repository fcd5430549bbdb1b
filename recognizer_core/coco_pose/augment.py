"""Top-down crop geometry and augmentation: box -> affine crop (scale, rotation, flip), occlusion patches.

All randomness comes from a `numpy.random.Generator` the caller derives from (seed, epoch, sample index), so a
sample's augmentation does not depend on which worker or process draws it, and a resumed run repeats it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass
class CropParams:
    center: np.ndarray  # (2,) box centre in image pixels
    size: np.ndarray  # (2,) width, height of the image region mapped onto the crop
    rotation: float = 0.0  # degrees, counter-clockwise
    flip: bool = False


def box_to_crop(bbox_xywh, input_size: tuple[int, int], padding: float = 1.25) -> CropParams:
    """mmpose's bbox_xywh2cs + fixed aspect ratio: grow the box to the crop's aspect, then pad it."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    in_h, in_w = input_size
    aspect = in_w / in_h
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return CropParams(center=np.array([x + bbox_xywh[2] / 2.0, y + bbox_xywh[3] / 2.0]),
                      size=np.array([w, h]) * padding)


def crop_matrix(p: CropParams, input_size: tuple[int, int]) -> np.ndarray:
    """2x3 affine mapping image coordinates to crop coordinates (continuous pixels, flip included)."""
    in_h, in_w = input_size
    s = np.array([in_w / p.size[0], in_h / p.size[1]])
    a = math.radians(p.rotation)
    # Rotating the crop window counter-clockwise rotates the content clockwise: y points down in images.
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    lin = np.diag(s) @ rot
    t = np.array([in_w / 2.0, in_h / 2.0]) - lin @ p.center
    m = np.concatenate([lin, t[:, None]], axis=1)
    if p.flip:
        m = np.array([[-1.0, 0.0, in_w], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0.0, 0.0, 1.0]])
    return m


def invert_affine(m: np.ndarray) -> np.ndarray:
    full = np.vstack([np.asarray(m, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def warp_image(image: Image.Image, matrix: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Crop with PIL's affine transform (bilinear, black outside); returns uint8 (H, W, 3)."""
    in_h, in_w = input_size
    inv = invert_affine(matrix)  # PIL wants crop -> image, in the same pixel-centre convention
    out = image.transform((in_w, in_h), Image.Transform.AFFINE, data=tuple(inv.reshape(-1)),
                          resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(out, dtype=np.uint8)


def random_crop_params(base: CropParams, rng: np.random.Generator, *, scale_factor: float, rotation_factor: float,
                       rotation_prob: float, flip_prob: float) -> CropParams:
    """mmpose RandomBBoxTransform + RandomFlip: box scale in [1-s, 1+s], rotation in [-r, r] with prob, flip."""
    scale = rng.uniform(1.0 - scale_factor, 1.0 + scale_factor)
    rotation = rng.uniform(-rotation_factor, rotation_factor) if rng.random() < rotation_prob else 0.0
    flip = bool(rng.random() < flip_prob)
    return CropParams(center=base.center.copy(), size=base.size * scale, rotation=float(rotation), flip=flip)


def occlude(image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray, rng: np.random.Generator, *,
            max_keypoints: int = 4, size_range: tuple[float, float] = (0.05, 0.15)) -> list[int]:
    """The guide's occlusion augmentation: random-colour patches over 1..max_keypoints labelled keypoints.

    Patch sides are a fraction of the crop's sides. The targets stay: the model must infer hidden joints.
    Edits `image` in place and returns the occluded keypoint indices.
    """
    h, w = image.shape[:2]
    inside = (visible > 0) & (keypoints[:, 0] >= 0) & (keypoints[:, 0] < w) & (keypoints[:, 1] >= 0) & (
        keypoints[:, 1] < h)
    candidates = np.flatnonzero(inside)
    if len(candidates) == 0:
        return []
    n = int(rng.integers(1, min(max_keypoints, len(candidates)) + 1))
    chosen = rng.choice(candidates, size=n, replace=False)
    for j in chosen:
        pw = max(1, int(round(rng.uniform(*size_range) * w)))
        ph = max(1, int(round(rng.uniform(*size_range) * h)))
        # The patch covers the keypoint, not always centred on it.
        cx = keypoints[j, 0] + rng.uniform(-0.25, 0.25) * pw
        cy = keypoints[j, 1] + rng.uniform(-0.25, 0.25) * ph
        x0, y0 = int(max(0, round(cx - pw / 2))), int(max(0, round(cy - ph / 2)))
        x1, y1 = int(min(w, x0 + pw)), int(min(h, y0 + ph))
        image[y0:y1, x0:x1] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return [int(j) for j in chosen]
