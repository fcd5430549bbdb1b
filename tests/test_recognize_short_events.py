"""Short actions against long windows: an event's extent (with `event_span: shared`, the span its windows
share; the video's start and end reached where a run holds the first / last window), the minimum duration at frame
rates where the window step is rounded (25 fps), stream events equal to batch events under these rules, and
evaluation's --event-tiou."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recognizer_core.recognize.evaluation import evaluate, match_events, temporal_iou
from recognizer_core.recognize.events import OnlineEvents, detect_events, events_from_scores
from recognizer_core.recognize.spec import ClassThreshold, ModelSpec
from recognizer_core.recognize.windows import Window, video_windows
from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.transforms import PipelineConfig

NAMES = ["Normal", "Falldown"]


def _spec(fps=30.0, window_frames=100, **kw) -> ModelSpec:
    return ModelSpec(label_names=NAMES, pipeline=PipelineConfig(), fps=fps, window_frames=window_frames,
                     window_mode="track", **kw)


def _track_windows(fps=30.0, seconds=20.0, window_frames=100):
    """recognize's own track windows over one person seen for the whole video (stride 0.5 s)."""
    T = int(seconds * fps)
    kp = np.random.default_rng(0).uniform(100, 500, (1, T, 17, 2)).astype(np.float32)
    clip = SkeletonClip("v", 1, kp, np.full((1, T, 17), 0.9, np.float32), (720, 1280), T, fps=fps,
                        track_ids=np.array([7], np.int32), frame_inds=np.arange(T, dtype=np.int32))
    return video_windows(clip, fps=fps, window_frames=window_frames, num_person=4, mode="track")


def _oracle(windows, fall):
    """A perfect fall classifier: 1 where the window contains the whole fall, else 0."""
    return np.array([[0.0, 1.0] if w.start_s <= fall[0] and w.end_s >= fall[1] else [1.0, 0.0] for w in windows])


def _stream(spec, windows, probs, hop_s, merge_gap_s=1.0, shared=False):
    """The windows, one step per window start, through OnlineEvents (stream mode's rules)."""
    online = OnlineEvents(spec, "v", merge_gap_s, shared_span=shared)
    for w, p in zip(windows, probs):
        online.step((w.start_s + w.end_s) / 2, hop_s, [(w.key, w.kind, p, w.track_ids)])
    online.flush()
    return online.pop_ready()


def _spans(events):
    return [(e.label, round(e.start_s, 3), round(e.end_s, 3)) for e in events]


@pytest.mark.parametrize("fall", [(10.0, 10.8), (3.0, 3.8)])
def test_a_short_fall_caught_by_six_long_windows_is_the_span_they_share(fall):
    """Six 3.3 s windows contain a 0.8 s fall: the event was their centres +- half a hop (8.92-11.92 s, tIoU
    0.27), so a perfect classifier scored a false positive and a miss."""
    ws = _track_windows()
    probs = _oracle(ws, fall)
    assert int(probs[:, 1].sum()) == 6
    ev = detect_events(ws, probs, _spec(), shared_span=True)
    assert _spans(ev) == [("Falldown", fall[0], round(fall[1] + 1 / 30, 3))]  # 10.0-10.833: the windows' frames
    assert temporal_iou((ev[0].start_s, ev[0].end_s), fall) > 0.9
    true = [{"label": "Falldown", "start_s": fall[0], "end_s": fall[1]}]
    assert match_events([e.to_dict() for e in ev], true, 0.5) == (1, 0, 0)
    assert _spans(_stream(_spec(), ws, probs, 0.5, shared=True)) == _spans(ev)
    # the default (centre) keeps the centres' span: 3 s, the extent a longer action would have had
    centre = detect_events(ws, probs, _spec())
    assert _spans(centre) == [("Falldown", round(fall[0] - 1.083, 3), round(fall[0] + 1.917, 3))]
    assert _spans(_stream(_spec(), ws, probs, 0.5)) == _spans(centre)


