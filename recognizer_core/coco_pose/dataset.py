"""Top-down COCO person-keypoint dataset: one sample per person box, cropped, augmented, with heatmap targets.

Pixel conventions: COCO stores a keypoint as the integer index of its pixel, so pixel i's centre is at i
(detectron2 adds 0.5 when it loads COCO keypoints and subtracts 0.5 when it writes results; mmpose mirrors x to
w - 1 - x). Boxes, crops (PIL's affine transform), flips and heatmaps here use continuous coordinates, pixel i
covering [i, i + 1) with its centre at i + 0.5. Labelled keypoints are therefore moved by +0.5 when loaded
(`coco_to_continuous`) and predictions by -0.5 when written as COCO results (`continuous_to_coco`); without
that, a flip-trained model's keypoints came out half an image pixel right of and below the annotation.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from PIL import Image

from recognizer_core.coco_pose.augment import box_to_crop, crop_matrix, invert_affine, occlude, random_crop_params, \
    warp_image
from recognizer_core.coco_pose.heatmaps import apply_affine, encode_heatmaps, keypoint_weights, target_weights, \
    to_heatmap_coords
from recognizer_core.config import StrictModel
from recognizer_core.models.dino_backbone import IMAGENET_MEAN, IMAGENET_STD
from recognizer_core.skeleton.coco import FLIP_INDEX, NUM_JOINTS

log = logging.getLogger("recognizer")

# Where COCO's pixel index i lies in continuous coordinates: the centre of pixel i, i + 0.5.
COCO_PIXEL_CENTRE = 0.5


def coco_to_continuous(keypoints: np.ndarray) -> np.ndarray:
    """COCO keypoints (..., K, 3) as (x, y, v) pixel indices -> a copy with labelled (v > 0) x, y at their
    pixel centres in continuous coordinates. Unlabelled ones (COCO writes 0, 0, 0) stay as they are."""
    out = np.array(keypoints, dtype=np.float64, copy=True)
    labelled = out[..., 2] > 0
    out[..., :2] += np.where(labelled[..., None], COCO_PIXEL_CENTRE, 0.0)
    return out


def continuous_to_coco(xy: np.ndarray) -> np.ndarray:
    """Keypoint positions (..., 2) in continuous image coordinates -> COCO's pixel-index convention."""
    return np.asarray(xy, dtype=np.float64) - COCO_PIXEL_CENTRE


class CocoPoseDataConfig(StrictModel):
    train_image_dir: str | None = Field(None, description="COCO train images (train2017/)")
    train_annotation_file: str | None = Field(None, description="person_keypoints_train2017.json")
    val_image_dir: str | None = Field(None, description="COCO val images (val2017/)")
    val_annotation_file: str | None = Field(None, description="person_keypoints_val2017.json")
    val_bbox_file: str | None = Field(None, description="person detections (COCO results JSON) to evaluate on; "
                                      "ground-truth boxes when unset")
    det_score_threshold: float = Field(0.0, ge=0, le=1)
    image_size: tuple[int, int] = Field((512, 512), description="crop (H, W) fed to the model")
    heatmap_size: tuple[int, int] = Field((512, 512), description="heatmap (H, W)")
    heatmap_sigma: float = Field(6.0, gt=0, description="Gaussian std in heatmap pixels")
    padding: float = Field(1.25, ge=1.0, description="box enlargement before cropping")
    occluded_weight: float = Field(0.5, ge=0, le=1, description="loss weight of labelled-but-occluded joints")
    flip_prob: float = Field(0.5, ge=0, le=1)
    scale_factor: float = Field(0.25, ge=0, lt=1, description="box scale drawn from [1-s, 1+s]")
    rotation_factor: float = Field(40.0, ge=0, le=180, description="rotation drawn from [-r, r] degrees")
    rotation_prob: float = Field(0.6, ge=0, le=1)
    occlusion_prob: float = Field(0.2, ge=0, le=1, description="probability of the occlusion augmentation")
    occlusion_max_keypoints: int = Field(4, ge=1)
    occlusion_size: tuple[float, float] = Field((0.05, 0.15), description="patch side range, fraction of the crop")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_workers: int = Field(4, ge=0, description="DataLoader processes per training worker")
    max_train_instances: int | None = Field(None, ge=1, description="use only the first N person crops")
    max_val_instances: int | None = Field(None, ge=1, description="validate on the first N crops only (smoke "
                                          "runs: AP still counts every annotated person)")


