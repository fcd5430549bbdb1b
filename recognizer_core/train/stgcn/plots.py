"""End-of-run figures: training curves and confusion matrices (PNG, matplotlib's Agg backend); class names in a
font that has their glyphs (recognizer_core.fonts)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from recognizer_core.fonts import drawable_names, fonts_for


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # workers have no display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Loss, learning rate and validation accuracy per epoch (validation points only where validated)."""
    plt = _pyplot()
    path = Path(path)
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [h.get("train/loss", np.nan) for h in history], marker="o", ms=3)
    axes[0].set_title("train/loss")
    axes[1].plot(epochs, [h.get("lr", np.nan) for h in history], marker="o", ms=3, color="tab:orange")
    axes[1].set_title("learning rate")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    val = [h for h in history if "val/acc_top1" in h]  # validated epochs only
    for key, label in (("val/acc_top1", "top-1"), ("val/mean_class_accuracy", "mean class acc")):
        axes[2].plot([h["epoch"] for h in val], [h[key] for h in val], marker="o", ms=3, label=label)
    axes[2].set_title("validation")
    axes[2].set_ylim(0, 1.02)
    axes[2].legend(loc="lower right")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrix(cm: np.ndarray, label_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Counts with row-normalised colour (recall per true class); rows = true, columns = predicted. Class names
    in a font that has their glyphs (drawable_names)."""
    plt = _pyplot()
    path = Path(path)
    cm = np.asarray(cm)
    k = len(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    label_names, font = drawable_names(label_names)
    with fonts_for(font):
        size = max(3.5, 0.6 * k + 2)
        fig, ax = plt.subplots(figsize=(size + 1, size))
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=9,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), label_names, rotation=45, ha="right")
        ax.set_yticks(range(k), label_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title or "confusion matrix")
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return path