def test_the_default_span_keeps_a_medium_action_that_partly_covering_windows_fire_on():
    """A 2 s action that fires every window holding at least 1 s of it: seven windows that share 0 s. The shared
    rule cannot tell it from a short action every window holds whole (the reason it is a choice): its span is
    about nothing there, while the default centre span holds the action."""
    ws = _track_windows()
    act = (10.0, 12.0)
    probs = np.array([[0.0, 1.0] if min(w.end_s, act[1]) - max(w.start_s, act[0]) >= 1.0 else [1.0, 0.0]
                      for w in ws])
    centre = detect_events(ws, probs, _spec())
    assert len(centre) == 1 and centre[0].start_s <= act[0] and centre[0].end_s >= act[1]
    assert temporal_iou((centre[0].start_s, centre[0].end_s), act) >= 0.5
    shared = detect_events(ws, probs, _spec(), shared_span=True)
    assert len(shared) == 1 and shared[0].end_s - shared[0].start_s < 0.5


def test_a_very_short_fall_that_many_windows_catch_is_kept_though_its_event_is_short():
    """min_duration_s goes by how long the windows fired (seven windows: 3.5 s), not by the shared span (0.3 s)."""
    ws = _track_windows()
    probs = _oracle(ws, (10.0, 10.3))
    ev = detect_events(ws, probs, _spec(thresholds={"Falldown": ClassThreshold(min_duration_s=1.0)}),
                       shared_span=True)
    assert _spans(ev) == [("Falldown", 10.0, 10.333)]


def test_long_actions_keep_the_span_of_their_windows_centres():
    """A 6 s action fires 16 windows that share no span: unchanged (centres +- half a hop)."""
    ws = _track_windows()
    probs = np.array([[0.0, 1.0] if 5.0 <= (w.start_s + w.end_s) / 2 < 13.0 else [1.0, 0.0] for w in ws])
    assert _spans(detect_events(ws, probs, _spec())) == [("Falldown", 4.917, 12.917)]


def test_a_long_action_whose_score_dips_keeps_its_centre_span():
    """Two runs of six windows, one dipping window apart, merge into one event: one action longer than a run, so
    the hull of their centre spans (4.92-11.42 s), not of the 0.83 s spans each run's windows share."""
    ws = _track_windows()
    probs = np.array([[0.0, 1.0] if 7 <= i <= 19 and i != 13 else [1.0, 0.0] for i in range(len(ws))])
    ev = detect_events(ws, probs, _spec())
    assert _spans(ev) == [("Falldown", 4.917, 11.417)]
    assert _spans(_stream(_spec(), ws, probs, 0.5)) == _spans(ev)


@pytest.mark.parametrize("fall, expected", [((0.2, 1.0), (0.0, 1.917)), ((18.9, 19.7), (17.917, 20.0))])
def test_a_fall_at_the_start_or_end_of_the_video_reaches_that_end(fall, expected):
    """Only the first window contains a fall at 0.2-1.0 s: the event was 1.42-1.92 s, after the fall (the clamps to
    the windows' extent never acted). A run holding the first (last) window now reaches back to 0 (on to the end),
    and the event contains the fall; batch and stream agree."""
    ws = _track_windows()
    probs = _oracle(ws, fall)
    ev = detect_events(ws, probs, _spec())
    assert _spans(ev) == [("Falldown", *expected)]
    assert ev[0].start_s <= fall[0] and ev[0].end_s >= fall[1]
    assert _spans(_stream(_spec(), ws, probs, 0.5)) == _spans(ev)


def test_a_fight_over_a_whole_short_clip_spans_the_clip():
    """Five windows of a 5 s clip all fire: the clip, not the 1.7 s they share nor the centres' 1.42-3.58 s."""
    starts = np.array([0.0, 0.5, 1.0, 1.5, 5 - 10 / 3])
    ev = events_from_scores(starts, starts + 10 / 3, np.full(5, 0.9), on=0.5, off=0.4, min_duration_s=0.5,
                            merge_gap_s=1.0)
    assert [(a, round(b, 3)) for a, b, _, _ in ev] == [(0.0, 5.0)]


