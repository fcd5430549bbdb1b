"""Top-down COCO loader on the shared 4-image sample: instances, crop geometry, augmentation, bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import shared_path

from recognizer_core.coco_pose.dataset import CocoPoseDataConfig, CocoPoseDataset
from recognizer_core.coco_pose.evaluate import heatmaps_to_image_keypoints
from recognizer_core.skeleton.coco import FLIP_INDEX


def _coco():
    d = shared_path("data", "coco")
    return d, d / "test_coco.json"


def _cfg(**kw) -> CocoPoseDataConfig:
    base = dict(image_size=(128, 96), heatmap_size=(32, 24), heatmap_sigma=1.5)
    return CocoPoseDataConfig(**{**base, **kw})


def _recovered(ds: CocoPoseDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets decoded and mapped back to the original image, the annotations, and the weights."""
    items = [ds[i] for i in range(len(ds))]
    hm = torch.stack([it["heatmaps"] for it in items])
    mats = np.stack([it["crop_to_image"].numpy() for it in items])
    kps, _ = heatmaps_to_image_keypoints(hm, mats, tuple(ds.cfg.image_size), ds.cfg.heatmap_sigma)
    gt = np.stack([inst["keypoints"] for inst in ds.instances])
    w = np.stack([it["target_weight"].numpy() for it in items])
    # A joint cut off by the crop keeps its target while its Gaussian reaches in (3 sigma), but its peak
    # cannot be recovered from the crop: compare joints inside the crop.
    crop_xy = np.stack([it["keypoints"].numpy()[:, :2] for it in items])
    h, w_ = ds.cfg.image_size
    inside = (crop_xy[..., 0] >= 0) & (crop_xy[..., 0] < w_) & (crop_xy[..., 1] >= 0) & (crop_xy[..., 1] < h)
    return kps, gt, w * inside


