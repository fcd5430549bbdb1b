"""COCO keypoint AP with pycocotools on the shared sample: ground truth scores 1.0, errors lower it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_path

from recognizer_core.coco_pose.dataset import CocoPoseDataConfig, CocoPoseDataset
from recognizer_core.coco_pose.augment import box_to_crop
from recognizer_core.coco_pose.evaluate import coco_results, crop_areas, evaluate_keypoints, flip_back, \
    heatmaps_to_image_keypoints, oks_nms
from recognizer_core.skeleton.coco import COCO_SIGMAS, FLIP_INDEX


@pytest.fixture(scope="module")
def val_set() -> CocoPoseDataset:
    d = shared_path("data", "coco")
    cfg = CocoPoseDataConfig(image_size=(128, 96), heatmap_size=(32, 24), heatmap_sigma=1.5)
    return CocoPoseDataset(d, d / "test_coco.json", cfg, train=False)


def _gt_arrays(ds):
    kps = np.stack([inst["keypoints"][:, :2] for inst in ds.instances])
    vis = np.stack([inst["keypoints"][:, 2] for inst in ds.instances])
    ids = [inst["image_id"] for inst in ds.instances]
    return ids, kps, vis


def test_ground_truth_as_predictions_scores_one(val_set):
    ids, kps, vis = _gt_arrays(val_set)
    stats = evaluate_keypoints(val_set.coco, coco_results(ids, kps, (vis > 0).astype(float), np.ones(len(ids))))
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert stats["AR"] == pytest.approx(1.0)


def test_ground_truth_through_crops_and_heatmaps_scores_one(val_set):
    """The whole prediction path: crop -> target heatmaps (as if predicted) -> decode -> image -> COCOeval."""
    items = [val_set[i] for i in range(len(val_set))]
    hm = torch.stack([it["heatmaps"] for it in items])
    kps, scores = heatmaps_to_image_keypoints(hm, np.stack([it["crop_to_image"].numpy() for it in items]),
                                              (128, 96), 1.5)
    results = coco_results([int(it["image_id"]) for it in items], kps, scores, [1.0] * len(items))
    assert evaluate_keypoints(val_set.coco, results)["AP"] == pytest.approx(1.0)


def test_errors_lower_ap(val_set):
    ids, kps, vis = _gt_arrays(val_set)
    rng = np.random.default_rng(0)
    ones = np.ones(len(ids))
    scale = np.array([np.sqrt(inst["bbox"][2] * inst["bbox"][3]) for inst in val_set.instances])[:, None, None]
    small = evaluate_keypoints(val_set.coco, coco_results(ids, kps + rng.normal(0, 0.03, kps.shape) * scale,
                                                          (vis > 0) * 1.0, ones))["AP"]
    large = evaluate_keypoints(val_set.coco, coco_results(ids, kps + rng.normal(0, 0.15, kps.shape) * scale,
                                                          (vis > 0) * 1.0, ones))["AP"]
    assert 0.0 <= large < small < 1.0
    # half of the people missing: recall (and AP) drop
    half = evaluate_keypoints(val_set.coco, coco_results(ids[::2], kps[::2], (vis[::2] > 0) * 1.0, ones[::2]))
    assert half["AR"] < 0.75 and half["AP"] < 0.75
    assert evaluate_keypoints(val_set.coco, [])["AP"] == 0.0


def test_instance_score_is_box_times_confident_keypoints():
    kps = np.zeros((1, 17, 2))
    s = np.full((1, 17), 0.1)
    s[0, :5] = 0.9
    r = coco_results([7], kps, s, [0.5], keypoint_score_threshold=0.2)[0]
    assert r["score"] == pytest.approx(0.45) and len(r["keypoints"]) == 51 and r["category_id"] == 1


def test_oks_nms_drops_duplicates_keeps_distinct_people():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.uniform(100, 200, (17, 2)), np.ones((17, 1))], 1)
    near = a.copy()
    near[:, :2] += 0.5
    far = a.copy()
    far[:, :2] += 300
    res = [{"image_id": 1, "category_id": 1, "keypoints": k.reshape(-1).tolist(), "score": sc}
           for k, sc in ((a, 0.9), (near, 0.8), (far, 0.7))]
    kept = oks_nms(res, 0.9)
    assert [r["score"] for r in kept] == [0.9, 0.7]


def _mmpose_oks_nms(kpts: np.ndarray, scores: np.ndarray, areas: np.ndarray, thr: float) -> list[int]:
    """mmpose.evaluation.functional.nms.oks_nms / oks_iou (vis_thr None), transcribed: the OKS of two poses is
    scaled by the MEAN of their two areas."""
    var = (COCO_SIGMAS.astype(np.float64) * 2) ** 2
    order, keep = scores.argsort()[::-1], []
    while len(order):
        i = order[0]
        keep.append(int(i))
        d2 = ((kpts[order[1:]] - kpts[i]) ** 2).sum(-1)
        e = d2 / var / ((areas[i] + areas[order[1:]]) / 2 + np.spacing(1))[:, None] / 2
        order = order[np.where(np.exp(-e).mean(-1) <= thr)[0] + 1]
    return keep


def test_oks_nms_matches_mmpose_with_crop_box_areas():
    """mmpose's top-down CocoMetric gives OKS-NMS area = prod(bbox_scale) (the padded, aspect-fixed box) and
    averages the two poses' areas; we used the keypoints' extent and the kept pose's area alone."""
    rng = np.random.default_rng(0)
    results, expected = [], []
    for image_id in range(40):
        base = rng.uniform(100, 300, (17, 2))
        kps = base + rng.normal(0, rng.uniform(1, 12), (6, 17, 2))  # near-duplicates around the OKS threshold
        scores = rng.uniform(0.1, 1.0, 6)
        areas = rng.uniform(2e3, 8e4, 6)
        res = coco_results([image_id] * 6, kps, np.ones((6, 17)), scores, areas=areas)
        results += res
        expected += [res[i] for i in _mmpose_oks_nms(kps, scores, areas, 0.9)]
    kept = oks_nms(results, 0.9)
    assert [(r["image_id"], r["score"]) for r in kept] == [(r["image_id"], r["score"]) for r in expected]
    assert len(expected) < len(results)  # the case suppresses something
    # without an area (no box known), mmpose's fallback: the keypoints' extent
    no_area = [{k: v for k, v in r.items() if k != "area"} for r in results]
    extent_kept = []
    for image_id in range(40):
        rs = [r for r in no_area if r["image_id"] == image_id]
        k = np.stack([np.reshape(r["keypoints"], (17, 3))[:, :2] for r in rs])
        extent = np.ptp(k[..., 0], 1) * np.ptp(k[..., 1], 1)
        extent_kept += [rs[i]["score"] for i in _mmpose_oks_nms(k, np.array([r["score"] for r in rs]), extent, 0.9)]
    assert [r["score"] for r in oks_nms(no_area, 0.9)] == extent_kept


