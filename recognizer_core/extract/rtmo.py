"""RTMO end2end model contract: pre-processing, post-processing (score threshold, NMS, keypoint threshold).

The contract (mmdeploy's end2end export, as rtmlib runs it): input `(N, 3, H, W)` float32, a letterboxed BGR
image (aspect kept, top-left aligned, padded with 114) with no mean/std (the graph normalises); outputs
`dets (N, K, 5)` = x1, y1, x2, y2, score and `keypoints (N, K, 17, 3)` = x, y, score, in input pixels.
Dividing by the letterbox ratio maps them back to original pixels (no offset: the image is top-left aligned).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recognizer_core.extract.config import PoseModelConfig

NUM_KEYPOINTS = 17


@dataclass
class FramePoses:
    """Persons found in one frame, in original pixels, sorted by detection score (descending)."""

    boxes: np.ndarray       # float32 (P, 4) x1, y1, x2, y2
    scores: np.ndarray      # float32 (P,)
    keypoints: np.ndarray   # float32 (P, 17, 2)
    keypoint_scores: np.ndarray  # float32 (P, 17)

    @classmethod
    def empty(cls) -> "FramePoses":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
                   np.zeros((0, NUM_KEYPOINTS, 2), np.float32), np.zeros((0, NUM_KEYPOINTS), np.float32))

    def __len__(self) -> int:
        return len(self.scores)


def to_model_input(frames_bgr: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 letterboxed BGR -> (N, 3, H, W) float32, the model's input (no normalisation)."""
    if frames_bgr.ndim != 4 or frames_bgr.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3) BGR, got shape {frames_bgr.shape}")
    return np.ascontiguousarray(frames_bgr.transpose(0, 3, 1, 2), dtype=np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of x1y1x2y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression, as rtmlib 0.0.16's `nms` runs it on boxes in original pixels; indices kept,
    by descending score. Its rules, which decide close pairs: a box spans x2 - x1 + 1 pixels (widths, heights and
    intersections get +1: 169 of 7,500 overlapping pairs were kept differently without), scores are ordered by
    argsort()[::-1] (of equal scores the later box comes first) and a box goes when its IoU is over the threshold.
    (`box_iou`, without the +1, stays the tracker's.)"""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]  # in their dtype, as rtmlib computes
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.ones_like(inter), where=union != 0)  # 0/0: rtmlib's NaN drops it
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def postprocess(dets: np.ndarray, keypoints: np.ndarray, ratio: float, image_hw: tuple[int, int],
                cfg: PoseModelConfig) -> FramePoses:
    """One frame's raw outputs `dets (K, 5)`, `keypoints (K, 17, 3)` -> FramePoses in original pixels."""
    if dets.ndim != 2 or dets.shape[1] != 5:
        raise ValueError(f"RTMO output 'dets' must be (K, 5) per image, got {dets.shape}")
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_KEYPOINTS, 3) or len(keypoints) != len(dets):
        raise ValueError(f"RTMO output 'keypoints' must be (K, 17, 3) matching dets, got {keypoints.shape}")
    scores = dets[:, 4]
    # > as rtmlib's multiclass_nms compares: a score equal to the threshold goes, and at score_threshold=0 so do the
    # all-zero rows fixed-K exports (mmdeploy's TensorRT RTMO, model_io.pad_detections) pad with
    valid = ((scores > cfg.score_threshold) & np.isfinite(dets).all(1)
             & np.isfinite(keypoints).all((1, 2)))
    if not valid.any():
        return FramePoses.empty()
    boxes, scores, kpts = dets[valid, :4] / ratio, scores[valid], keypoints[valid]
    keep = nms(boxes, scores, cfg.nms_threshold)[: cfg.max_detections]
    boxes, scores, kpts = boxes[keep], scores[keep], kpts[keep]
    h, w = image_hw
    boxes = np.clip(boxes, 0, [w, h, w, h])
    kp_scores = kpts[..., 2].copy()
    kp_scores[kp_scores < cfg.keypoint_threshold] = 0.0
    return FramePoses(boxes.astype(np.float32), scores.astype(np.float32),
                      (kpts[..., :2] / ratio).astype(np.float32), kp_scores.astype(np.float32))


class RtmoPoseEstimator:
    """Backend + pre/post-processing: letterboxed frames in, persons in original pixels out."""

    def __init__(self, backend, cfg: PoseModelConfig):
        self.backend = backend
        self.cfg = cfg

    def __call__(self, frames_bgr: np.ndarray, ratios, image_hws) -> list[FramePoses]:
        """frames_bgr (N, H_in, W_in, 3) uint8 letterboxed; ratios (N,); image_hws (N, 2) original sizes."""
        if len(frames_bgr) == 0:
            return []
        dets, kpts = self.backend(to_model_input(frames_bgr))
        return [postprocess(dets[i], kpts[i], float(ratios[i]), tuple(int(v) for v in image_hws[i]), self.cfg)
                for i in range(len(frames_bgr))]

    def estimate_image(self, image_bgr: np.ndarray) -> FramePoses:
        """One original BGR image (rtmlib-style single-image call)."""
        from recognizer_core.extract.frame_image import letterbox

        padded, ratio = letterbox(image_bgr, self.cfg.model_input_size)
        return self(padded[None], [ratio], [image_bgr.shape[:2]])[0]