def test_instances_of_the_sample():
    image_dir, ann = _coco()
    ds = CocoPoseDataset(image_dir, ann, _cfg(), train=False)
    raw = json.loads(ann.read_text())
    with_kps = [a for a in raw["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
    assert len(ds) == len(with_kps) == 12
    assert {inst["ann_id"] for inst in ds.instances} == {a["id"] for a in with_kps}
    assert ds.skipped["images_without_person"] == 0
    item = ds[0]
    assert item["image"].shape == (3, 128, 96) and item["image"].dtype == torch.float32
    assert item["heatmaps"].shape == (17, 32, 24)
    # visibility 2 -> weight 1, 1 -> 0.5, 0 -> 0 (cut-off joints aside)
    vis = ds.instances[0]["keypoints"][:, 2]
    w = item["target_weight"].numpy()
    assert set(w[vis == 0]) <= {0.0} and set(w[vis == 1]) <= {0.5, 0.0} and set(w[vis == 2]) <= {1.0, 0.0}


@pytest.mark.parametrize("size,heatmap", [((64, 48), (16, 12)), ((256, 192), (64, 48)), ((128, 128), (128, 128))])
def test_val_crops_map_back_to_the_annotations(size, heatmap):
    image_dir, ann = _coco()
    ds = CocoPoseDataset(image_dir, ann, _cfg(image_size=size, heatmap_size=heatmap), train=False)
    kps, gt, w = _recovered(ds)
    m = w > 0
    assert m.sum() > 150
    assert np.abs(kps[m] - gt[..., :2][m]).max() < 0.05  # image pixels


def test_augmented_crops_keep_geometry_and_swap_left_right():
    image_dir, ann = _coco()
    cfg = _cfg(flip_prob=1.0, rotation_prob=1.0, rotation_factor=40, scale_factor=0.3, occlusion_prob=0.0)
    ds = CocoPoseDataset(image_dir, ann, cfg, train=True, seed=3)
    kps, gt, w = _recovered(ds)
    # Every crop is mirrored: target channel j holds annotated joint FLIP_INDEX[j] (a left wrist became right).
    gt_flipped = gt[:, list(FLIP_INDEX)]
    m = w > 0
    assert np.abs(kps[m] - gt_flipped[..., :2][m]).max() < 0.05
    # the same sample without the flip is a different picture (the crop really is mirrored)
    item = ds[0]
    plain = CocoPoseDataset(image_dir, ann, cfg.model_copy(update={"flip_prob": 0.0}), train=True, seed=3)[0]
    assert not torch.equal(item["image"], plain["image"])


def test_augmentation_is_a_function_of_seed_epoch_index():
    image_dir, ann = _coco()
    ds = CocoPoseDataset(image_dir, ann, _cfg(), train=True, seed=0)
    a, b = ds[1], ds[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["heatmaps"], b["heatmaps"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["image"], a["image"])


def test_occlusion_paints_patches_over_keypoints():
    image_dir, ann = _coco()
    common = dict(flip_prob=0.0, rotation_prob=0.0, scale_factor=0.0)
    clean = CocoPoseDataset(image_dir, ann, _cfg(occlusion_prob=0.0, **common), train=True)
    occl = CocoPoseDataset(image_dir, ann, _cfg(occlusion_prob=1.0, **common), train=True)
    changed_fracs = []
    for i in range(len(clean)):
        a, b = clean[i], occl[i]
        diff = (a["image"] != b["image"]).any(0).numpy()
        assert diff.any()
        changed_fracs.append(diff.mean())
        assert torch.equal(a["heatmaps"], b["heatmaps"])  # targets stay: hidden joints are still to be found
        # some labelled keypoint lies inside a painted patch
        kp = a["keypoints"].numpy()
        inside = [diff[int(y), int(x)] for x, y, v in kp if v > 0 and 0 <= x < 96 and 0 <= y < 128]
        assert any(inside)
    # 1..4 patches of 5-15% per side: at most 4 * 0.15^2 of the crop
    assert 0 < max(changed_fracs) <= 4 * 0.15 ** 2 + 1e-6


def test_missing_image_is_named(tmp_path):
    image_dir, ann = _coco()
    for f in sorted(image_dir.glob("*.jpg"))[1:]:
        (tmp_path / f.name).symlink_to(f)
    missing = sorted(image_dir.glob("*.jpg"))[0].name
    with pytest.raises(FileNotFoundError, match=missing):
        CocoPoseDataset(tmp_path, ann, _cfg(), train=True)


def test_images_without_people_are_skipped_and_counted(tmp_path):
    image_dir, ann = _coco()
    data = json.loads(ann.read_text())
    first = data["images"][0]["id"]
    for a in data["annotations"]:
        if a["image_id"] == first:
            a["keypoints"] = [0] * 51
            a["num_keypoints"] = 0
    data["annotations"].append({**data["annotations"][-1], "id": 999999, "keypoints": [1, 2]})  # malformed
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    ds = CocoPoseDataset(image_dir, path, _cfg(), train=True)
    assert ds.skipped["images_without_person"] == 1 and ds.skipped["bad_annotations"] == 1
    assert first not in {inst["image_id"] for inst in ds.instances}


def test_detection_boxes(tmp_path):
    image_dir, ann = _coco()
    det_file = image_dir / "test_coco_det_AP_H_56.json"
    dets = json.loads(det_file.read_text())
    ds = CocoPoseDataset(image_dir, ann, _cfg(), train=False, bbox_file=det_file)
    assert len(ds) == len(dets)
    strict = CocoPoseDataset(image_dir, ann, _cfg(det_score_threshold=0.5), train=False, bbox_file=det_file)
    assert len(strict) == sum(d["score"] >= 0.5 for d in dets)
    assert strict.skipped["detections_below_threshold"] == len(dets) - len(strict)
    item = ds[0]
    assert item["target_weight"].sum() == 0 and float(item["bbox_score"]) == pytest.approx(dets[0]["score"], rel=1e-6)


def test_bad_annotation_file(tmp_path):
    image_dir, _ = _coco()
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoPoseDataset(image_dir, tmp_path / "nope.json", _cfg(), train=True)
    shutil.copy(image_dir / "test_coco.json", tmp_path / "a.json")
    with pytest.raises(FileNotFoundError, match="image directory"):
        CocoPoseDataset(tmp_path / "imgs", tmp_path / "a.json", _cfg(), train=True)


def test_unreadable_image_training_substitutes_evaluation_fails(tmp_path, caplog):
    image_dir, ann = _coco()
    files = sorted(image_dir.glob("*.jpg"))
    for f in files[1:]:
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / files[0].name).write_bytes(b"not a jpeg")
    train = CocoPoseDataset(tmp_path, ann, _cfg(), train=True)
    bad = next(i for i, inst in enumerate(train.instances) if inst["file"] == files[0].name)
    with caplog.at_level("WARNING", logger="recognizer"):
        item = train[bad]
    assert files[0].name in caplog.text
    assert int(item["index"]) != bad and item["image"].shape == (3, 128, 96)
    val = CocoPoseDataset(tmp_path, ann, _cfg(), train=False)
    with pytest.raises(OSError, match=files[0].name):
        val[bad]