def test_no_reach_at_a_tracks_first_window_or_after_a_gap():
    """A track first seen mid-video, and the windows after a stretch where nobody is seen: a window a hop earlier
    existed and saw nobody, so the event keeps its centre span (batch mode given the video's extent, and the
    stream, whose first scoring step had no window of this person)."""
    spec = _spec(window_frames=90)
    hop, n = 0.5, 30
    windows, probs = [], []
    for i in range(n):
        if 8 <= i < 20:   # seen from the 9th step to the 20th only
            windows.append(Window("v", "track", i * hop, i * hop + 3.0, [3], None))
            probs.append([0.0, 1.0])
    probs = np.array(probs)
    ev = detect_events(windows, probs, spec, extent=(0.0, (n - 1) * hop + 3.0))
    assert _spans(ev) == [("Falldown", 5.25, 11.25)]
    online = OnlineEvents(spec, "v")
    for i in range(n):
        step = [(w.key, w.kind, p, w.track_ids) for w, p in zip(windows, probs) if w.start_s == i * hop]
        online.step(i * hop + 1.5, hop, step)
    online.flush()
    assert _spans(online.pop_ready()) == _spans(ev)


def test_at_25_fps_a_one_window_event_is_kept_in_batch_and_stream_alike():
    """At 25 fps the batch step is round(0.5 * 25) = 12 frames = 0.48 s: a one-window event lasted 0.48 s and
    min_duration_s 0.5 dropped it, while the stream (steps of stride_s) kept it as 0.5 s."""
    ws = _track_windows(fps=25.0, window_frames=83)
    spec = _spec(fps=25.0, window_frames=83)
    probs = np.tile([0.95, 0.05], (len(ws), 1))
    probs[10] = [0.1, 0.9]
    batch = detect_events(ws, probs, spec)
    assert _spans(batch) == [("Falldown", 6.22, 6.7)]   # 12 frames
    assert _spans(_stream(spec, ws, probs, 0.5)) == [("Falldown", 6.21, 6.71)]  # the stream's own 0.5 s step
    assert _spans(_stream(spec, ws, probs, 0.48)) == _spans(batch)            # the same step: the same event
    # two windows (0.96 s) against min_duration_s 1.0: half a frame per step, so kept as in the stream
    probs[11] = [0.1, 0.9]
    spec1 = _spec(fps=25.0, window_frames=83, thresholds={"Falldown": ClassThreshold(min_duration_s=1.0)})
    assert _spans(detect_events(ws, probs, spec1)) == [("Falldown", 6.22, 7.18)]
    assert len(_stream(spec1, ws, probs, 0.5)) == 1
    # a real shortfall is still dropped: one window against 0.6 s
    probs[11] = [0.95, 0.05]
    assert detect_events(ws, probs, _spec(fps=25.0, window_frames=83, thresholds={
        "Falldown": ClassThreshold(min_duration_s=0.6)})) == []


