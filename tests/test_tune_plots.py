"""The tune summary plots stay readable at hundreds of trials (a 500-trial search drew a 500-entry legend, a
21,572 px wide history and trial ids that stretched the parallel plot's y axis 20-fold) and look as before at the
demo's 4 trials. Checked on the matplotlib objects (sizes, limits, legend entries), not on pixels. No Ray."""
from __future__ import annotations

import random
import struct
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recognizer_core.train.stgcn.config import TrainJobConfig  # noqa: E402
from recognizer_core.tune import plots, stgcn_job  # noqa: E402
from recognizer_core.tune.records import TrialRecord, best_report  # noqa: E402
from recognizer_core.tune.search_space import load_search_space  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METRIC = "val/acc_top1"
DPI = 110  # write_plots' savefig dpi
NAMES = ["depth", "model.base_channels", "model.dropout", "optim.weight_decay", "train.class_weight[1]"]


@pytest.fixture(scope="module")
def space():
    return load_search_space(REPO / "search_spaces" / "fight.yaml", TrainJobConfig, job="stgcn",
                             metrics=stgcn_job.METRICS)


def _records(n: int, epochs: int = 6) -> list[TrialRecord]:
    """n trials of the fight space, scores in 0.9..1 (so the best ones crowd the metric axis' top), every 50th
    from the 8th on errored."""
    rng = random.Random(n)
    out = []
    for i in range(n):
        params = {"depth": rng.choice(["shallow", "stable", "deep"]), "model.base_channels": rng.choice([32, 48, 64]),
                  "model.dropout": rng.uniform(0.1, 0.7), "optim.weight_decay": 10 ** rng.uniform(-4, -2),
                  "train.class_weight[1]": rng.uniform(0.8, 2.0)}
        reports = [{"epoch": e + 1, METRIC: 0.9 + 0.1 * rng.random()} for e in range(epochs)]
        out.append(TrialRecord(f"t{i:05d}", params, reports, created=i + 1,
                               error="ValueError: boom" if i % 50 == 7 else None))
    return out


def _saved_px(fig) -> tuple[float, float]:
    """The size savefig(bbox_inches="tight") gives the PNG, from the figure's tight bounding box."""
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    return box.width * DPI, box.height * DPI


def _best_ids(recs, mode, k):
    done = [r for r in recs if not r.error]
    return [r.trial_id for r in sorted(done, key=lambda r: best_report(r, METRIC, mode)[METRIC],
                                       reverse=mode == "max")][:k]


def test_history_is_as_before_at_4_trials_and_capped_at_500():
    fig = plots._history(plt, _records(4), METRIC, "max")
    assert tuple(fig.get_size_inches()) == (7.0, 4.5)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["t00000", "t00001", "t00002", "t00003"]
    plt.close(fig)

    fig = plots._history(plt, _records(500), METRIC, "max")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert fig.get_size_inches()[0] <= plots.HISTORY_MAX_WIDTH_IN
    assert len(labels) <= plots.HISTORY_MAX_TICKS and labels[0] == "t00000"
    assert "one trial in 13" in ax.get_xlabel()
    width, height = _saved_px(fig)
    assert width < 2000 and height < 800, (width, height)  # was 21,572 px wide
    plt.close(fig)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_curves_name_every_trial_when_few_and_the_best_ten_when_many(mode):
    recs = _records(4)
    fig = plots._curves(plt, recs, METRIC, "epoch", mode)
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [r.trial_id for r in recs]
    plt.close(fig)

    recs = _records(500)
    fig = plots._curves(plt, recs, METRIC, "epoch", mode)
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert names == _best_ids(recs, mode, plots.BEST_NAMED)  # the best, best first
    assert len(ax.lines) == 500  # every trial still drawn: 490 grey behind the named 10
    colours = [ln.get_color() for ln in ax.lines if ln.get_label() in names]
    assert len(set(colours)) == plots.BEST_NAMED  # no colour repeats among the named
    title = ax.get_title()
    assert "500 trials: the best 10" in title and "thin grey" in title and "and 2 more" in title
    width, height = _saved_px(fig)
    assert width < 1200 and height < 800, (width, height)  # the 500-entry legend was 4,300 px tall
    plt.close(fig)


def test_curves_between_11_and_20_trials_keep_one_legend_entry_each_without_repeating_a_style():
    recs = _records(18)
    fig = plots._curves(plt, recs, METRIC, "epoch", "max")
    ax = fig.axes[0]
    assert len(ax.get_legend().get_texts()) == 18
    assert len({(ln.get_color(), ln.get_linestyle()) for ln in ax.lines}) == 18
    plt.close(fig)


@pytest.mark.parametrize("n", [4, 500])
def test_parallel_names_the_best_ten_and_keeps_the_axis_to_the_data(space, n):
    done = [r for r in _records(n) if not r.error]
    fig = plots._parallel(plt, done, space, NAMES, METRIC, "max")
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert (low, high) == pytest.approx((-0.1, 1.1))  # was up to label_y + 0.05: 20 at 500 trials
    ys = [y for ln in ax.lines for y in ln.get_ydata() if y == y]
    assert ys and low <= min(ys) and max(ys) <= high
    ids = [t for t in ax.texts if t.get_text().startswith("t0")]
    expected = _best_ids(done, "max", plots.BEST_NAMED)
    assert sorted(t.get_text() for t in ids) == sorted(expected)
    assert len(ids) == min(n, plots.BEST_NAMED) and all(low < t.get_position()[1] < high for t in ids)
    gaps = sorted(t.get_position()[1] for t in ids)
    assert all(b - a >= 0.04 - 1e-9 for a, b in zip(gaps, gaps[1:]))  # never overlapping
    assert ("ids of the best 10" in ax.get_title()) == (n > plots.BEST_NAMED)
    width, height = _saved_px(fig)
    assert width < 1500 and height < 700, (width, height)
    plt.close(fig)


def test_write_plots_of_a_60_trial_search_are_bounded_pngs(space, tmp_path):
    made, skipped = plots.write_plots(_records(60), space, METRIC, "max", tmp_path)
    assert {p.stem for p in made} == {"optimization_history", "learning_curves", "param_importances",
                                      "parallel_coordinate"}, skipped
    for path in made:
        width, height = struct.unpack(">II", path.read_bytes()[16:24])  # the PNG's IHDR
        assert width < 2000 and height < 1000, (path.name, width, height)