def load_coco(annotation_file: str | Path):
    from pycocotools.coco import COCO

    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: COCO annotation file not found")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        try:
            return COCO(str(path))
        except (ValueError, KeyError, TypeError, AssertionError) as err:  # pycocotools asserts the layout
            raise ValueError(f"{path}: not a COCO annotation file ({err})") from None


def _clip_box(bbox, width: int, height: int) -> list[float] | None:
    # mmpose/COCO sanitising: clip to the image, drop empty boxes.
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(width), x + max(0.0, w)), min(float(height), y + max(0.0, h))
    if x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2 - x1, y2 - y1]


class CocoPoseDataset(torch.utils.data.Dataset):
    """Person instances of a COCO keypoint file. Train: annotated boxes with at least one labelled keypoint.
    Eval: the same, or the boxes of a detection file (`bbox_file`) with empty targets.

    Instance keypoints are in continuous image coordinates (`coco_to_continuous`), not COCO's pixel indices.
    `skipped` counts what was left out and why; a referenced image missing on disk is an error at construction
    (naming it), not hours into an epoch. With `with_heatmaps=False` a sample carries the target keypoints in
    heatmap coordinates (`target_keypoints`) instead of the maps, for rendering on the GPU (`render_heatmaps`).
    """

    def __init__(self, image_dir: str | Path, annotation_file: str | Path, cfg: CocoPoseDataConfig, *,
                 train: bool, bbox_file: str | Path | None = None, max_instances: int | None = None, seed: int = 0,
                 with_heatmaps: bool = True):
        self.with_heatmaps = with_heatmaps
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        self.cfg = cfg
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.coco = load_coco(annotation_file)
        self.skipped = {"images_without_person": 0, "bad_annotations": 0, "detections_below_threshold": 0}
        self.instances = self._detections(bbox_file) if bbox_file else self._annotated_people()
        if max_instances is not None:
            self.instances = self.instances[:max_instances]
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: image directory not found (for {self.annotation_file})")
        missing = sorted({inst["file"] for inst in self.instances if not (self.image_dir / inst["file"]).is_file()})
        if missing:
            raise FileNotFoundError(f"{self.annotation_file}: {len(missing)} image file(s) missing under "
                                    f"{self.image_dir}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if self.skipped["images_without_person"] or self.skipped["bad_annotations"]:
            log.info("%s: %d person crops; skipped %s", self.annotation_file, len(self.instances), self.skipped)
        if train:
            # Only evaluation needs the COCO index. Train2017's is ~1 GB of Python objects that every forked
            # DataLoader process would slowly copy (reference counts touch the pages).
            self.coco = None

    def _annotated_people(self) -> list[dict]:
        out = []
        for img_id in sorted(self.coco.getImgIds()):
            info = self.coco.imgs[img_id]
            people = []
            for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id, iscrowd=False)):
                if ann.get("category_id", 1) != 1:
                    continue
                kps = np.asarray(ann.get("keypoints", []), dtype=np.float64)
                if kps.size != 3 * NUM_JOINTS or not np.isfinite(kps).all():
                    self.skipped["bad_annotations"] += 1
                    continue
                kps = coco_to_continuous(kps.reshape(NUM_JOINTS, 3))
                box = _clip_box(ann.get("bbox", [0, 0, 0, 0]), info["width"], info["height"])
                if (kps[:, 2] > 0).sum() == 0 or box is None:
                    continue
                people.append({"image_id": img_id, "file": info["file_name"], "bbox": box, "keypoints": kps,
                               "score": 1.0, "ann_id": ann["id"]})
            if not people:
                self.skipped["images_without_person"] += 1
            out.extend(people)
        return out

    def _detections(self, bbox_file: str | Path) -> list[dict]:
        path = Path(bbox_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: detection file not found (data.val_bbox_file)")
        dets = json.loads(path.read_text())
        if not isinstance(dets, list):
            raise ValueError(f"{path}: expected a COCO results list of {{image_id, bbox, score}}")
        out = []
        for d in dets:
            if d.get("category_id", 1) != 1 or d["image_id"] not in self.coco.imgs:
                continue
            if d.get("score", 1.0) < self.cfg.det_score_threshold:
                self.skipped["detections_below_threshold"] += 1
                continue
            info = self.coco.imgs[d["image_id"]]
            box = _clip_box(d["bbox"], info["width"], info["height"])
            if box is None:
                continue
            out.append({"image_id": d["image_id"], "file": info["file_name"], "bbox": box,
                        "keypoints": np.zeros((NUM_JOINTS, 3)), "score": float(d.get("score", 1.0)), "ann_id": -1})
        with_dets = {inst["image_id"] for inst in out}
        self.skipped["images_without_person"] = len(set(self.coco.getImgIds()) - with_dets)
        return out

    def set_epoch(self, epoch: int) -> None:
        """Augmentation of sample i in epoch e is a pure function of (seed, e, i)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.instances)

    def load_image(self, index: int) -> Image.Image:
        path = self.image_dir / self.instances[index]["file"]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as err:
            raise OSError(f"{path}: cannot read image ({err})") from None

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for attempt in range(10):
            i = (index + attempt) % len(self)
            try:
                return self._sample(i, self.load_image(i))
            except OSError as err:
                if not self.train:
                    raise  # evaluation must see every instance, or AP is wrong
                # Training: one unreadable file must not end a long run; it is logged, the next crop stands in.
                log.warning("%s; training on the next crop instead", err)
        raise OSError(f"{self.image_dir}: 10 unreadable images in a row from crop {index} on; is the folder intact?")

    def _sample(self, index: int, image: Image.Image) -> dict[str, torch.Tensor]:
        cfg, inst = self.cfg, self.instances[index]
        size = tuple(cfg.image_size)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        params = box_to_crop(inst["bbox"], size, cfg.padding)
        if self.train:
            params = random_crop_params(params, rng, scale_factor=cfg.scale_factor, rotation_factor=cfg.rotation_factor,
                                        rotation_prob=cfg.rotation_prob, flip_prob=cfg.flip_prob)
        matrix = crop_matrix(params, size)
        crop = warp_image(image, matrix, size).copy()
        kp = apply_affine(inst["keypoints"][:, :2], matrix)
        vis = inst["keypoints"][:, 2].copy()
        if params.flip:  # the mirrored left wrist is now a right wrist
            kp, vis = kp[list(FLIP_INDEX)], vis[list(FLIP_INDEX)]
        if self.train and cfg.occlusion_prob > 0 and rng.random() < cfg.occlusion_prob:
            occlude(crop, kp, vis, rng, max_keypoints=cfg.occlusion_max_keypoints, size_range=cfg.occlusion_size)
        weights = keypoint_weights(vis, cfg.occluded_weight)
        hm_size = tuple(cfg.heatmap_size)
        if self.with_heatmaps:
            heatmaps, weights = encode_heatmaps(kp, weights, size, hm_size, cfg.heatmap_sigma)
            target = {"heatmaps": torch.from_numpy(heatmaps)}
        else:
            mu = to_heatmap_coords(kp, size, hm_size)
            weights = target_weights(mu, weights, hm_size, cfg.heatmap_sigma)
            target = {"target_keypoints": torch.from_numpy(np.nan_to_num(mu).astype(np.float32))}
        image = (crop.astype(np.float32) / 255.0 - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            **target,
            "target_weight": torch.from_numpy(weights),
            "keypoints": torch.from_numpy(np.concatenate([kp, vis[:, None]], axis=1).astype(np.float32)),
            "crop_to_image": torch.from_numpy(invert_affine(matrix).astype(np.float32)),
            "image_id": torch.tensor(inst["image_id"], dtype=torch.int64),
            "bbox_score": torch.tensor(inst["score"], dtype=torch.float32),
            "index": torch.tensor(index, dtype=torch.int64),
        }


def denormalize(image: torch.Tensor, cfg: CocoPoseDataConfig) -> np.ndarray:
    """Model input (3, H, W) back to uint8 (H, W, 3) for drawing."""
    img = image.detach().float().cpu().numpy().transpose(1, 2, 0)
    img = img * np.asarray(cfg.std, np.float32) + np.asarray(cfg.mean, np.float32)
    return (img.clip(0, 1) * 255).round().astype(np.uint8)