def test_a_stream_event_reaches_back_to_the_streams_first_frame_and_no_earlier():
    """The first step's buffer holds 0.9 to 1 window, so its nominal window may begin before the stream: an event
    at the first step starts at the stream's first frame (`start_s`, default 0), never at a negative time."""
    spec = _spec()
    for start_s, expected in ((None, 0.0), (0.12, 0.12)):
        online = OnlineEvents(spec, "cam")
        for i, c in enumerate((1.5, 2.0, 2.5)):  # nominal first window -0.17-3.17 s
            kw = {} if start_s is None else {"start_s": start_s}
            online.step(c, 0.5, [("track1", "track", np.array([0.0, 1.0 if i < 2 else 0.0]), [1])], **kw)
        online.flush()
        assert _spans(online.pop_ready()) == [("Falldown", expected, 2.25)]


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_stream_events_equal_batch_events_with_short_spikes_and_edges(seed, shared):
    """Random short spikes (runs whose windows share a span), events at the first and last steps, a person missed
    for a few steps, and steps where nobody is seen at the start or end of the video."""
    spec = _spec(window_frames=100, thresholds={"Falldown": ClassThreshold(on=0.5, off=0.4, min_duration_s=0.5)})
    rng = np.random.default_rng(seed)
    hop, n, W = 0.5, 80, spec.window_s
    present = np.ones(n, bool)
    present[: rng.integers(0, 3)] = False          # nobody seen at the very start (seeds with 1-2 steps)
    present[n - rng.integers(0, 3):] = False        # ... or at the very end
    present[40:40 + rng.integers(0, 4)] = False     # a person missed mid-video
    score = np.where(rng.uniform(size=n) < 0.15, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.45, n))
    score[[0, 1, n - 2, n - 1]] = 0.9               # firing at the edges (where someone is seen there)
    windows, probs, steps = [], [], []
    for i in range(n):
        c, step = W / 2 + i * hop, []
        if present[i]:
            windows.append(Window("v", "track", c - W / 2, c + W / 2, [1], None))
            probs.append(np.array([1 - score[i], score[i]]))
            step.append((windows[-1].key, "track", probs[-1], [1]))
        steps.append((c, step))
    batch = detect_events(windows, np.array(probs), spec, extent=(0.0, (n - 1) * hop + W), shared_span=shared)
    online = OnlineEvents(spec, "v", shared_span=shared)
    for c, step in steps:
        online.step(c, hop, step)
    online.flush()
    assert batch and _rows(online.pop_ready()) == _rows(batch)


def _rows(events):
    return [(e.label, round(e.start_s, 6), round(e.end_s, 6), round(e.peak_score, 6)) for e in events]


