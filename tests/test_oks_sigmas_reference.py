"""COCO_SIGMAS (skeleton/coco.py) equal pycocotools' keypoint OKS sigmas, and the OKS the project computes with
them (track/tracking.py's keypoint_similarity, coco_pose/evaluate.py's OKS-NMS matrix) equal pycocotools'
COCOeval.computeOks on the same poses.

test_dino_evaluate.py reads the module's own sigmas, so swapping two of them (elbows <-> wrists) passed the suite.
The reference here is the COCO evaluation code itself (pycocotools is a project dependency)."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from recognizer_core.coco_pose.evaluate import _oks_matrix
from recognizer_core.skeleton.coco import COCO_SIGMAS
from recognizer_core.track.tracking import keypoint_similarity

REF = np.asarray(Params(iouType="keypoints").kpt_oks_sigmas, dtype=np.float64)


def _kps(k: np.ndarray) -> list[float]:
    """(17, 2) -> COCO's flat [x, y, v] list, every keypoint labelled and visible (v=2)."""
    return np.concatenate([k, np.full((17, 1), 2.0)], 1).ravel().tolist()


def _coco_oks(gt: np.ndarray, dt: np.ndarray, area: float) -> float:
    """OKS of one detection against one ground truth (every keypoint visible) by pycocotools' own
    COCOeval.computeOks."""
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "width": 640, "height": 480}],
                    "categories": [{"id": 1, "name": "person"}],
                    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": area,
                                     "bbox": [0, 0, 10, 10], "num_keypoints": 17, "keypoints": _kps(gt)}]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
        det = coco.loadRes([{"image_id": 1, "category_id": 1, "score": 1.0, "keypoints": _kps(dt)}])
        ev = COCOeval(coco, det, "keypoints")
        ev._prepare()
    return float(ev.computeOks(1, 1)[0, 0])


def test_sigmas_equal_pycocotools():
    assert COCO_SIGMAS.shape == (17,)
    np.testing.assert_allclose(COCO_SIGMAS, REF, rtol=1e-6, atol=0)


def test_project_oks_equals_the_coco_formula():
    rng = np.random.default_rng(0)
    gt = rng.random((17, 2)) * [80, 160] + [100, 50]
    # per-joint offsets of different sizes, so a sigma moved to another joint changes the result
    dt = gt + rng.normal(0, 1, (17, 2)) * np.linspace(1, 12, 17)[:, None]
    area = 80.0 * 160.0
    want = _coco_oks(gt, dt, area)
    assert 0.05 < want < 0.95  # neither saturated end, where wrong sigmas would hardly show
    box = np.array([[100.0, 50.0, 180.0, 210.0]])  # the tracker's scale is the first pose's box area (80 x 160)
    got = keypoint_similarity(gt[None], np.ones((1, 17)), box, dt[None], np.ones((1, 17)))
    assert got.shape == (1, 1) and got[0, 0] == pytest.approx(want, rel=1e-6)
    # OKS-NMS scales by the mean of the two areas: equal areas give the COCO value
    nms = _oks_matrix(np.stack([gt, dt]), np.array([area, area]))
    assert nms[0, 1] == pytest.approx(want, rel=1e-6) and nms[1, 0] == pytest.approx(want, rel=1e-6)
