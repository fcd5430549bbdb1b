"""The rules of events.py for runs of firing windows: where the runs are (`hysteresis_runs`), where a run's
event lies (`run_extent`, `reach`, `event_extent`) and whether its windows fired long enough (`long_enough`). Batch mode
(events_from_scores) and stream mode (OnlineEvents) both use them, so the two agree on the same scores.
"""
from __future__ import annotations

from typing import Sequence


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


def reach(span: tuple[float, float], seq_start: float | None, seq_end: float | None) -> tuple[float, float]:
    """`span` reaching back to `seq_start` (on to `seq_end`) where its run holds the video's (stream's) first
    (last) window position: no earlier (later) window exists that could fire, so centres alone put a fall in a
    video's first second after it (1.42-1.92 s for a fall at 0.2-1.0 s with 3.3 s windows). Not at a track's
    first window or one after a gap: there a window a hop earlier saw nobody."""
    return (span[0] if seq_start is None else min(span[0], seq_start),
            span[1] if seq_end is None else max(span[1], seq_end))


def run_extent(centre: tuple[float, float], common: tuple[float, float] | None, seq_start: float | None = None,
               seq_end: float | None = None) -> tuple[float, float]:
    """(start_s, end_s) of one run of firing windows: its centre span (half a hop beyond its first and last
    windows' centres), or `common` (the latest window start, the earliest window end; given with recognize's
    `event_span: shared`) where that is not empty and narrower: an action that every window of the run contains
    lies there (a 0.8 s fall that six 3.3 s windows catch is about 0.8 s, not 3 s); then `reach`.

    Why a choice: a run alone cannot tell a short action that each firing window holds whole from a longer one
    that windows holding part of it fire on (a classifier firing at half a window of action gives a D-long and a
    (window - D)-long action the same run), so the span rule is the user's prior: centre for actions about half
    a window or longer (fights), shared for ones much shorter (falls)."""
    a, b = centre
    if common is not None and common[0] < common[1] and common[1] - common[0] < b - a:
        a, b = common
    return reach((a, b), seq_start, seq_end)


def event_extent(parts: Sequence[tuple[tuple[float, float], tuple[float, float]]]) -> tuple[float, float]:
    """(start_s, end_s) of an event from its runs, each (run_extent, reach of its centre span), in time order.
    Runs merged into one event (the score dipped and came back within merge_gap_s) are one action longer than a
    run: the hull of their centre spans, so a long fight with a dip is not cut to the span each part shares."""
    if len(parts) == 1:
        return parts[0][0]
    return min(p[1][0] for p in parts), max(p[1][1] for p in parts)


def long_enough(fired_s: float, min_duration_s: float, hop_s: float, fps: float | None) -> bool:
    """fired_s >= min_duration_s to within half a frame per window step (exactly without `fps`). Batch windows
    step a whole number of frames, round(stride_s * fps) (12 frames = 0.48 s for 0.5 s at 25 fps), while a
    stream steps stride_s: one firing window is 0.48 s in batch mode and 0.5 s in a stream, and both must keep
    it; n steps differ by up to n half frames."""
    steps = max(1, round(fired_s / hop_s)) if hop_s > 0 else 1
    return fired_s >= min_duration_s - (steps * 0.5 / fps if fps else 0.0) - 1e-6  # 1e-6: float sums of times