def test_evaluation_takes_the_tiou_threshold_and_records_it():
    """A fall at the start of a video, found by a perfect classifier (event 0-1.92 s, tIoU 0.42): a miss and a
    false positive at the fixed 0.5, a match at 0.3, and the threshold used is in the report."""
    from recognizer_core.recognize.events import Event

    events = {"/v/a.mp4": [Event("/v/a.mp4", "Falldown", 0.0, 1.917, 1.0, [7], 1)]}
    truth = {"a": [{"label": "Falldown", "start_s": 0.2, "end_s": 1.0}]}
    r = evaluate(events, {"a": "Falldown"}, truth, NAMES, 0)
    assert r["events"]["tiou"] == 0.5 and r["events"]["per_class"]["Falldown"]["tp"] == 0
    r = evaluate(events, {"a": "Falldown"}, truth, NAMES, 0, iou=0.3)
    assert r["events"]["tiou"] == 0.3
    assert (r["events"]["per_class"]["Falldown"]["tp"], r["events"]["per_class"]["Falldown"]["fp"]) == (1, 0)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"--event-tiou .*: must be in \(0, 1\]"):
            evaluate(events, {"a": "Falldown"}, truth, NAMES, 0, iou=bad)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_recognize_refuses_an_event_tiou_outside_0_1_in_one_line(value, capsys):
    from rayjobs.recognize import main

    assert main(["--model", "no_such_model", "--input", "no_such_input", "--event-tiou", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --event-tiou {float(value)}: must be in (0, 1]"), err


def test_recognize_job_evaluates_at_the_given_tiou_and_records_it(tmp_path, capsys):
    from rayjobs.recognize import main
    from recognizer_core.extract.clip_files import write_clip_file
    from recognizer_core.skeleton.demo_sequence import make_demo_sequence
    from tests.recognize_helpers import make_run_folder

    run, _ = make_run_folder(tmp_path)
    clip, truth = make_demo_sequence((("fight", 1, 5),), seed=0)
    clip.source_video = "/videos/brawl.mp4"
    write_clip_file(clip, tmp_path / "poses" / "clips" / "brawl.parquet")
    rows = ["video,label,start_s,end_s"] + [f"brawl.mp4,{t['label']},{t['start_s']},{t['end_s']}" for t in truth]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["--model", str(run), "--input", str(tmp_path / "poses"), "--labels", str(tmp_path / "labels.csv"),
                 "--output", str(out), "--event-tiou", "0.3", "--set", "timeline=false"]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["events"]["tiou"] == 0.3 and summary["evaluation"]["events"]["tiou"] == 0.3


def test_recognize_refuses_an_unknown_event_span_in_one_line(capsys):
    from rayjobs.recognize import main

    assert main(["--model", "no_such_model", "--input", "no_such_input", "--set", "event_span=middle"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("event_span" in line for line in err) and len(err) <= 2, err


def _recognize_with(monkeypatch, clip, spec, scorer, **cfg):
    from recognizer_core.recognize import runner

    monkeypatch.setattr(runner, "score_windows", lambda rec, ws, bs=8: np.array([scorer(w) for w in ws], np.float32))
    return runner.recognize_clip(None, clip, spec, runner.RecognizeConfig(**cfg))


def _person_clip(fps: float, seconds: float) -> SkeletonClip:
    T = int(round(seconds * fps))
    kp = np.random.default_rng(0).uniform(100, 500, (1, T, 17, 2)).astype(np.float32)
    return SkeletonClip("v", 1, kp, np.full((1, T, 17), 0.9, np.float32), (720, 1280), T, fps=fps,
                        track_ids=np.array([7], np.int32), frame_inds=np.arange(T, dtype=np.int32),
                        source_video="v.mp4", extra={"source_fps": fps})


@pytest.mark.parametrize("fps", [30.0, 29.97, 25.0, 24.0])
def test_a_fall_at_the_end_of_a_video_at_another_frame_rate_reaches_its_end(fps, monkeypatch):
    """The video's end came from the source frame times, the windows' from the clip resampled to the model's 30
    fps: 3e-5 s (29.97 fps) to 8 ms apart, so the end rule never applied and the event ended before the fall."""
    clip = _person_clip(fps, 20.0)
    end = clip.num_frames / fps
    fall = (end - 1.1, end - 0.3)
    for span in ("centre", "shared"):
        res = _recognize_with(monkeypatch, clip, _spec(), lambda w: [0.0, 1.0] if w.start_s <= fall[0] and
                              w.end_s >= fall[1] else [1.0, 0.0], event_span=span)
        assert len(res.events) == 1 and res.events[0].end_s >= fall[1] - 0.05, (fps, span, res.events)


@pytest.mark.parametrize("seconds", [3.5, 4.0, 5.0])
def test_one_firing_window_of_a_short_video_is_kept(seconds, monkeypatch):
    """The step was the median of the sequence's steps, which a short video's last window (placed to end at its
    last frame) pulled below stride_s: a one-window fall was then shorter than min_duration_s 0.5 and dropped."""
    res = _recognize_with(monkeypatch, _person_clip(30.0, seconds), _spec(),
                          lambda w: [0.0, 1.0] if w.start_s == 0 else [1.0, 0.0])
    assert [round(e.start_s, 3) for e in res.events] == [0.0], res.events


def test_a_stream_event_never_starts_before_the_streams_first_frame_with_a_long_stride():
    """A stride longer than 0.8 window put the first step's centre span before the stream's first frame."""
    spec = _spec()
    online = OnlineEvents(spec, "cam")
    # stream.py steps at (latest frame) - window / 2, its first step when 0.9 window of frames have come
    online.step(0.9 * spec.window_s - spec.window_s / 2, 3.0, [("track1", "track", np.array([0.0, 1.0]), [1])],
                start_s=0.0)
    online.flush()
    ev = online.pop_ready()
    assert len(ev) == 1 and ev[0].start_s >= 0.0, ev


def test_a_stream_event_never_ends_past_its_last_window_with_a_long_stride():
    """stride_s longer than the window: the centre span's end (centre + half a hop) lay after the last window, and
    a stream event ended after the stream's last frame, where batch caps it at the last window's end."""
    spec = _spec(window_frames=48)   # 1.6 s windows, stepped 3 s apart
    online = OnlineEvents(spec, "cam")
    for c in (0.8, 3.8):
        online.step(c, 3.0, [("track1", "track", np.array([0.0, 1.0]), [1])], start_s=0.0)
    online.flush()
    ev = online.pop_ready()
    windows = [Window("cam", "track", c - 0.8, c + 0.8, [1], None) for c in (0.8, 3.8)]
    batch = detect_events(windows, np.tile([0.0, 1.0], (2, 1)), spec, extent=(0.0, 4.6), hop_s=3.0)
    assert ev and max(e.end_s for e in ev) <= 4.6 + 1e-9, ev
    assert _spans(ev) == _spans(batch)


def test_shared_span_classes_give_one_class_the_shared_span_in_batch_and_stream(monkeypatch):
    """A model with fights and falls: `shared_span_classes: [Falldown]` spans falls by what their windows share and
    leaves the other classes on the centre span; an unknown class name is one error line."""
    from recognizer_core.recognize.runner import RecognizeConfig, effective_spec, shared_span

    names = ["Normal", "Fight", "Falldown"]
    spec = ModelSpec(label_names=names, pipeline=PipelineConfig(), fps=30.0, window_frames=100, window_mode="track")
    clip = _person_clip(30.0, 20.0)
    fall = (10.0, 10.8)

    def scorer(w):  # both classes fire on the windows that hold the whole short action
        hit = w.start_s <= fall[0] and w.end_s >= fall[1]
        return [0.0, 0.5, 0.5] if hit else [1.0, 0.0, 0.0]

    res = _recognize_with(monkeypatch, clip, spec, scorer, shared_span_classes=["Falldown"])
    spans = {e.label: (round(e.start_s, 3), round(e.end_s, 3)) for e in res.events}
    assert spans == {"Falldown": (10.0, 10.833), "Fight": (8.917, 11.917)}, spans
    cfg = RecognizeConfig(shared_span_classes=["Falldown"])
    assert shared_span(spec, cfg) == {2} and shared_span(spec, RecognizeConfig(event_span="shared")) == {0, 1, 2}
    online = OnlineEvents(spec, "v", shared_span=shared_span(spec, cfg))
    for w, p in zip(res.windows, res.probs):
        online.step((w.start_s + w.end_s) / 2, 0.5, [(w.key, w.kind, p, w.track_ids)])
    online.flush()
    assert sorted(_spans(online.pop_ready())) == sorted(_spans(res.events))
    with pytest.raises(ValueError, match=r"shared_span_classes: unknown class\(es\) \['Fall'\]"):
        effective_spec(spec, RecognizeConfig(shared_span_classes=["Fall"]))


def test_a_mid_stream_run_with_a_long_stride_ends_at_its_window_in_batch_and_stream():
    """1.6 s windows stepped 3 s apart, only the second fires: the stream ended its event at that window's end, batch
    half a hop past its centre (the sequence's last window bounded it), so min_duration_s could drop one only."""
    spec = _spec(window_frames=48)
    centres = (0.8, 3.8, 6.8, 9.8)
    probs = np.array([[0.0, 1.0] if c == 3.8 else [1.0, 0.0] for c in centres])
    windows = [Window("cam", "track", c - 0.8, c + 0.8, [1], None) for c in centres]
    batch = detect_events(windows, probs, spec, extent=(0.0, 10.6), hop_s=3.0)
    online = OnlineEvents(spec, "cam")
    for c, p in zip(centres, probs):
        online.step(c, 3.0, [("track1", "track", p, [1])], start_s=0.0)
    online.flush()
    assert _spans(batch) == _spans(online.pop_ready()) == [("Falldown", 2.3, 4.6)]
