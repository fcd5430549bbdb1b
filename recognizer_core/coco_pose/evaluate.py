"""COCO keypoint evaluation: heatmaps -> image-space keypoints -> (OKS-NMS) -> pycocotools COCOeval AP/AR."""
from __future__ import annotations

import contextlib
import io
from collections import defaultdict

import numpy as np
import torch

from recognizer_core.coco_pose.heatmaps import apply_affine, decode_heatmaps, heatmap_to_input
from recognizer_core.skeleton.coco import COCO_SIGMAS, FLIP_INDEX

# COCO's per-keypoint OKS sigmas (pycocotools COCOeval.Params.kpt_oks_sigmas), used by OKS-NMS.
STAT_NAMES = ("AP", "AP50", "AP75", "AP_M", "AP_L", "AR", "AR50", "AR75", "AR_M", "AR_L")


def flip_back(heatmaps: torch.Tensor) -> torch.Tensor:
    """Heatmaps predicted on a mirrored crop -> heatmaps of the original crop (mirror x, swap left/right)."""
    return heatmaps.flip(-1)[:, list(FLIP_INDEX)]


def heatmaps_to_image_keypoints(heatmaps: torch.Tensor, crop_to_image: np.ndarray, input_size: tuple[int, int],
                                blur_sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, Hh, Wh) heatmaps + (N, 2, 3) crop->image affines -> keypoints (N, K, 2) in image pixels, scores."""
    coords, scores = decode_heatmaps(heatmaps, blur_sigma)
    in_crop = heatmap_to_input(coords, input_size, tuple(heatmaps.shape[-2:]))
    mats = np.asarray(crop_to_image, dtype=np.float64)
    image_xy = np.stack([apply_affine(in_crop[i], mats[i]) for i in range(len(in_crop))]) if len(in_crop) else \
        np.zeros((0,) + in_crop.shape[1:])
    return image_xy, scores


def coco_results(image_ids, keypoints: np.ndarray, keypoint_scores: np.ndarray, box_scores, *,
                 keypoint_score_threshold: float = 0.2, areas=None) -> list[dict]:
    """One COCO results entry per instance; instance score = box score x mean of confident keypoint scores
    (mmpose's rescoring, so a sure box with a vague pose ranks below a sure pose). `areas` (the crops' image
    areas) become each entry's "area", the scale `oks_nms` uses; pycocotools recomputes its own on loading."""
    out = []
    for i, image_id in enumerate(image_ids):
        s = np.asarray(keypoint_scores[i], dtype=np.float64)
        confident = s[s > keypoint_score_threshold]
        pose_score = float(confident.mean()) if confident.size else 0.0
        kps = np.concatenate([keypoints[i], s[:, None]], axis=1)
        entry = {"image_id": int(image_id), "category_id": 1, "keypoints": [float(v) for v in kps.reshape(-1)],
                 "score": float(box_scores[i]) * pose_score}
        if areas is not None:
            entry["area"] = float(areas[i])
        out.append(entry)
    return out


def crop_areas(crop_to_image: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """(N, 2, 3) crop->image affines -> the image area each crop covers: the padded, aspect-fixed box (mmpose's
    prod(bbox_scale), the area its top-down CocoMetric gives OKS-NMS)."""
    mats = np.asarray(crop_to_image, dtype=np.float64).reshape(-1, 2, 3)
    return np.abs(np.linalg.det(mats[:, :, :2])) * input_size[0] * input_size[1]


def _oks_matrix(kps: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """OKS between every pair of poses (n, K, 2), scaled by the mean of the two areas (mmpose's oks_iou)."""
    d2 = ((kps[:, None, :, :] - kps[None, :, :, :]) ** 2).sum(-1)  # (n, n, K)
    var = (2 * COCO_SIGMAS) ** 2
    scale = (areas[:, None] + areas[None, :]) / 2 + np.spacing(1)
    return np.exp(-d2 / var / scale[:, :, None] / 2).mean(-1)


def oks_nms(results: list[dict], threshold: float = 0.9) -> list[dict]:
    """Per image, greedily drop poses whose OKS with a higher-scored kept pose exceeds `threshold`: mmpose's
    oks_nms as its CocoMetric calls it. A result's "area" (`coco_results(areas=crop_areas(...))`, the padded crop
    box) is the OKS scale; without one, the keypoints' extent (mmpose's fallback when no box scale is known)."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    kept = []
    for rs in by_image.values():
        rs = sorted(rs, key=lambda r: -r["score"])
        kps = np.stack([np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3)[:, :2] for r in rs])
        extent = np.ptp(kps[..., 0], axis=1) * np.ptp(kps[..., 1], axis=1)
        areas = np.array([r.get("area", e) for r, e in zip(rs, extent)], dtype=np.float64)
        oks = _oks_matrix(kps, areas)
        keep: list[int] = []
        for i in range(len(rs)):
            if not keep or oks[i, keep].max() <= threshold:
                keep.append(i)
        kept.extend(rs[i] for i in keep)
    return kept


def evaluate_keypoints(coco_gt, results: list[dict]) -> dict[str, float]:
    """pycocotools keypoint COCOeval on `results`; returns AP, AP50, AP75, AP_M, AP_L, AR, ... (0 if empty)."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {name: 0.0 for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes rewrites area/bbox/id in its input
        ev = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        ev.params.imgIds = sorted({r["image_id"] for r in results} | set(coco_gt.getImgIds()))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # pycocotools' convention: -1 where a size range (medium / large) has no ground truth.
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
