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
(stream mode), so a stream's events equal batch mode's on the same scores; `EventSink` delivers them (printed,
appended to a file, POSTed by a sender thread so that a slow endpoint never holds up scoring).
"""
from __future__ import annotations

import collections
import json
import sys
import threading
import time
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
            centre = (max(lo, float(centres[a]) - hop / 2), min(hi, float(centres[b]) + hop / 2))
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
                  extent: tuple[float, float] | None = None, shared_span: bool = False,
                  hop_s: float | None = None) -> list[Event]:
    """Events of every non-background class, over every sequence (scene / track) of the windows. `extent`: the
    video's first frame time and last frame end (windows of one video); without it the first start and last end
    of its windows, which differ only where nobody is seen at its very start or end. `shared_span`: recognize's
    `event_span: shared` (event_runs.run_extent); `hop_s`: the windows' step (events_from_scores)."""
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
                                                       shared=shared_span, hop_s=hop_s):
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
    shared_span: bool = False  # recognize's event_span: shared (event_runs.run_extent)
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
                self.open[k] = [run[4], centre_s + hop_s / 2, s, set(track_ids), [], run]
            elif cur is not None and s >= th.off_value:
                self._extend(cur, centre_s + hop_s / 2, s, track_ids, win)
            elif cur is not None:
                self._close(k, last=False)

    @staticmethod
    def _extend(span: list, end_s: float, score: float, track_ids, win: tuple[float, float]) -> None:
        span[1], span[2] = max(span[1], end_s), max(span[2], score)
        span[3] |= set(track_ids)
        run = span[5]
        run[1], run[2], run[3] = max(run[1], win[0]), min(run[2], win[1]), win[1]

    def _close(self, k, last: bool) -> None:
        """The open run of `k` ends (`last`: at the end of the stream) and its extent joins the event's."""
        span, run = self.open[k], self.open[k][5]
        if run is not None:  # None: closed before, then a stop signal came before it was removed
            centre, edges = (run[4], span[1]), (run[0], run[3] if last else None)
            common = (run[1], run[2]) if self.shared_span else None
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


class EventOutputError(ValueError):
    """--event-file / --post-url unusable: reported before the stream starts."""


def redact_url(url: str) -> str:
    """`url` without the password of its user info (rtsp://admin:pw@cam/1 -> rtsp://admin:***@cam/1): IP cameras
    and webhooks take credentials in the URL, and events, summaries and log lines must not carry them."""
    import urllib.parse

    if "://" not in url or "@" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{name}:***@{host}" if ":" in user else f"***@{host}"))


def _without_userinfo(url: str) -> tuple[str, dict[str, str]]:
    """(url without user info, the Authorization header it stood for): urllib takes `user:pw@host` as the host."""
    import base64
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    user, _, host = parts.netloc.rpartition("@")
    user = user if ":" in user else user + ":"   # RFC 7617: user-id ":" password (a bare token as curl sends it)
    token = base64.b64encode(urllib.parse.unquote(user).encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), {"Authorization": f"Basic {token}"}