def test_evaluation_leaves_the_results_as_they_were(val_set):
    """pycocotools' loadRes rewrote each result's area (from the keypoints) in place: an OKS-NMS after an
    evaluation of the same list then used the wrong scale."""
    ids, kps, vis = _gt_arrays(val_set)
    results = coco_results(ids, kps, (vis > 0) * 1.0, np.ones(len(ids)), areas=np.full(len(ids), 123.0))
    evaluate_keypoints(val_set.coco, results)
    assert all(r["area"] == 123.0 and set(r) == {"image_id", "category_id", "keypoints", "score", "area"}
               for r in results)


def test_crop_areas_are_the_padded_aspect_fixed_boxes():
    d = shared_path("data", "coco")
    cfg = CocoPoseDataConfig(image_size=(128, 96), heatmap_size=(32, 24), heatmap_sigma=1.5)
    ds = CocoPoseDataset(d, d / "test_coco.json", cfg, train=False, bbox_file=d / "test_coco_det_AP_H_56.json")
    mats = np.stack([ds[i]["crop_to_image"].numpy() for i in range(len(ds))])
    want = [np.prod(box_to_crop(inst["bbox"], (128, 96), cfg.padding).size) for inst in ds.instances]
    np.testing.assert_allclose(crop_areas(mats, (128, 96)), want, rtol=1e-4)


def test_flip_back_mirrors_and_swaps():
    hm = torch.zeros(1, 17, 4, 6)
    hm[0, 5, 1, 0] = 1.0  # left shoulder at column 0 of the mirrored crop
    out = flip_back(hm)
    assert out[0, FLIP_INDEX[5], 1, 5] == 1.0 and out.sum() == 1.0
