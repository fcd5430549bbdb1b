"""COCO keypoints are pixel indices (pixel i's centre at i); crops, flips and heatmaps use continuous coordinates
(pixel i covers [i, i + 1)). A one-pixel landmark annotated at its pixel must get a training target on the
landmark, flipped or not, and a model that finds the landmark must report the annotated pixel index. Before the
+0.5 on loading and -0.5 on writing, the target sat 0.5 image px off (mirrored by the flip) and results came out
half a pixel right of and below the annotation. Validation results are OKS-NMSed with ground-truth boxes too."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image

from recognizer_core.coco_pose.dataset import CocoPoseDataConfig, CocoPoseDataset
from recognizer_core.coco_pose.evaluate import crop_areas, heatmaps_to_image_keypoints
from recognizer_core.coco_pose.heatmaps import render_heatmaps
from recognizer_core.skeleton.coco import NUM_JOINTS
from recognizer_core.train.dino_pose import evaluate as dino_eval
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig

H, W = 240, 320
KX, KY = 160, 120  # the landmark's pixel, as COCO stores it
SIZE = (256, 192)


@pytest.fixture(scope="module")
def landmark_set(tmp_path_factory):
    """One image, black but for one white pixel at (KX, KY), annotated there as the nose."""
    d = tmp_path_factory.mktemp("landmark")
    img = np.zeros((H, W, 3), np.uint8)
    img[KY, KX] = 255
    Image.fromarray(img).save(d / "a.png")
    kps = [0] * (3 * NUM_JOINTS)
    kps[0:3] = [KX, KY, 2]
    json.dump({"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "num_keypoints": 1,
                                "bbox": [KX - 24, KY - 32, 48, 64], "keypoints": kps, "area": 3072}],
               "categories": [{"id": 1, "name": "person"}]}, open(d / "a.json", "w"))
    return d


def _cfg(**kw) -> CocoPoseDataConfig:
    base = dict(image_size=SIZE, heatmap_size=SIZE, heatmap_sigma=2.0, scale_factor=0.0, rotation_prob=0.0,
                occlusion_prob=0.0)
    return CocoPoseDataConfig(**{**base, **kw})


def _landmark_in_crop(item, cfg: CocoPoseDataConfig) -> np.ndarray:
    """Intensity centroid of the warped landmark in continuous crop coordinates (pixel centres at +0.5)."""
    img = item["image"].numpy().transpose(1, 2, 0) * np.asarray(cfg.std) + np.asarray(cfg.mean)
    wgt = np.clip(img[..., 0] - 1e-3, 0, None)  # the black background denormalises to ~0
    ys, xs = np.mgrid[0:img.shape[0], 0:img.shape[1]] + 0.5
    return np.array([(wgt * xs).sum() / wgt.sum(), (wgt * ys).sum() / wgt.sum()])


@pytest.mark.parametrize("flip,rotation", [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)])
def test_training_target_sits_on_the_annotated_pixel(landmark_set, flip, rotation):
    cfg = _cfg(flip_prob=flip, rotation_prob=rotation)
    item = CocoPoseDataset(landmark_set, landmark_set / "a.json", cfg, train=True, seed=1)[0]
    target = item["keypoints"].numpy()[0, :2]  # the nose target in crop pixels
    # 3.2 crop px per image px here: the old half-pixel error was 1.6 crop px, the bilinear blob's centroid ~0.05
    np.testing.assert_allclose(target, _landmark_in_crop(item, cfg), atol=0.25)


def _gathered(items: list[dict], hm: torch.Tensor, size: tuple[int, int]) -> list[dict]:
    """What `validate` gathers from one rank, for heatmaps `hm` predicted on `items`' crops."""
    mats = np.stack([it["crop_to_image"].numpy() for it in items])
    kps, scores = heatmaps_to_image_keypoints(hm, mats, size, blur_sigma=2.0)
    return [{"index": np.array([int(it["index"]) for it in items]),
             "image_id": np.array([int(it["image_id"]) for it in items]), "keypoints": kps, "scores": scores,
             "box_score": np.ones(len(items)), "area": crop_areas(mats, size), "loss": (0.0, 0)}]


