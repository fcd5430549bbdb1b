"""Evaluation and calibration arithmetic: a video without events where the model has no background class, the
stored calibrated threshold against the precision / recall reported for it, and whole-video labels in a video
that also has timed rows of another class. No Ray, no model: events and scores are given."""
from __future__ import annotations

import types

import numpy as np
import pytest

from recognizer_core.recognize.evaluation import evaluate, read_labels, write_report
from recognizer_core.recognize.events import Event


def _ev(video: str, label: str, a: float = 1.0, b: float = 3.0, peak: float = 0.9) -> Event:
    return Event(video, label, a, b, peak, [], 1)


# ---- 1. no background class: a video without events predicts no class ------------------------------------

def test_a_video_without_events_is_a_miss_not_class_0_when_there_is_no_background(tmp_path):
    names = ["drink water", "falling", "punching"]
    events = {"v1.mp4": [], "v2.mp4": [], "v3.mp4": [_ev("v3.mp4", "falling")]}
    labels = {"v1": "drink water", "v2": "punching", "v3": "falling"}
    r = evaluate(events, labels, {}, names, background=None)
    # class 0 got nothing right: v1 (class 0, nothing fired) is a miss and v2 is no class-0 false positive
    assert r["accuracy"] == pytest.approx(1 / 3)
    assert r["predicted_names"] == names + ["(none)"]
    assert r["confusion_matrix"] == [[0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 1]]
    assert r["precision"] == {"drink water": None, "falling": 1.0, "punching": None}
    assert r["recall"] == {"drink water": 0.0, "falling": 1.0, "punching": 0.0}
    files = write_report(r, tmp_path)  # the plot takes the extra column
    assert all(f.is_file() for f in files)
    # with a background class, a video without events still predicts it (a square matrix, no extra column)
    r = evaluate(events, {**labels, "v2": "drink water"}, {}, names, background=0)
    assert r["accuracy"] == 1.0 and r["confusion_matrix"] == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert r["predicted_names"] == names


# ---- 2. calibrated thresholds: the stored value's precision / recall are the reported ones ------------------

def _calibrate(monkeypatch, scores: np.ndarray, positive: np.ndarray, precision: float):
    """calibrate_thresholds on one event class (1) with given validation scores, no dataset or model."""
    import recognizer_core.skeleton.store as store
    from recognizer_core.recognize.calibrate import calibrate_thresholds

    clips = [types.SimpleNamespace(label=int(p), i=i) for i, p in enumerate(positive)]
    monkeypatch.setattr(store, "SkeletonDataset",
                        lambda path: types.SimpleNamespace(iter_clips=lambda split, copy: iter(clips)))
    probs = np.stack([1 - scores, scores], 1).astype(np.float32)  # float32 scores, as a model outputs them
    rec = types.SimpleNamespace(spec=types.SimpleNamespace(label_names=["NonFight", "Fight"], event_classes=[1]),
                                prepare=lambda batch: np.array([c.i for c in batch]), predict=lambda x: probs[x])
    th, report = calibrate_thresholds(rec, "data", "val", precision, batch_size=7)
    return th["Fight"], report["Fight"]


def _at(scores: np.ndarray, positive: np.ndarray, on: float) -> tuple[float, float]:
    fired = scores.astype(np.float32) >= on  # as events fire: float32 score >= on
    tp = int((fired & positive).sum())
    return (tp / fired.sum() if fired.any() else 1.0), tp / max(int(positive.sum()), 1)


