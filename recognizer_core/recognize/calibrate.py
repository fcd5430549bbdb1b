"""Event thresholds from the validation run: per class, the lowest window-score threshold whose precision on
the validation split of the model's training data reaches a chosen value (so recall is the highest there).

The threshold is stored as the score itself, unrounded: events fire at score >= on, so a threshold rounded up
past the clip that set it would no longer take that clip, and the precision / recall in the sidecar would not
be the stored threshold's. Both are measured again at the stored value (`precision_recall_at`).

A class whose target no threshold reaches gets 1.0, which fires only on windows scoring exactly 1.0 (usually
none): a warning line names the class, the target and the best precision reached, and where nothing fires the
precision is recorded as null (None), not as a 1.0 that reads like a met target."""
from __future__ import annotations

import sys

import numpy as np

from recognizer_core.recognize.events import threshold_cuts, threshold_at_precision
from recognizer_core.recognize.spec import ClassThreshold


def precision_recall_at(scores: np.ndarray, positive: np.ndarray, on: float) -> tuple[float | None, float]:
    """(precision, recall) of firing at score >= on, as events do; precision None where nothing fires (there
    is no precision to measure; 1.0 read as a reached target)."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    fired = scores >= on
    tp = int((fired & positive).sum())
    return (tp / int(fired.sum()) if fired.any() else None), tp / max(int(positive.sum()), 1)


def best_precision(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float] | None:
    """(precision, threshold): the highest precision a threshold reaches, at the lowest such threshold; None
    without scores. A threshold takes every window with an equal score, as in threshold_at_precision."""
    thresholds, prec, _ = threshold_cuts(scores, positive)
    if not len(prec):
        return None
    i = len(prec) - 1 - int(np.argmax(prec[::-1]))  # the lowest threshold of the best precision
    return float(prec[i]), float(thresholds[i])


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
        reached = p is not None and p >= precision
        if not reached:  # the stored threshold would (almost) never fire: said, not left for the user to find
            best = best_precision(probs[:, c], labels == c)
            print(f"[calibrate] warning: {name}: no threshold reaches precision {precision:g} on {split} "
                  f"({len(clips)} clips); the best reached is " + (f"{best[0]:.3f} (at threshold {best[1]:.4g})"
                  if best else "none") + f"; stored threshold {on:g}, which fires on "
                  + (f"{r:.0%} of the positives" if p is not None else "no validation window"),
                  file=sys.stderr, flush=True)
        shown = "n/a (nothing fires)" if p is None else f"{p:.3f}"
        out[name] = ClassThreshold(on=on, min_duration_s=min_duration_s,
                                   source=f"validation: precision {shown} recall {r:.3f} on {split} "
                                          f"({len(clips)} clips)" + ("" if reached else
                                                                     f", target {precision:g} not reached"))
        report[name] = {"threshold": on, "precision": p, "recall": r, "positives": int((labels == c).sum()),
                        "target_reached": reached}
    return out, report
