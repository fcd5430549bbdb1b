"""Window scores -> action events: per class a threshold with hysteresis, merging of close events, a minimum
duration; and the threshold at a chosen precision, from validation scores.

Each score sequence (the scene, or one track) is scanned in time order. An event opens at the first window
whose class score reaches `on` and stays open while the score is at least `off` (< on: hysteresis keeps a
dipping score from splitting one event into many) and the windows follow each other (a stretch with nobody
seen, hence no windows, ends it). Such a run of firing windows spans their centres, half a hop either side (a
long window does not stretch the event by its own length), or, where narrower, the span all its windows share
(a 0.8 s fall that six 3.3 s windows catch is not a 3 s event); one that holds the video's first (last) window
position reaches back to its start (on to its end), as no earlier (later) window could fire (`run_extent`).
Events of one class and sequence less than `merge_gap_s` apart are merged (the hull of the runs' centre spans);
then those whose windows fired for less than `min_duration_s` (their centre spans, to within half a frame per
window step: `long_enough`) are dropped. `OnlineEvents` applies the same rules one window step at a time
(stream mode), so a stream's events equal batch mode's on the same scores; event_delivery.py's `EventSink`
delivers them (printed, appended to a file, POSTed by a sender thread so that a slow endpoint never holds up
scoring).
"""
from __future__ import annotations

import collections
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from recognizer_core.recognize.event_runs import event_extent, hysteresis_runs, long_enough, reach, run_extent
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


def events_from_scores(starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, *, on: float, off: float,
                       min_duration_s: float, merge_gap_s: float,
                       track_ids: Sequence[Sequence[int]] | None = None, fps: float | None = None,
                       bounds: tuple[float, float] | None = None, shared: bool = False,
                       hop_s: float | None = None) -> list[tuple[float, float, float, list[int]]]:
    """[(start_s, end_s, peak, track_ids)] of one class over one time-ordered window sequence at `fps`.
    `bounds`: where the video starts and ends (default: this sequence's first window start, last window end);
    `shared`: a run may span what its windows share (event_runs.run_extent); `hop_s`: the windows' step (default:
    the median step of this sequence, which a track seen twice far apart or a short video's last window, placed
    to end at its last frame, make wrong: recognize passes the real one, as a stream steps)."""
    starts, ends, scores = (np.asarray(a, np.float64) for a in (starts, ends, scores))
    if len(scores) == 0:
        return []
    centres = (starts + ends) / 2
    hop = hop_s or (float(np.median(np.diff(centres))) if len(centres) > 1 else float(ends[0] - starts[0]))
    lo, hi = float(starts.min()), float(ends.max())
    v0, v1 = bounds or (lo, hi)
    # Windows where nobody was seen are not scored, so neighbours in this list can be far apart in time: a run
    # never spans such a gap (more than 1.5 hops between centres), as if the missing windows scored 0.
    cuts = [0, *(np.nonzero(np.diff(centres) > 1.5 * hop)[0] + 1), len(scores)]
    spans = []  # [centre start, centre end, peak, track ids, [(run_extent, reach of the centre span) per run]]
    for s0, s1 in zip(cuts[:-1], cuts[1:]):
        for a, b in ((a + s0, b + s0) for a, b in hysteresis_runs(scores[s0:s1], on, off)):
            ids = sorted({int(t) for i in range(a, b + 1) for t in (track_ids[i] if track_ids else [])})
            # never past the run's last window (a stride longer than the window), as the stream caps it
            centre = (max(lo, float(centres[a]) - hop / 2), min(hi, float(ends[b]), float(centres[b]) + hop / 2))
            edges = (float(starts[a]) if starts[a] <= v0 + 1e-6 else None,
                     float(ends[b]) if ends[b] >= v1 - 1e-6 else None)
            common = (float(starts[a:b + 1].max()), float(ends[a:b + 1].min())) if shared else None
            part = (run_extent(centre, common, *edges),
                    reach(centre, *edges))
            spans.append([*centre, float(scores[a:b + 1].max()), ids, [part]])
    merged: list[list] = []
    for s in spans:  # merging and the minimum duration go by the centre spans: how long the windows fired
        if merged and s[0] - merged[-1][1] <= merge_gap_s:
            last = merged[-1]
            last[1], last[2] = max(last[1], s[1]), max(last[2], s[2])
            last[3] = sorted(set(last[3]) | set(s[3]))
            last[4] = last[4] + s[4]
        else:
            merged.append(s)
    return [(*event_extent(parts), p, ids) for c0, c1, p, ids, parts in merged
            if long_enough(c1 - c0, min_duration_s, hop, fps)]


