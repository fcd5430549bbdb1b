"""A PNG grid of validation crops with predicted (colour) and ground-truth (white) skeletons."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from recognizer_core.skeleton.coco import LIMBS


def draw_pose_grid(images: list[np.ndarray], predicted: list[np.ndarray], ground_truth: list[np.ndarray | None],
                   path: str | Path, *, score_threshold: float = 0.2, title: str = "") -> Path:
    """images: uint8 (H, W, 3); predicted: (K, 3) x, y, score in crop pixels; ground_truth: (K, 3) x, y,
    visibility or None. Joints below `score_threshold` (or unlabelled) are not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(images))
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    h, w = images[0].shape[:2] if images else (64, 48)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols * w / max(h, w) + 0.5, 3 * rows * h / max(h, w) + 0.5),
                             squeeze=False)
    cmap = plt.get_cmap("hsv")
    for ax in axes.flat:
        ax.axis("off")
    for i, img in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(img)
        gt = ground_truth[i] if i < len(ground_truth) else None
        if gt is not None:
            for a, b in LIMBS:
                if gt[a, 2] > 0 and gt[b, 2] > 0:
                    ax.plot([gt[a, 0], gt[b, 0]], [gt[a, 1], gt[b, 1]], color="white", lw=1, alpha=0.7)
        pred = predicted[i]
        for li, (a, b) in enumerate(LIMBS):
            if pred[a, 2] >= score_threshold and pred[b, 2] >= score_threshold:
                ax.plot([pred[a, 0], pred[b, 0]], [pred[a, 1], pred[b, 1]], color=cmap(li / len(LIMBS)), lw=2)
        ok = pred[:, 2] >= score_threshold
        ax.scatter(pred[ok, 0], pred[ok, 1], s=8, c="yellow", edgecolors="black", linewidths=0.3, zorder=3)
        ax.set_xlim(0, img.shape[1])
        ax.set_ylim(img.shape[0], 0)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
