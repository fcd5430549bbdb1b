"""Classification metrics against hand-computed values and mmaction2 1.2.0's definitions."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from recognizer_core.train.stgcn.metrics import (classification_report, confusion_matrix, flat_metrics,
                                           mean_class_accuracy, top_k_accuracy)

# 3 classes, 8 samples; predictions = argmax of the rows
SCORES = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1],
                   [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1], [0.1, 0.3, 0.6]])
LABELS = np.array([0, 1, 2, 1, 1, 2, 0, 0])
#  pred             0  1  2  0  1  2  0  2


def test_confusion_matrix_rows_true_columns_predicted():
    cm = confusion_matrix(SCORES.argmax(1), LABELS, 3)
    np.testing.assert_array_equal(cm, [[2, 0, 1], [1, 2, 0], [0, 0, 2]])


def test_top1_and_mean_class_accuracy_by_hand():
    assert top_k_accuracy(SCORES, LABELS, (1, 2)) == pytest.approx([6 / 8, 7 / 8])
    # per-class recall 2/3, 2/3, 2/2
    assert mean_class_accuracy(SCORES, LABELS) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_mean_class_accuracy_counts_only_seen_classes_like_mmaction2():
    # class 2 never appears (neither label nor prediction): mmaction2 leaves it out of the mean;
    # class 1 only predicted: mmaction2 counts it as 0
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.7, 0.3, 0.0]])
    labels = np.array([0, 0, 0])
    assert mean_class_accuracy(scores, labels) == pytest.approx((2 / 3 + 0.0) / 2)
    assert mean_class_accuracy(scores[[0, 2]], labels[[0, 2]]) == pytest.approx(1.0)


def test_report_precision_recall_and_flat_keys():
    rep = classification_report(SCORES, LABELS, ["a", "b", "c"])
    assert rep["precision"] == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 2 / 3})
    assert rep["recall"] == pytest.approx({"a": 2 / 3, "b": 2 / 3, "c": 1.0})
    assert rep["support"] == {"a": 3, "b": 3, "c": 2} and rep["num_samples"] == 8 and rep["warnings"] == []
    flat = flat_metrics(rep, "val")
    assert flat["val/acc_top1"] == pytest.approx(0.75) and flat["val/recall_c"] == pytest.approx(1.0)


def test_single_class_is_reported_not_silent(caplog):
    scores = np.array([[0.8, 0.2], [0.3, 0.7], [0.9, 0.1]])
    with caplog.at_level(logging.WARNING, logger="recognizer"):
        rep = classification_report(scores, np.array([0, 0, 0]), ["Normal", "Falldown"])
    assert rep["num_classes_present"] == 1
    assert any("only 1 class" in w for w in rep["warnings"]) and "only 1 class" in caplog.text
    assert any("'Falldown' has no samples" in w for w in rep["warnings"])


@pytest.mark.parametrize("scores,labels,match", [
    (np.zeros((0, 2)), np.zeros(0, int), "no samples"),
    (np.zeros((2, 2)), np.array([0, 2]), "labels must be in"),
    (np.array([[0.1, np.nan], [0.5, 0.5]]), np.array([0, 1]), "NaN/inf"),
    (np.zeros((3, 2)), np.array([0, 1]), "must be"),
])
def test_bad_inputs_raise(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        classification_report(scores, labels)