def test_the_clip_that_sets_a_calibrated_threshold_still_fires_at_the_stored_value(monkeypatch):
    # 0.6999996 rounded to 6 places is 0.7: stored so, that positive clip no longer fired (recall 1.0 -> 0.5)
    scores = np.array([0.9, 0.6999996, 0.3, 0.2], np.float32)
    positive = np.array([True, True, False, False])
    th, rep = _calibrate(monkeypatch, scores, positive, 0.9)
    assert th.on <= float(scores[1]) and _at(scores, positive, th.on) == (1.0, 1.0)
    assert (rep["precision"], rep["recall"], rep["threshold"]) == (1.0, 1.0, th.on)
    assert th.source.startswith("validation: precision 1.000 recall 1.000 on val (4 clips)")
    # no threshold reaches 0.9, so 1.0 is stored; clips scoring exactly 1.0 still fire there, and the
    # report says what they give rather than precision 1, recall 0
    scores = np.array([1.0, 1.0, 0.5], np.float32)
    positive = np.array([True, False, True])
    th, rep = _calibrate(monkeypatch, scores, positive, 0.9)
    assert th.on == 1.0 and (rep["precision"], rep["recall"]) == _at(scores, positive, 1.0) == (0.5, 0.5)


def test_reported_precision_and_recall_hold_at_the_stored_threshold_on_random_validation_sets(monkeypatch):
    rng = np.random.default_rng(3)
    for _ in range(60):
        scores = rng.random(40).astype(np.float32)
        positive = rng.random(40) < scores  # a calibrated-ish model
        th, rep = _calibrate(monkeypatch, scores, positive, 0.8)
        p, r = _at(scores, positive, th.on)
        assert (rep["precision"], rep["recall"]) == pytest.approx((p, r)), (scores.tolist(), th.on)
        assert th.source.startswith(f"validation: precision {p:.3f} recall {r:.3f}")


# ---- 3. a whole-video label beside timed rows of another class ---------------------------------------------

NAMES3 = ["Normal", "Fight", "Fall"]


def _events() -> dict:
    return {"v.mp4": [_ev("v.mp4", "Fight", 0, 8, 0.9), _ev("v.mp4", "Fall", 10, 12, 0.8)]}


@pytest.mark.parametrize("rows", ["v.mp4,Fight,,\nv.mp4,Fall,10,12\n", "v.mp4,Fall,10,12\nv.mp4,Fight,,\n"])
def test_a_class_labelled_for_the_whole_video_is_not_scored_at_event_level_there(tmp_path, rows):
    csv = tmp_path / "labels.csv"
    csv.write_text("video,label,start_s,end_s\n" + rows)
    labels, intervals = read_labels(csv, NAMES3, 0)
    r = evaluate(_events(), labels, intervals, NAMES3, 0)
    # its Fight events could match no interval: not false positives; the timed Fall is scored as usual
    assert r["events"]["per_class"]["Fight"] == {"tp": 0, "fp": 0, "fn": 0, "precision": None, "recall": None}
    assert r["events"]["per_class"]["Fall"] == {"tp": 1, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0}
    assert r["events_unscored"] == [] and r["videos"] == 1


def test_timed_rows_of_a_class_are_scored_even_beside_an_untimed_row_of_it(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("video,label,start_s,end_s\nv.mp4,Fight,,\nv.mp4,Fight,0,8\nv.mp4,Fall,20,22\n"
                   "w.mp4,Fight,,\nn.mp4,Normal,,\n")
    labels, intervals = read_labels(csv, NAMES3, 0)
    events = {**_events(), "w.mp4": [_ev("w.mp4", "Fight")], "n.mp4": [_ev("n.mp4", "Fall")]}
    r = evaluate(events, labels, intervals, NAMES3, 0)
    assert r["events"]["per_class"]["Fight"] == {"tp": 1, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0}
    # Fall: the 10-12 event misses the 20-22 one, and the background video's Fall event is false
    assert r["events"]["per_class"]["Fall"] == {"tp": 0, "fp": 2, "fn": 1, "precision": 0.0, "recall": 0.0}
    assert r["events_unscored"] == ["w"]
    # untimed rows only: no event-level report, as before
    csv.write_text("video,label,start_s,end_s\nv.mp4,Fight,,\nn.mp4,Normal,,\n")
    r = evaluate(events, *read_labels(csv, NAMES3, 0), NAMES3, 0)
    assert "events" not in r and r["accuracy"] == 0.5
