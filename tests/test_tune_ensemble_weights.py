"""Fusion weights matter: validation data on which only one unequal weight pair classifies every clip.

test_tune_ensemble.py's data scores 0.6667 at every weight pair, so `fuse` ignoring its weights (a plain sum)
still passed it. Here equal weights (the plain sum) get clip 0 wrong and only (0.6, 0.4) gets all three right."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recognizer_core.tune.ensemble import accuracy, choose_weights, ensemble_report, fuse

LABELS = np.array([0, 1, 1])
# class probabilities per clip; the fused class-0 score of clip 0 is 0.1 + 0.7 * w_a (> 0.5 needs w_a >= 0.6 on
# the 0.1 grid), the fused class-1 score of clip 1 is 0.9 - 0.6 * w_a (> 0.5 needs w_a <= 0.6)
A = np.array([[0.8, 0.2], [0.7, 0.3], [0.2, 0.8]])
B = np.array([[0.1, 0.9], [0.1, 0.9], [0.4, 0.6]])


def test_fuse_weights_each_stream():
    fused = fuse([A, B], (0.6, 0.4))
    # by hand: clip 0 = 0.6 * [0.8, 0.2] + 0.4 * [0.1, 0.9] = [0.52, 0.48]
    np.testing.assert_allclose(fused[0], [0.52, 0.48], rtol=0, atol=1e-12)
    np.testing.assert_allclose(fused[1], [0.46, 0.54], rtol=0, atol=1e-12)
    np.testing.assert_allclose(fuse([A, B], (1.0, 0.0)), A, rtol=0, atol=0)
    assert accuracy(fuse([A, B], (0.6, 0.4)), LABELS) == 1.0
    assert accuracy(fuse([A, B], (0.5, 0.5)), LABELS) == pytest.approx(2 / 3)


def test_the_only_weights_with_full_accuracy_are_chosen(tmp_path):
    w, val = choose_weights([A, B], LABELS)
    assert w == pytest.approx((0.6, 0.4)) and val == 1.0
    report = ensemble_report({"a": {"val": (A, LABELS), "test": (A, LABELS), "model": "a.pth"},
                              "b": {"val": (B, LABELS), "test": (B, LABELS), "model": "b.pth"}}, tmp_path)
    saved = json.loads((tmp_path / "ensemble.json").read_text())
    assert saved["weights"] == pytest.approx({"a": 0.6, "b": 0.4})
    assert report["val"]["fused"] == 1.0 and report["val"]["fused_equal_weights"] == pytest.approx(2 / 3)
    assert report["test"]["fused"] == 1.0 and report["test"]["a"] == report["test"]["b"] == pytest.approx(2 / 3)
