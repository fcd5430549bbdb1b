"""Event thresholds from the validation run: per class, the lowest window-score threshold whose precision on
the validation split of the model's training data reaches a chosen value (so recall is the highest there)."""
from __future__ import annotations

import numpy as np

from recognizer_core.recognize.events import threshold_at_precision
from recognizer_core.recognize.spec import ClassThreshold


def calibrate_thresholds(recognizer, dataset_path: str, split: str, precision: float,
                         batch_size: int = 64, min_duration_s: float = 0.5) -> tuple[dict[str, ClassThreshold], dict]:
    """({class name: threshold}, report) from the clips of `split` scored by `recognizer` (test-mode pipeline)."""
    from recognizer_core.skeleton.store import SkeletonDataset

    clips = list(SkeletonDataset(dataset_path).iter_clips(split, copy=True))
    if not clips:
        raise ValueError(f"{dataset_path}: no clips in split {split!r} to calibrate thresholds on")
    spec = recognizer.spec
    probs = np.concatenate([recognizer.predict(recognizer.prepare(clips[i:i + batch_size]))
                            for i in range(0, len(clips), batch_size)])
    labels = np.array([c.label for c in clips])
    out, report = {}, {"dataset": dataset_path, "split": split, "clips": len(clips), "precision_target": precision}
    for c in spec.event_classes:
        name = spec.label_names[c]
        th, p, r = threshold_at_precision(probs[:, c], labels == c, precision)
        out[name] = ClassThreshold(on=round(th, 6), min_duration_s=min_duration_s,
                                   source=f"validation: precision {p:.3f} recall {r:.3f} on {split} "
                                          f"({len(clips)} clips)")
        report[name] = {"threshold": th, "precision": p, "recall": r, "positives": int((labels == c).sum())}
    return out, report