def _written_results(monkeypatch, gathered, dataset, cfg) -> tuple[list[dict], dict]:
    """The COCO results `_score` hands to COCOeval, and the metrics it returns."""
    seen = []
    real = dino_eval.evaluate_keypoints

    def capture(coco, results):
        seen.extend(results)
        return real(coco, results)

    monkeypatch.setattr(dino_eval, "evaluate_keypoints", capture)
    metrics = dino_eval._score(gathered, dataset, cfg)
    return seen, metrics


def test_a_model_that_finds_the_landmark_reports_the_annotated_pixel(landmark_set, monkeypatch):
    job = DinoPoseJobConfig(data=_cfg(flip_prob=0.0))
    ds = CocoPoseDataset(landmark_set, landmark_set / "a.json", job.data, train=False)
    item = ds[0]
    # A perfect model: its nose heatmap peaks on the landmark it sees in the crop.
    mu = torch.zeros(1, NUM_JOINTS, 2, dtype=torch.float64)
    mu[0, 0] = torch.from_numpy(_landmark_in_crop(item, job.data))
    weights = torch.zeros(1, NUM_JOINTS)
    weights[0, 0] = 1.0
    hm = render_heatmaps(mu, weights, SIZE, 2.0)
    results, _ = _written_results(monkeypatch, _gathered([item], hm, SIZE), ds, job)
    nose = np.reshape(results[0]["keypoints"], (NUM_JOINTS, 3))[0, :2]
    np.testing.assert_allclose(nose, [KX, KY], atol=0.05)  # was (KX + 0.5, KY + 0.5)


def test_ground_truth_round_trip_keeps_coco_pixel_indices_and_ap_one(monkeypatch):
    """Annotations -> target heatmaps (as if predicted) -> decode -> written results: the same pixel indices."""
    d = shared_path("data", "coco")
    job = DinoPoseJobConfig(data=CocoPoseDataConfig(image_size=(128, 96), heatmap_size=(32, 24), heatmap_sigma=1.5))
    ds = CocoPoseDataset(d, d / "test_coco.json", job.data, train=False)
    items = [ds[i] for i in range(len(ds))]
    gathered = _gathered(items, torch.stack([it["heatmaps"] for it in items]), (128, 96))
    results, metrics = _written_results(monkeypatch, gathered, ds, job)
    assert metrics["val/AP"] == pytest.approx(1.0) and len(results) == len(ds)  # NMS kept every person
    raw = {a["id"]: np.reshape(a["keypoints"], (NUM_JOINTS, 3)) for a in json.loads((d / "test_coco.json").read_text())
           ["annotations"]}
    h, w = 128, 96
    checked = 0
    for inst, it in zip(ds.instances, items):
        crop = it["keypoints"].numpy()
        # joints cut off by the crop cannot be recovered from it; compare the labelled ones inside
        ok = (raw[inst["ann_id"]][:, 2] > 0) & (crop[:, 0] >= 0) & (crop[:, 0] < w) & (crop[:, 1] >= 0) & \
            (crop[:, 1] < h)
        # OKS-NMS returns the results grouped by image: this person's is the one of its image closest to it
        err = min(np.abs(np.reshape(r["keypoints"], (NUM_JOINTS, 3))[ok, :2] - raw[inst["ann_id"]][ok, :2]).max()
                  for r in results if r["image_id"] == inst["image_id"])
        assert err < 0.05, (inst["ann_id"], err)
        checked += ok.sum()
    assert checked > 100


def test_ground_truth_box_results_are_oks_nmsed(landmark_set, monkeypatch):
    """mmpose's CocoMetric OKS-NMSes every image whatever the boxes: two crops giving the same pose keep one."""
    job = DinoPoseJobConfig(data=_cfg(flip_prob=0.0))
    assert job.data.val_bbox_file is None
    ds = CocoPoseDataset(landmark_set, landmark_set / "a.json", job.data, train=False)
    rng = np.random.default_rng(0)
    pose = rng.uniform(100, 200, (NUM_JOINTS, 2))
    far = pose + 100.0
    gathered = [{"index": np.arange(3), "image_id": np.ones(3, int), "keypoints": np.stack([pose, pose + 0.2, far]),
                 "scores": np.stack([np.full(NUM_JOINTS, s) for s in (0.9, 0.8, 0.7)]), "box_score": np.ones(3),
                 "area": np.full(3, 5000.0), "loss": (0.0, 0)}]
    results, _ = _written_results(monkeypatch, gathered, ds, job)
    assert [round(r["score"], 3) for r in results] == [0.9, 0.7]
