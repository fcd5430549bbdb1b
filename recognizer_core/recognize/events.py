"""Window scores -> action events: per class a threshold with hysteresis, merging of close events, a minimum
duration; and the threshold at a chosen precision, from validation scores.

Each score sequence (the scene, or one track) is scanned in time order. An event opens at the first window
whose class score reaches `on` and stays open while the score is at least `off` (< on: hysteresis keeps a
dipping score from splitting one event into many) and the windows follow each other (a stretch with nobody
seen, hence no windows, ends it). Its span is centred on the windows' centres (half a hop
either side), not their full length, so a long window does not stretch the event by its own length.
Events of one class and sequence less than `merge_gap_s` apart are merged; then shorter than
`min_duration_s` are dropped.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from recognizer_core.recognize.spec import ModelSpec


@dataclass
class Event:
    video: str
    label: str
    start_s: float
    end_s: float
    peak_score: float
    track_ids: list[int] = field(default_factory=list)
    class_index: int = -1

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(start_s=round(self.start_s, 3), end_s=round(self.end_s, 3), peak_score=round(self.peak_score, 4))
        return d


def hysteresis_runs(scores: Sequence[float], on: float, off: float) -> list[tuple[int, int]]:
    """[(first, last)] index runs: open at score >= on, stay open while score >= off."""
    runs, start = [], None
    for i, s in enumerate(scores):
        if start is None and s >= on:
            start = i
        elif start is not None and s < off:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(scores) - 1))
    return runs


def events_from_scores(starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, *, on: float, off: float,
                       min_duration_s: float, merge_gap_s: float,
                       track_ids: Sequence[Sequence[int]] | None = None) -> list[tuple[float, float, float, list[int]]]:
    """[(start_s, end_s, peak, track_ids)] of one class over one time-ordered window sequence."""
    starts, ends, scores = (np.asarray(a, np.float64) for a in (starts, ends, scores))
    if len(scores) == 0:
        return []
    centres = (starts + ends) / 2
    hop = float(np.median(np.diff(centres))) if len(centres) > 1 else float(ends[0] - starts[0])
    lo, hi = float(starts.min()), float(ends.max())
    # Windows where nobody was seen are not scored, so neighbours in this list can be far apart in time: a run
    # never spans such a gap (more than 1.5 hops between centres), as if the missing windows scored 0.
    cuts = [0, *(np.nonzero(np.diff(centres) > 1.5 * hop)[0] + 1), len(scores)]
    runs = [(a + s0, b + s0) for s0, s1 in zip(cuts[:-1], cuts[1:]) for a, b in hysteresis_runs(scores[s0:s1], on, off)]
    spans = []
    for a, b in runs:
        ids = sorted({int(t) for i in range(a, b + 1) for t in (track_ids[i] if track_ids else [])})
        spans.append([max(lo, float(centres[a]) - hop / 2), min(hi, float(centres[b]) + hop / 2),
                      float(scores[a:b + 1].max()), ids])
    merged: list[list] = []
    for s in spans:
        if merged and s[0] - merged[-1][1] <= merge_gap_s:
            last = merged[-1]
            last[1], last[2] = max(last[1], s[1]), max(last[2], s[2])
            last[3] = sorted(set(last[3]) | set(s[3]))
        else:
            merged.append(s)
    return [(a, b, p, ids) for a, b, p, ids in merged if b - a >= min_duration_s]


def detect_events(windows: Sequence, probs: np.ndarray, spec: ModelSpec, merge_gap_s: float = 1.0) -> list[Event]:
    """Events of every non-background class, over every sequence (scene / track) of the windows."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, w in enumerate(windows):
        groups.setdefault((w.video, w.key), []).append(i)
    events = []
    for (video, key), idx in groups.items():
        idx = sorted(idx, key=lambda i: windows[i].start_s)
        starts = np.array([windows[i].start_s for i in idx])
        ends = np.array([windows[i].end_s for i in idx])
        ids = [windows[i].track_ids for i in idx]
        kind = windows[idx[0]].kind
        for c in spec.event_classes:
            if spec.window_kind(c) != kind:
                continue  # e.g. falls from per-track windows only, fights from scene windows only
            th = spec.threshold(c)
            for a, b, peak, tids in events_from_scores(starts, ends, probs[idx, c], on=th.on, off=th.off_value,
                                                       min_duration_s=th.min_duration_s, merge_gap_s=merge_gap_s,
                                                       track_ids=ids):
                events.append(Event(video, spec.label_names[c], a, b, peak, tids, c))
    return sorted(events, key=lambda e: (e.video, e.start_s, e.label))


def threshold_at_precision(scores: np.ndarray, positive: np.ndarray, precision: float) -> tuple[float, float, float]:
    """(threshold, precision, recall): the lowest score threshold whose precision on (scores, positive) is at
    least `precision` (so recall is the highest such); 1.0 with recall 0 when no threshold reaches it."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    tp, n_pos = np.cumsum(y), max(int(y.sum()), 1)
    prec = tp / np.arange(1, len(s) + 1)
    best = (1.0, 1.0, 0.0)
    for i in range(len(s)):
        if (i + 1 < len(s) and s[i + 1] == s[i]) or prec[i] < precision:
            continue  # a threshold takes every window with an equal score
        best = (float(s[i]), float(prec[i]), float(tp[i] / n_pos))
    return best
