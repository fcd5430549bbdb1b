"""Classification metrics with mmaction2 1.2.0's definitions (`mmaction.evaluation.functional.accuracy`).

`mean_class_accuracy` follows mmaction2 exactly: the average over classes that occur in the labels or the
predictions, a class that is only predicted counting as 0. Precision/recall and the confusion matrix are
over all `num_classes` (rows = true class, columns = predicted class).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

log = logging.getLogger("recognizer")


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or labels.ndim != 1 or len(scores) != len(labels):
        raise ValueError(f"scores must be (N, K) and labels (N,), got {scores.shape} and {labels.shape}")
    if len(labels) == 0:
        raise ValueError("no samples to evaluate (empty split?)")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels must be in [0, {scores.shape[1]}), got min {labels.min()} max {labels.max()}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).any(axis=1).sum())} of {len(scores)} score rows are "
                         "NaN/inf: the model diverged")
    return scores, labels


def top_k_accuracy(scores, labels, topk: Sequence[int] = (1,)) -> list[float]:
    scores, labels = _check(scores, labels)
    out = []
    for k in topk:
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out.append(float((top == labels[:, None]).any(axis=1).mean()))
    return out


def confusion_matrix(pred, labels, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts; row = true class, column = predicted class."""
    pred = np.asarray(pred, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    return np.bincount(labels * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def mean_class_accuracy(scores, labels) -> float:
    scores, labels = _check(scores, labels)
    pred = scores.argmax(axis=1)
    cm = confusion_matrix(pred, labels, scores.shape[1])
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0  # mmaction2 keeps labels seen in y_pred or y_real
    cnt, hit = cm.sum(axis=1)[present], np.diag(cm)[present]
    return float(np.mean([h / c if c else 0.0 for c, h in zip(cnt, hit)]))


def classification_report(scores, labels, label_names: Sequence[str] | None = None) -> dict:
    """Every metric the jobs report: acc_top1, mean_class_accuracy, per-class precision/recall/support,
    the confusion matrix, and warnings for degenerate evaluation sets (a single class present)."""
    scores, labels = _check(scores, labels)
    k = scores.shape[1]
    names = list(label_names) if label_names is not None else [str(i) for i in range(k)]
    pred = scores.argmax(axis=1)
    cm = confusion_matrix(pred, labels, k)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
    warnings = []
    present = int((support > 0).sum())
    if present < 2:
        warnings.append(f"only {present} class(es) present in the labels ({names[int(labels[0])]!r}): "
                        "mean class accuracy and per-class metrics are not informative")
    for i in np.flatnonzero(support == 0):
        warnings.append(f"class {names[i]!r} has no samples: its recall is undefined (reported as 0)")
    for w in warnings:
        log.warning("evaluation: %s", w)
    return {
        "acc_top1": top_k_accuracy(scores, labels, (1,))[0],
        "mean_class_accuracy": mean_class_accuracy(scores, labels),
        "num_samples": int(len(labels)),
        "num_classes_present": present,
        "precision": {n: float(p) for n, p in zip(names, precision)},
        "recall": {n: float(r) for n, r in zip(names, recall)},
        "support": {n: int(s) for n, s in zip(names, support)},
        "confusion_matrix": cm.tolist(),
        "label_names": names,
        "warnings": warnings,
    }


def flat_metrics(report: dict, prefix: str) -> dict[str, float]:
    """Scalars of a `classification_report` as `prefix/name` keys (for ray.train.report and TensorBoard)."""
    out = {f"{prefix}/acc_top1": report["acc_top1"],
           f"{prefix}/mean_class_accuracy": report["mean_class_accuracy"]}
    for n in report["label_names"]:
        out[f"{prefix}/precision_{n}"] = report["precision"][n]
        out[f"{prefix}/recall_{n}"] = report["recall"][n]
    return out