def check_post_url(url: str) -> None:
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as err:
        raise EventOutputError(f"--post-url {redact_url(url)!r}: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise EventOutputError(f"--post-url {redact_url(url)!r}: not an http:// or https:// URL with a host")


class PostSender(threading.Thread):
    """POSTs event lines from a bounded queue: each one tried up to 1 + `retries` times, 1 s, 2 s, 4 s ... apart
    (an endpoint that restarts); when the queue is full the oldest unsent event is dropped and counted (the
    newest are the ones still worth an alert). Any exception of a POST counts as a failed try."""

    def __init__(self, url: str, max_queue: int = 100, retries: int = 3, timeout_s: float = 5.0,
                 backoff_s: float = 1.0):
        super().__init__(daemon=True)
        # user:password@ in the URL becomes Basic auth (urllib would take it as part of the host name); log lines
        # name the URL without the password
        (self._target, self._auth), self.url = _without_userinfo(url), redact_url(url)
        self.max_queue, self.retries = max_queue, retries
        self.timeout_s, self.backoff_s = timeout_s, backoff_s
        self.pending: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.posted = self.failed = self.dropped = 0
        self.closing, self.deadline = False, float("inf")

    def put(self, line: str) -> None:
        with self.cond:
            if len(self.pending) >= self.max_queue:
                self.pending.popleft()
                self.dropped += 1
                if self.dropped == 1:
                    print(f"[stream] POST {self.url} is behind: {self.max_queue} events waiting; dropping the oldest "
                          "unsent ones (counted in the summary)", file=sys.stderr, flush=True)
            self.pending.append(line)
            self.cond.notify()

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.closing:
                    self.cond.wait()
                if not self.pending or time.monotonic() > self.deadline:
                    return
                line = self.pending.popleft()
            self._post(line)

    def _post(self, line: str) -> None:
        import urllib.error
        import urllib.request

        err: BaseException | None = None
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(self._target, data=line.encode(),
                                             headers={"Content-Type": "application/json", **self._auth})
                urllib.request.urlopen(req, timeout=self.timeout_s).close()
                self.posted += 1
                return
            except Exception as e:  # noqa: BLE001 - a bad answer (BadStatusLine), a refused or slow endpoint
                err = e
            if isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500 and err.code not in (408, 429):
                break  # the endpoint refuses this event: the same request again gets the same answer
            wait = self.backoff_s * 2 ** attempt
            if attempt == self.retries or time.monotonic() + wait > self.deadline:
                break
            time.sleep(wait)
        self.failed += 1
        print(f"[stream] POST {self.url} failed after {attempt + 1} tr{'y' if attempt == 0 else 'ies'}: "
              f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)

    def close(self, drain_s: float) -> None:
        """Posts what is pending for up to `drain_s`, then counts the rest as dropped."""
        with self.cond:
            self.closing, self.deadline = True, time.monotonic() + drain_s
            self.cond.notify_all()
        self.join(timeout=drain_s + 0.5)
        with self.cond:
            left = len(self.pending)
            self.pending.clear()
            self.dropped += left
        if left or self.is_alive():
            print(f"[stream] POST {self.url}: stopped waiting after {drain_s:g} s; {left} event(s) not posted"
                  + (", one POST still in flight" if self.is_alive() else ""), file=sys.stderr, flush=True)


class EventSink:
    """Stream mode's events, each printed (`[event] {...}`) and appended to `event_file` at once, then handed to
    the POST sender. The file is opened here, before the stream starts: a folder that does not exist is one error
    line at start, not a crash at the first event hours later."""

    def __init__(self, event_file: str | None = None, post_url: str | None = None, **sender_kw):
        if post_url:
            check_post_url(post_url)
        try:
            self.file = open(event_file, "a", encoding="utf-8") if event_file else None  # noqa: SIM115 - held open
        except OSError as err:
            raise EventOutputError(f"--event-file {event_file}: {err.strerror or err}") from None
        self.sender = PostSender(post_url, **sender_kw) if post_url else None
        if self.sender:
            self.sender.start()
        self.events = self.write_failed = 0

    def emit(self, event: Event) -> None:
        line = json.dumps(event.to_dict())
        print(f"[event] {line}", flush=True)
        self.events += 1
        if self.file:
            try:
                self.file.write(line + "\n")
                self.file.flush()
            except Exception as err:  # noqa: BLE001 - a full disk must not end a detector: counted, said once each
                self.write_failed += 1
                print(f"[stream] writing {self.file.name} failed: {err}", file=sys.stderr, flush=True)
        if self.sender:
            self.sender.put(line)

    def close(self, drain_s: float = 5.0) -> dict:
        if self.sender:
            self.sender.close(drain_s)
        if self.file:
            self.file.close()
        s = self.sender
        return {"events": self.events, "posted": s.posted if s else 0, "post_failed": s.failed if s else 0,
                "post_dropped": s.dropped if s else 0, "event_write_failed": self.write_failed}
