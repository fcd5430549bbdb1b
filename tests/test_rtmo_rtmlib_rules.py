"""RTMO post-processing keeps the persons rtmlib 0.0.16 keeps from the same raw outputs (the docs say extraction
runs RTMO as rtmlib runs it): its NMS adds 1 pixel to widths, heights and intersections, orders equal scores
last-first (argsort()[::-1]) and drops a score equal to the threshold. rtmlib is not a dependency: its rules
are written out below from rtmlib/tools/object_detection/post_processings.py (nms, multiclass_nms)."""
from __future__ import annotations

import numpy as np

from recognizer_core.extract.config import PoseModelConfig
from recognizer_core.extract.rtmo import postprocess

CFG = PoseModelConfig(score_threshold=0.3, nms_threshold=0.45, keypoint_threshold=0.0)


def _rtmlib_kept(dets: np.ndarray, ratio: float, nms_thr: float = 0.45, score_thr: float = 0.3) -> list[int]:
    """Indices of `dets` rtmlib's RTMO.postprocess keeps, in its order (multiclass_nms with one class)."""
    boxes = dets[:, :4] / ratio
    valid = np.nonzero(dets[:, 4] > score_thr)[0]
    x1, y1, x2, y2 = (boxes[valid, i] for i in range(4))
    scores = dets[valid, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = scores.argsort()[::-1], []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= nms_thr)[0] + 1]
    return [int(valid[k]) for k in keep]


def _keypoints_naming_rows(dets: np.ndarray) -> np.ndarray:
    """(K, 17, 3) keypoints whose x is the detection's row number, so a kept person names its row."""
    kp = np.zeros((len(dets), 17, 3), np.float32)
    kp[..., 0], kp[..., 2] = np.arange(len(dets), dtype=np.float32)[:, None], 0.9
    return kp


def _kept(dets: np.ndarray, ratio: float = 1.0) -> list[int]:
    poses = postprocess(dets, _keypoints_naming_rows(dets), ratio, (4000, 4000), CFG)
    return [int(round(x * ratio)) for x in poses.keypoints[:, 0, 0]]


def test_two_small_people_side_by_side_are_one_detection_as_in_rtmlib():
    """Two 30 x 75 px boxes 11.5 px apart in a 480 x 360 clip: IoU 0.446 without rtmlib's +1 (both kept),
    0.459 with it (one kept, over nms_threshold 0.45)."""
    ratio = 640 / 480
    a = np.array([100, 100, 130, 175], np.float32)
    dets = np.array([[*(a * ratio), 0.9], [*((a + [11.5, 0, 11.5, 0]) * ratio), 0.8]], np.float32)
    assert _rtmlib_kept(dets, ratio) == [0]
    assert _kept(dets, ratio) == [0]


def test_overlapping_pairs_of_every_size_are_kept_as_rtmlib_keeps_them():
    rng = np.random.default_rng(0)
    differ = []
    for height in (20, 40, 80, 160, 400):
        for _ in range(300):
            w = height * rng.uniform(0.3, 0.6)
            a = np.array([50, 50, 50 + w, 50 + height])
            b = a + np.r_[rng.uniform(0, 0.5, 2) * [w, height], 0, 0][[0, 1, 0, 1]]
            dets = np.array([[*a, 0.9], [*b, 0.8]], np.float32)
            if _kept(dets) != _rtmlib_kept(dets, 1.0):
                differ.append((height, a, b))
    assert not differ, f"{len(differ)} of 1500 pairs kept differently, e.g. {differ[:2]}"


def test_of_two_overlapping_equal_scores_the_later_detection_is_kept():
    """fp16 outputs quantise scores, so ties happen: rtmlib's argsort()[::-1] puts the later one first."""
    dets = np.array([[100, 100, 200, 300, 0.75], [110, 100, 210, 300, 0.75]], np.float32)
    assert _rtmlib_kept(dets, 1.0) == [1]
    assert _kept(dets) == [1]


def test_a_score_equal_to_the_threshold_is_dropped():
    """rtmlib's multiclass_nms keeps scores > score_thr."""
    dets = np.array([[100, 100, 200, 300, 0.3], [400, 100, 500, 300, 0.31]], np.float32)
    assert _rtmlib_kept(dets, 1.0) == [1]
    assert _kept(dets) == [1]