def detect_events(windows: Sequence, probs: np.ndarray, spec: ModelSpec, merge_gap_s: float = 1.0,
                  extent: tuple[float, float] | None = None, shared_span: bool | frozenset[int] = False,
                  hop_s: float | None = None) -> list[Event]:
    """Events of every non-background class, over every sequence (scene / track) of the windows. `extent`: the
    video's first frame time and last frame end (windows of one video); without it the first start and last end
    of its windows, which differ only where nobody is seen at its very start or end. `shared_span`: recognize's
    `event_span: shared` (True: every class; a set: those class indices, `shared_span_classes`;
    event_runs.run_extent); `hop_s`: the windows' step (events_from_scores)."""
    groups: dict[tuple[str, str], list[int]] = {}
    bounds: dict[str, tuple[float, float]] = {}
    for i, w in enumerate(windows):
        groups.setdefault((w.video, w.key), []).append(i)
        lo, hi = bounds.get(w.video, (w.start_s, w.end_s))
        bounds[w.video] = extent or (min(lo, w.start_s), max(hi, w.end_s))
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
                                                       track_ids=ids, fps=spec.fps, bounds=bounds[video],
                                                       shared=_shared(shared_span, c), hop_s=hop_s):
                events.append(Event(video, spec.label_names[c], a, b, peak, tids, c))
    return sorted(events, key=lambda e: (e.video, e.start_s, e.label))


def threshold_cuts(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, precision, true positives) of firing at score >= threshold, one entry per distinct score,
    highest first: a threshold takes every window with an equal score, so only those cuts exist. The one
    precision curve of threshold_at_precision and calibrate.best_precision."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    order = np.argsort(-scores, kind="stable")
    s, tp = scores[order], np.cumsum(positive[order])
    last = np.ones(len(s), bool)  # the last window of each run of equal scores (NaNs stay apart, as != has it)
    last[:-1] = s[1:] != s[:-1]
    return s[last], tp[last] / (np.nonzero(last)[0] + 1), tp[last]


def threshold_at_precision(scores: np.ndarray, positive: np.ndarray, precision: float) -> tuple[float, float, float]:
    """(threshold, precision, recall): the lowest score threshold whose precision on (scores, positive) is at
    least `precision` (so recall is the highest such); 1.0 with recall 0 when no threshold reaches it."""
    thresholds, prec, tp = threshold_cuts(scores, positive)
    reached = np.nonzero(prec >= precision)[0]
    if not len(reached):
        return 1.0, 1.0, 0.0
    i, n_pos = reached[-1], max(int(np.asarray(positive, bool).sum()), 1)
    return float(thresholds[i]), float(prec[i]), float(tp[i] / n_pos)


def _shared(shared_span: bool | frozenset[int], c: int) -> bool:
    return shared_span if isinstance(shared_span, bool) else c in shared_span


