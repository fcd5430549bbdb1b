"""The fold comparison of tune/compare.py is a PAIRED t-test: fold k of the winner against fold k of the preset.

test_tune_logic.py's cases give p < 0.05 / p > 0.05 on either side for paired and unpaired tests alike, so
replacing ttest_rel by ttest_ind passed. Here the winner is better on every fold by a small, steady margin on
folds that differ a lot from each other: paired p = 0.0086, unpaired (Welch or pooled) p = 0.72."""
from __future__ import annotations

import math
import pytest
from scipy import stats

from recognizer_core.tune.compare import paired_test, preset_comparison
from recognizer_core.tune.records import TrialRecord

WINNER = [0.80, 0.70, 0.90, 0.75, 0.85]
PRESET = [0.78, 0.69, 0.87, 0.74, 0.83]


def _paired_p(a: list[float], b: list[float]) -> float:
    """The paired t-test by its definition: t = mean(d) / (sd(d) / sqrt(n)) on n - 1 degrees of freedom."""
    d = [x - y for x, y in zip(a, b)]
    n, m = len(d), sum(d) / len(d)
    sd = math.sqrt(sum((v - m) ** 2 for v in d) / (n - 1))
    return float(2 * stats.t.sf(abs(m / (sd / math.sqrt(n))), n - 1))


def test_paired_and_unpaired_disagree_and_the_paired_one_is_used():
    assert _paired_p(WINNER, PRESET) == pytest.approx(0.0086, abs=1e-4)
    assert stats.ttest_ind(WINNER, PRESET).pvalue == pytest.approx(0.72, abs=0.01)  # the wrong test's answer
    out = paired_test(WINNER, PRESET)
    assert out["p_value"] == pytest.approx(_paired_p(WINNER, PRESET), rel=1e-9)
    assert out["mean_difference"] == pytest.approx(0.018) and out["verdict"].startswith("more than noise")
    # pairing is by fold: the same scores with the folds mismatched are no longer a steady gain
    shuffled = paired_test(WINNER, PRESET[1:] + PRESET[:1])
    assert shuffled["p_value"] > 0.05 and shuffled["verdict"].startswith("within noise")


class _Space:
    """What preset_comparison reads of a search space: its first start point is the preset (a stand-in, so
    this test does not depend on a preset file's other contents)."""

    def start_points(self) -> list[dict]:
        return [{"depth": "preset"}]


def test_preset_comparison_pairs_the_folds():
    """The same folds through the summary's comparison (what tune_fight.py --folds prints)."""
    space, m = _Space(), "val/acc_top1"

    def cv(folds):
        return {"epoch": 2, m: sum(folds) / len(folds), "cv/folds": len(folds),
                **{f"{m}_fold{k}": v for k, v in enumerate(folds)}}

    preset = TrialRecord("p", {"depth": "preset"}, [cv(PRESET)])
    winner = TrialRecord("w", {"depth": "deep"}, [cv(WINNER)])
    out = preset_comparison([preset, winner], space, m, "max", winner, {"trial_epochs": 4})
    assert out["cv"]["winner_folds"] == WINNER and out["cv"]["preset_folds"] == PRESET
    assert out["cv"]["p_value"] == pytest.approx(_paired_p(WINNER, PRESET), rel=1e-9)
    assert out["cv"]["verdict"].startswith("more than noise")
