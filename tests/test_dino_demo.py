"""The DINO pose smoke run's assets: the tiny backbone loads by path, the drawn stick figures are a COCO keypoint
set the dataset and COCOeval read, and the demo overrides make a valid job config (the Ray run itself is the
DINO job test's path, run by hand with `python rayjobs/train_dino_pose.py`)."""
from __future__ import annotations

import numpy as np
import pytest

from recognizer_core.coco_pose import demo
from recognizer_core.config import load_config
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig


def test_stick_figures_are_a_coco_keypoint_set(tmp_path):
    from recognizer_core.coco_pose.dataset import CocoPoseDataConfig, CocoPoseDataset

    ann = demo.draw_stick_figures(tmp_path / "sticks")
    ds = CocoPoseDataset(ann.parent, ann, CocoPoseDataConfig(image_size=(64, 48), heatmap_size=(16, 12)),
                         train=False)
    assert len(ds) == 4
    kps = np.stack([inst["keypoints"] for inst in ds.instances])
    assert kps.shape == (4, 17, 3) and (kps[..., 2] == 2).all()
    assert (kps[..., 0] >= 0).all() and (kps[..., 0] <= 160).all() and (kps[..., 1] <= 120).all()


def test_smoke_overrides_make_a_valid_job(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "SHARED_COCO", tmp_path / "no_shared")  # the fallback: drawn figures
    base = load_config(DinoPoseJobConfig, None, [f"run.storage_path={tmp_path}"])
    assert demo.wants_smoke_run(base)
    overrides = demo.smoke_run_overrides(base) + ["train.epochs=3"]
    assert "SMOKE RUN" in capsys.readouterr().out
    cfg = load_config(DinoPoseJobConfig, None, [f"run.storage_path={tmp_path}", *overrides])
    assert cfg.train.epochs == 3 and cfg.run.name == demo.RUN_NAME  # the user's --set still wins
    assert not demo.wants_smoke_run(cfg)
    cfg.require_data()
    from recognizer_core.models.dino_backbone import build_backbone

    import torch

    backbone = build_backbone(cfg.model.backbone, cfg.model.feature_layers, torch.float32)
    assert backbone.out_channels == 32


def test_partial_data_is_an_error_not_a_demo():
    cfg = load_config(DinoPoseJobConfig, None, ["data.train_image_dir=/somewhere"])
    assert not demo.wants_smoke_run(cfg)
    with pytest.raises(ValueError, match="data.train_annotation_file"):
        cfg.require_data()