@dataclass
class OnlineEvents:
    """`detect_events` over windows that arrive one step at a time: per (sequence, class), hysteresis, then
    merging with the previous event of that key when it returns within `merge_gap_s` (a closed event is held that
    long in stream time before it is final), then `min_duration_s` on the merged event. Only the classes whose
    window kind is the window's (window_mode both). A step's windows span spec.window_s about its centre; the
    first step (since the start or a `flush`) is at the video's start, a flush at its end. Final events queue in
    `ready`, oldest first; they leave it only once delivered, so a stop signal between closing and delivering
    loses none."""

    spec: ModelSpec
    video: str
    merge_gap_s: float = 1.0
    shared_span: bool | frozenset[int] = False  # all classes, or these: the shared span (event_runs.run_extent)
    # (key, class) -> [centre start, centre end, peak, track ids, closed runs' parts (as batch mode's), open run
    # or None]; a run: [stream start or None, latest window start, earliest window end, last end, centre start]
    open: dict = field(default_factory=dict)
    held: dict = field(default_factory=dict)  # (key, class) -> a closed span that may still merge with the next
    ready: collections.deque = field(default_factory=collections.deque)
    started: bool = False  # a step came since the start or the latest flush
    hop_s: float = 0.0

    def step(self, centre_s: float, hop_s: float, windows: Sequence[tuple[str, str, np.ndarray, Sequence[int]]],
             start_s: float = 0.0) -> None:
        """One scoring step: the windows (key, kind, class probabilities, track ids) centred at `centre_s`, steps
        `hop_s` apart. A sequence without a window in this step ends its events (the person left, or nobody is
        seen: no window of theirs will score below `off`), as batch mode ends a run at a gap in the windows.
        `start_s`: the stream's first frame (default 0): the first step's buffer holds 0.9-1 window, and no event
        reaching back to the stream's start starts before it."""
        keys, self.hop_s = {w[0] for w in windows}, hop_s
        for k in [k for k in self.open if k[0] not in keys]:
            self._close(k, last=False)
        for key, kind, probs, track_ids in windows:
            self._feed(key, kind, centre_s, hop_s, probs, track_ids, None if self.started else start_s)
        self.started = True
        # The next step is centred at least a hop later, so no later event of a key can start before
        # centre + hop / 2: a held event further than merge_gap_s before that can merge with nothing more.
        for k in [k for k, span in self.held.items() if centre_s + hop_s / 2 - span[1] > self.merge_gap_s]:
            self._finish(k)

    def _feed(self, key: str, kind: str, centre_s: float, hop_s: float, probs: np.ndarray, track_ids,
              stream_start: float | None) -> None:  # the stream's first frame at its first step, else None
        win = (centre_s - self.spec.window_s / 2, centre_s + self.spec.window_s / 2)
        for c in self.spec.event_classes:
            if self.spec.window_kind(c) != kind:
                continue  # as detect_events: e.g. falls from track windows only, fights from scene windows only
            k, th, s = (key, c), self.spec.threshold(c), float(probs[c])
            cur = self.open.get(k)
            if cur is None and s >= th.on:
                # at the first step no event starts before the stream's first frame (batch: its first window's
                # start), also where a stride longer than 0.8 window puts the centre span before it
                run = [None if stream_start is None else max(win[0], stream_start), *win, win[1],
                       centre_s - hop_s / 2 if stream_start is None else max(centre_s - hop_s / 2, stream_start)]
                held = self.held.get(k)
                if held is not None and centre_s - hop_s / 2 - held[1] <= self.merge_gap_s:
                    held[5] = run
                    self.open[k] = held  # the same class back within merge_gap_s: one event, as batch merges them
                    del self.held[k]
                    self._extend(held, centre_s + hop_s / 2, s, track_ids, win)
                    continue
                if held is not None:
                    self._finish(k)
                self.open[k] = [run[4], min(centre_s + hop_s / 2, win[1]), s, set(track_ids), [], run]
            elif cur is not None and s >= th.off_value:
                self._extend(cur, centre_s + hop_s / 2, s, track_ids, win)
            elif cur is not None:
                self._close(k, last=False)

    @staticmethod
    def _extend(span: list, end_s: float, score: float, track_ids, win: tuple[float, float]) -> None:
        # never past the window's end (a stride longer than the window), as batch caps at the run's last window
        span[1], span[2] = max(span[1], min(end_s, win[1])), max(span[2], score)
        span[3] |= set(track_ids)
        run = span[5]
        run[1], run[2], run[3] = max(run[1], win[0]), min(run[2], win[1]), win[1]

    def _close(self, k, last: bool) -> None:
        """The open run of `k` ends (`last`: at the end of the stream) and its extent joins the event's."""
        span, run = self.open[k], self.open[k][5]
        if run is not None:  # None: closed before, then a stop signal came before it was removed
            centre, edges = (run[4], span[1]), (run[0], run[3] if last else None)
            common = (run[1], run[2]) if _shared(self.shared_span, k[1]) else None
            span[4], span[5] = [*span[4], (run_extent(centre, common, *edges), reach(centre, *edges))], None
        self.held[k] = span  # stored before removed: a stop signal in between leaves it somewhere
        del self.open[k]

    def _finish(self, k) -> None:
        c0, c1, peak, ids, parts, _ = self.held[k]
        if long_enough(c1 - c0, self.spec.threshold(k[1]).min_duration_s, self.hop_s, self.spec.fps):
            a, b = event_extent(parts)
            self.ready.append(Event(self.video, self.spec.label_names[k[1]], a, b, peak, sorted(ids), k[1]))
        del self.held[k]

    def flush(self) -> None:
        """Every open and held event final (the stream ends, stops or is lost; windows after it start anew)."""
        for k in list(self.open):
            self._close(k, last=True)
        for k in list(self.held):
            self._finish(k)
        self.started = False

    def pop_ready(self) -> list[Event]:
        out = list(self.ready)
        self.ready.clear()
        return out
