"""Validation of the DINO pose model: sharded inference (optionally flip-averaged), gathered COCO keypoint AP on
rank 0, the same metrics broadcast to every rank, and a PNG of predicted skeletons."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from recognizer_core.coco_pose.dataset import CocoPoseDataset, continuous_to_coco, denormalize
from recognizer_core.coco_pose.evaluate import coco_results, crop_areas, evaluate_keypoints, flip_back, \
    heatmaps_to_image_keypoints, oks_nms
from recognizer_core.coco_pose.heatmaps import decode_heatmaps, heatmap_to_input, render_heatmaps
from recognizer_core.coco_pose.visualize import draw_pose_grid
from recognizer_core.models.dino_heads import weighted_heatmap_mse
from recognizer_core.models.dino_pose import KEYPOINT_HEAD
from recognizer_core.train.collectives import broadcast_object, gather_objects


def target_batch(batch: dict, cfg, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(heatmaps (B, K, Hh, Wh), weights (B, K)) on `device` for a batch of a `with_heatmaps=False` dataset."""
    weight = batch["target_weight"].to(device, non_blocking=True)
    mu = batch["target_keypoints"].to(device, non_blocking=True)
    return render_heatmaps(mu, weight, tuple(cfg.data.heatmap_size), cfg.data.heatmap_sigma), weight


def predict_heatmaps(model, images: torch.Tensor, *, flip_test: bool, amp_dtype) -> torch.Tensor:
    autocast = torch.autocast(images.device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    with torch.no_grad(), autocast:
        hm = model(images)[KEYPOINT_HEAD].float()
        if flip_test:
            hm = 0.5 * (hm + flip_back(model(images.flip(-1))[KEYPOINT_HEAD].float()))
    return hm


def validate(model, loader, dataset: CocoPoseDataset, *, cfg, ctx, amp_dtype, logger, epoch: int,
             step: int, vis_dir: Path) -> dict[str, float]:
    """-> {"val/AP", "val/AP50", "val/AP75", "val/AR"} (+ "val/loss" on ground-truth boxes), identical on every
    rank. `model` is the plain
    module (no DDP: eval needs no gradient sync, and ranks may run different numbers of batches)."""
    was_training = model.training
    model.eval()
    size = tuple(cfg.data.image_size)
    with_targets = cfg.data.val_bbox_file is None  # detection boxes have no target heatmaps
    loss_sum, count = 0.0, 0
    preds = {"index": [], "image_id": [], "keypoints": [], "scores": [], "box_score": [], "area": []}
    vis_imgs, vis_pred, vis_gt = [], [], []
    for batch in loader:
        images = batch["image"].to(ctx.device)
        hm = predict_heatmaps(model, images, flip_test=cfg.train.flip_test, amp_dtype=amp_dtype)
        if with_targets:
            target, weight = target_batch(batch, cfg, ctx.device)
            loss = weighted_heatmap_mse(hm, target, weight)
            loss_sum += float(loss) * len(images)
            count += len(images)
        kps, scores = heatmaps_to_image_keypoints(hm, batch["crop_to_image"].numpy(), size,
                                                  blur_sigma=cfg.data.heatmap_sigma)
        preds["index"].append(batch["index"].numpy())
        preds["image_id"].append(batch["image_id"].numpy())
        preds["keypoints"].append(kps)
        preds["scores"].append(scores)
        preds["box_score"].append(batch["bbox_score"].numpy())
        preds["area"].append(crop_areas(batch["crop_to_image"].numpy(), size))  # OKS-NMS scale, as mmpose's
        want = cfg.train.vis_num_images - len(vis_imgs)
        if ctx.rank == 0 and want > 0:
            coords, sc = decode_heatmaps(hm[:want], cfg.data.heatmap_sigma)
            in_crop = heatmap_to_input(coords, size, tuple(hm.shape[-2:]))
            for j in range(len(in_crop)):
                vis_imgs.append(denormalize(batch["image"][j], cfg.data))
                vis_pred.append(np.concatenate([in_crop[j], sc[j][:, None]], axis=1))
                vis_gt.append(batch["keypoints"][j].numpy() if with_targets else None)
    local = {k: (np.concatenate(v) if v else np.zeros((0,))) for k, v in preds.items()}
    local["loss"] = (loss_sum, count)
    gathered = gather_objects(local)
    metrics = None
    if ctx.rank == 0:
        metrics = _score(gathered, dataset, cfg)
        if vis_imgs:
            png = draw_pose_grid(vis_imgs, vis_pred, vis_gt, Path(vis_dir) / f"val_epoch{epoch:03d}.png",
                                 score_threshold=cfg.train.keypoint_score_threshold,
                                 title=f"epoch {epoch}: AP {metrics['val/AP']:.3f} (colour: predicted, "
                                       "white: ground truth)")
            logger.log_image("val/skeletons", png, step)
    metrics = broadcast_object(metrics)
    model.train(was_training)
    return metrics


def validation_results(gathered: list[dict], cfg) -> list[dict]:
    """Gathered per-rank predictions (continuous image coordinates) -> COCO keypoint results, in dataset order.

    Keypoints go back to COCO's pixel indices (`continuous_to_coco`: the loader moved the annotations to pixel
    centres, +0.5). Every image's results are OKS-NMSed, with ground-truth boxes too: mmpose's CocoMetric does so
    whatever the boxes (unless nms_mode='none'), and two crops of overlapping people can yield the same pose."""
    parts = [g for g in gathered if len(g["index"])]
    keys = ("index", "image_id", "keypoints", "scores", "box_score", "area")
    cat = {k: np.concatenate([g[k] for g in parts]) for k in keys}
    order = np.argsort(cat["index"], kind="stable")
    results = coco_results(cat["image_id"][order], continuous_to_coco(cat["keypoints"][order]),
                           cat["scores"][order], cat["box_score"][order],
                           keypoint_score_threshold=cfg.train.keypoint_score_threshold, areas=cat["area"][order])
    return oks_nms(results, cfg.train.oks_nms_threshold)


def _score(gathered: list[dict], dataset: CocoPoseDataset, cfg) -> dict[str, float]:
    loss_sum = sum(g["loss"][0] for g in gathered)
    count = sum(g["loss"][1] for g in gathered)
    if not any(len(g["index"]) for g in gathered):
        raise ValueError(f"{dataset.annotation_file}: validation produced no predictions")
    stats = evaluate_keypoints(dataset.coco, validation_results(gathered, cfg))
    out = {"val/AP": stats["AP"], "val/AP50": stats["AP50"], "val/AP75": stats["AP75"], "val/AR": stats["AR"]}
    if count:  # detection boxes have no target heatmaps: no loss measured, none reported
        out["val/loss"] = loss_sum / count
    return out
