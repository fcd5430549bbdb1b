"""The DINO pose job's SMOKE RUN: what `rayjobs/train_dino_pose.py` does when no data path is given.

It trains, end to end through Ray Train, a tiny randomly initialised DINOv2 (built from a transformers config and
saved with `save_pretrained`, so the same `from_pretrained(path)` code path as a real checkpoint runs; nothing is
downloaded) for two epochs on the project's four shared COCO val2017 images (`../shared/data/coco`), or, where
that folder is absent, on a handful of drawn stick figures with COCO keypoint annotations. It proves the job
runs on this machine; its AP means nothing. Real training needs the COCO paths (docs/dino_pose.md).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from recognizer_core.skeleton.coco import BONES, JOINT_NAMES

REPO = Path(__file__).resolve().parents[2]
SHARED_COCO = Path(os.environ.get("RECOGNIZER_SHARED", REPO.parent / "shared")) / "data" / "coco"
DATA_FIELDS = ("train_image_dir", "train_annotation_file", "val_image_dir", "val_annotation_file")
RUN_NAME = "dino_pose_smoke"


def wants_smoke_run(cfg) -> bool:
    """True when the config names no COCO data at all (a partly set config is an error, not a demo)."""
    return not any(getattr(cfg.data, k) for k in DATA_FIELDS)


def build_tiny_backbone(directory: Path) -> Path:
    """A 2-layer, 32-wide random DINOv2 saved like a downloaded checkpoint (config.json + weights)."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    if (directory / "config.json").is_file():
        return directory
    torch.manual_seed(0)
    config = Dinov2Config(patch_size=14, image_size=56, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64)
    Dinov2Model(config).save_pretrained(directory)
    return directory


def draw_stick_figures(directory: Path, num_images: int = 4, size: tuple[int, int] = (160, 120)) -> Path:
    """A few images of drawn people and their COCO person-keypoint annotations; returns the JSON path."""
    from PIL import Image, ImageDraw

    from recognizer_core.skeleton.demo_body import new_person, render_people

    directory.mkdir(parents=True, exist_ok=True)
    ann_file = directory / "stick_figures_coco.json"
    if ann_file.is_file():
        return ann_file
    rng = np.random.default_rng(0)
    width, height = size
    images, annotations = [], []
    for i in range(num_images):
        person = new_person(1, x=float(rng.uniform(0.35, 0.65) * width), ground=height * 0.92,
                            scale=height * float(rng.uniform(0.6, 0.8)), psi=float(rng.uniform(-0.6, 0.6)))
        person["arm_l"][:] = rng.uniform(-0.5, 1.5)
        person["arm_r"][:] = rng.uniform(-0.5, 1.5)
        xy = render_people([person])[0, 0]  # (17, 2) pixels
        img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(90, 200, 3)))
        draw = ImageDraw.Draw(img)
        for a, b in BONES:
            draw.line([tuple(map(float, xy[a])), tuple(map(float, xy[b]))], fill=(20, 20, 20), width=3)
        name = f"stick_{i:03d}.jpg"
        img.save(directory / name, quality=95)
        x0, y0 = xy.min(0) - 6
        x1, y1 = xy.max(0) + 6
        box = [float(max(x0, 0)), float(max(y0, 0)), float(min(x1, width) - max(x0, 0)),
               float(min(y1, height) - max(y0, 0))]
        kps = np.concatenate([xy, np.full((17, 1), 2.0)], axis=1).round(1).ravel().tolist()
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "num_keypoints": 17,
                            "keypoints": kps, "bbox": box, "area": box[2] * box[3]})
    categories = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(JOINT_NAMES),
                   "skeleton": [[a + 1, b + 1] for a, b in BONES]}]
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file


def smoke_run_overrides(cfg) -> list[str]:
    """Build the tiny backbone (and the drawn images if shared/ is absent); return the demo's --set list.

    The user's own --set overrides go after these, so they still win (e.g. --set train.epochs=5)."""
    storage = cfg.run.storage_path
    assets = Path(storage) / f"{RUN_NAME}_assets" if "://" not in storage else \
        Path(tempfile.gettempdir()) / f"{RUN_NAME}_assets"
    backbone = build_tiny_backbone(assets / "tiny_dinov2")
    if (SHARED_COCO / "test_coco.json").is_file():
        images, ann_file = SHARED_COCO, SHARED_COCO / "test_coco.json"
        what = f"the 4 COCO val2017 images in {SHARED_COCO}"
    else:
        ann_file = draw_stick_figures(assets / "stick_figures")
        images, what = ann_file.parent, f"4 drawn stick figures ({SHARED_COCO} not found)"
    print(f"SMOKE RUN: no COCO data given, so this trains a tiny random DINOv2 (2 layers, width 32, built from a "
        f"config, nothing downloaded) for 2 epochs on {what}. It checks that the job runs here; its AP means "
        f"nothing. Real training: --train_image_dir ... (docs/dino_pose.md).", flush=True)
    return [
        f"model.backbone={backbone}", "model.feature_layers=[-2, -1]", "model.stem_channels=[8, 16]",
        "model.fuser_channels=16", "model.decoder_channels=16", "model.backbone_dtype=float32",
        f"data.train_image_dir={images}", f"data.train_annotation_file={ann_file}",
        f"data.val_image_dir={images}", f"data.val_annotation_file={ann_file}",
        "data.image_size=[64, 48]", "data.heatmap_size=[16, 12]", "data.heatmap_sigma=1.0", "data.num_workers=0",
        "train.epochs=2", "train.batch_size=4", "train.log_interval=1", "train.vis_num_images=2",
        "optim.warmup_epochs=0.5", "optim.lr=1e-3",
        "scaling.num_workers=1", "scaling.cpus_per_worker=1", "scaling.use_gpu=false",
        f"run.name={RUN_NAME}", "wandb.enabled=false",
    ]
