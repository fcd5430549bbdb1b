"""Event thresholds from the validation run: per class, the lowest window-score threshold whose precision on
the validation split of the model's training data reaches a chosen value (so recall is the highest there).

The threshold is stored as the score itself, unrounded: events fire at score >= on, so a threshold rounded up
past the clip that set it would no longer take that clip, and the precision / recall in the sidecar would not
be the stored threshold's. Both are measured again at the stored value (`precision_recall_at`)."""
from __future__ import annotations

import numpy as np

from recognizer_core.recognize.events import threshold_at_precision
from recognizer_core.recognize.spec import ClassThreshold


def precision_recall_at(scores: np.ndarray, positive: np.ndarray, on: float) -> tuple[float, float]:
    """(precision, recall) of firing at score >= on, as events do; precision 1.0 where nothing fires (the
    convention of threshold_at_precision's "no threshold reaches it")."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    fired = scores >= on
    tp = int((fired & positive).sum())
    return (tp / int(fired.sum()) if fired.any() else 1.0), tp / max(int(positive.sum()), 1)


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
        on, _, _ = threshold_at_precision(probs[:, c], labels == c, precision)
        # the same numbers in all but one case: no threshold reaching the target gives on = 1.0, and clips
        # scoring exactly 1.0 (a saturated float32 softmax) still fire there
        p, r = precision_recall_at(probs[:, c], labels == c, on)
        out[name] = ClassThreshold(on=on, min_duration_s=min_duration_s,
                                   source=f"validation: precision {p:.3f} recall {r:.3f} on {split} "
                                          f"({len(clips)} clips)")
        report[name] = {"threshold": on, "precision": p, "recall": r, "positives": int((labels == c).sum())}
    return out, report
