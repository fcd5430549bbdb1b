"""Fixes from the end-to-end review of the fight pipeline: the overlay's frame rate, stream mode's scoring steps,
a tune --set that a searched field silently replaced, and a calibration target no threshold reaches."""
from __future__ import annotations

import fractions
import types
from pathlib import Path

import numpy as np
import pytest


# --- 1. overlays keep the source's frame rate (it was rounded to a whole number: 12.5 fps ran 4 % long) ---------

def _write_source(path: Path, rate: fractions.Fraction, n: int) -> Path:
    import av

    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=rate)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            for packet in st.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 5 % 250, np.uint8),
                                                               format="bgr24")):
                out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    return path


def _seconds(path: Path) -> tuple[float, int, float]:
    """(duration from the stream's frame rate and frame count, frames, the container's duration)."""
    import av

    with av.open(str(path)) as c:
        st = c.streams.video[0]
        frames = sum(1 for _ in c.decode(st))
        return frames / float(st.average_rate), frames, c.duration / 1e6


@pytest.mark.parametrize("rate", [fractions.Fraction(25, 2), fractions.Fraction(15, 2),
                                  fractions.Fraction(30000, 1001)], ids=["12.5", "7.5", "29.97"])
def test_overlay_video_lasts_as_long_as_its_source(tmp_path, rate):
    from recognizer_core.extract.overlay import render_overlay
    from recognizer_core.skeleton.clip import SkeletonClip

    n = 50
    src = _write_source(tmp_path / "src.mp4", rate, n)
    kp = np.zeros((1, n, 17, 2), np.float32)
    kp[0, :, :, 0], kp[0, :, :, 1] = np.linspace(10, 50, 17), 20
    clip = SkeletonClip(clip_id="src", label=0, keypoint=kp, keypoint_score=np.ones((1, n, 17), np.float32),
                        img_shape=(48, 64), total_frames=n, source_video=str(src), fps=float(rate),
                        track_ids=np.array([0], np.int32), frame_inds=np.arange(n, dtype=np.int32))
    out = render_overlay(clip, str(src), tmp_path / "overlay.mp4")
    want, got = _seconds(src), _seconds(out)
    assert got[1] == want[1] == n
    assert got[0] == pytest.approx(want[0], abs=1e-6) == n / float(rate)   # 12 fps gave 4.17 s, not 4.00
    assert got[2] == pytest.approx(want[2], abs=1.5 / float(rate))


# --- 2. stream mode scores at batch mode's window ends -------------------------------------------------------------

def _spec(fps: float = 30.0, window_frames: int = 98):
    from recognizer_core.recognize.spec import ModelSpec
    from recognizer_core.skeleton.transforms import PipelineConfig

    return ModelSpec(label_names=["NonFight", "Fight"], pipeline=PipelineConfig(), fps=fps,
                     window_frames=window_frames, window_mode="scene")


def _batch_ends(spec, n: int, source_fps: float, stride_s: float = 0.5) -> list[float]:
    """Batch mode's window ends (Window.end_s) on an n-frame video at `source_fps`, one person throughout."""
    from recognizer_core.recognize.runner import make_windows_for
    from recognizer_core.skeleton.clip import SkeletonClip

    clip = SkeletonClip(clip_id="v", label=0, keypoint=np.ones((1, n, 17, 2), np.float32),
                        keypoint_score=np.ones((1, n, 17), np.float32), img_shape=(240, 320), total_frames=n,
                        source_video="v", fps=source_fps, track_ids=np.array([0], np.int32),
                        frame_inds=np.arange(n, dtype=np.int32), extra={"source_fps": source_fps})
    return [w.end_s for w in make_windows_for(clip, spec, stride_s)]


@pytest.mark.parametrize("source_fps", [20.0318, 12.5, 15.0, 29.97, 30.0, 25.0, 7.5])
def test_stream_step_grid_gives_batch_window_ends(source_fps):
    """The old rule (step at the first frame >= next_due, then next_due = t + stride_s) rounded every step up
    to a whole frame: 61 windows instead of 70 on a 35 s, 20.03 fps video."""
    from recognizer_core.recognize.stream import StepGrid

    spec = _spec(25.0, 50) if source_fps == 20.0318 else _spec()
    n = int(60 * source_fps)
    times = np.arange(n) / source_fps
    grid, ends = StepGrid(spec, 0.5, source_fps, times[0]), []
    for t in times:
        if grid.due(t):
            grid.stepped(t)
            ends.append(t + 1 / spec.fps)
    if grid.tail_end(times[-1]) > grid.last_end:  # the source ends: its last window (batch mode's cover_end)
        ends.append(times[-1] + 1 / spec.fps)
    assert ends == pytest.approx(_batch_ends(spec, n, source_fps), abs=1e-6)


def test_stream_step_grid_without_a_frame_rate_stays_on_its_grid():
    """A live camera (no known rate) with jittery arrival: ends every hop on an anchored grid, none lost to
    rounding, and a stall's missed ends skipped, not scored in a burst."""
    from recognizer_core.recognize.stream import StepGrid

    spec = _spec()
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.03, 0.09, 2000))
    times = times[(times < 40) | (times > 43)]  # a 3 s stall
    grid, steps = StepGrid(spec, 0.5, 0.0, times[0]), []
    for t in times:
        if grid.due(t):
            grid.stepped(t)
            steps.append(t)
    first = times[0] + 97 / 30
    slots = np.floor((np.array(steps) - first) / 0.5 + 1e-9)
    assert slots[0] == 0 and np.all(np.diff(slots) >= 1)   # one step per grid slot at most
    late = np.array(steps) - (first + slots * 0.5)
    after_stall = np.array(steps) == times[times > 43][0]
    assert after_stall.sum() == 1 and np.all(late[~after_stall] < 0.09 + 1e-9)  # within a frame of its end
    assert len(steps) >= (times[-1] - first) / 0.5 - 6   # only the stall's slots missed


@pytest.fixture(scope="module")
def stream_model(tmp_path_factory):
    from tests.fakes.fake_rtmo import build_fake_rtmo
    from tests.recognize_helpers import make_run_folder

    root = tmp_path_factory.mktemp("e2e_stream")
    run, _ = make_run_folder(root)
    return {"root": root, "run": run, "rtmo": build_fake_rtmo(root / "rtmo.onnx")}


def test_stream_scores_the_windows_batch_mode_scores(stream_model, tmp_path, monkeypatch):
    """A 12 s, 15 fps video, two people throughout: the stream's window ends are batch mode's (19 windows; the
    old rule scored 17, every 0.533 s, and none ended at the video's end)."""
    from recognizer_core.extract.config import PoseModelConfig
    from recognizer_core.recognize import stream
    from recognizer_core.recognize.model import load_recognizer
    from recognizer_core.recognize.runner import RecognizeConfig, effective_spec
    from tests.fakes.fake_rtmo import write_marker_video
    from tests.fakes.job_videos import linear_track

    n = 180
    video = write_marker_video(tmp_path / "cam.mp4", [linear_track((60, 80), (140, 90), n),
                                                     linear_track((200, 150), (170, 140), n)], side=12, fps=15)
    rec = load_recognizer(stream_model["run"])
    cfg = RecognizeConfig(thresholds={"Fight": 0.0}, min_duration_s=0.0)
    spec = effective_spec(rec.spec, cfg)
    centres = []

    class Recorded(stream.OnlineEvents):
        def step(self, centre_s, hop_s, windows, start_s=0.0):
            centres.append((centre_s, hop_s, len(windows)))
            return super().step(centre_s, hop_s, windows, start_s)

    monkeypatch.setattr(stream, "OnlineEvents", Recorded)
    pose = PoseModelConfig(onnx={"model_path": str(stream_model["rtmo"]), "intra_op_num_threads": 1}, batch_size=1)
    s = stream.run_stream(rec, spec, cfg, str(video), pose, speed=0, queue_frames=n + 10, verbose=False)
    assert s["error"] == "" and s["frames_dropped"] == 0 and s["frames_processed"] == n
    batch = _batch_ends(spec, n, 15.0)
    assert len(batch) == 19 and s["windows"] == len(centres) == 19, (s, len(centres))
    assert [c + spec.window_s / 2 for c, _, _ in centres] == pytest.approx(batch, abs=1e-4)
    assert {h for _, h, _ in centres} == {0.5}


def _drive_stream(monkeypatch, spec, times: np.ndarray, rate: float, sessions=None, at: list | None = None):
    """run_stream on frames at `times` (a file at `rate`, none dropped; frame i in session `sessions[i]`, default 0)
    with a stand-in pose model and tracker (one person whose x is its frame's number) and scorer: (each scored
    window's frame numbers, event centres); `at` gets the number of the newest frame at each window's score."""
    import queue
    import threading

    import recognizer_core.extract.backends as backends
    from recognizer_core.recognize import stream
    from recognizer_core.recognize.runner import RecognizeConfig

    class Reader:
        def __init__(self, *_):
            self.frames, self.finished, self.stop_event = queue.Queue(), threading.Event(), threading.Event()
            self.read, self.dropped, self.reconnects, self.clock_resets, self.outage_s = len(times), 0, 0, 0, 0.0
            self.lost_at, self.clock, self.error = None, "stream", ""
            for i, t in enumerate(times):
                s = 0 if sessions is None else int(sessions[i])
                self.frames.put((float(t), 0.0, i, s, "" if s == 0 else "a new session", rate))
            self.finished.set()

        def start(self):
            pass

        def join(self, timeout=None):
            pass

    def track(_, poses, tracking):
        kp = np.zeros((1, len(poses), 17, 2), np.float32)
        kp[0, :, :, 0] = np.asarray(poses, np.float32)[:, None]
        return types.SimpleNamespace(num_persons=1, keypoint=kp, keypoint_score=np.ones((1, len(poses), 17),
                                     np.float32), box_score=np.ones((1, len(poses)), np.float32))

    shown, centres, newest = [], [], [-1]

    def estimate(img, r, hw):
        newest[0] = int(img[0])
        return [newest[0]]

    def score_windows(rec, wins, batch_size):
        shown.extend(w.clip.keypoint[0, :, 0, 0].astype(int).tolist() for w in wins)
        if at is not None:
            at.extend(newest * len(wins))
        return np.zeros((len(wins), 2), np.float32)

    class Events(stream.OnlineEvents):
        def step(self, centre_s, hop_s, windows, start_s=0.0):
            centres.append(centre_s)
            return super().step(centre_s, hop_s, windows, start_s)

    monkeypatch.setattr(backends, "build_backend", lambda cfg: None)
    monkeypatch.setattr(stream, "_pose_pieces", lambda: (lambda *a: estimate, track,
                                                         lambda f, size: (np.array(f), 1.0, (240, 320))))
    monkeypatch.setattr(stream, "FrameReader", Reader)
    monkeypatch.setattr(stream, "score_windows", score_windows)
    monkeypatch.setattr(stream, "OnlineEvents", Events)
    s = stream.run_stream(None, spec, RecognizeConfig(), "cam", types.SimpleNamespace(model_input_size=(8, 8)),
                          speed=0, verbose=False)
    assert s["error"] == "" and s["windows"] == len(shown)
    return shown, centres


def _batch_windows(spec, n: int, source_fps: float) -> tuple[list[list[int]], list[float]]:
    """Batch mode's windows of an n-frame video at `source_fps` (x = frame number): (frame numbers, centres)."""
    from recognizer_core.recognize.runner import make_windows_for
    from recognizer_core.skeleton.clip import SkeletonClip

    kp = np.zeros((1, n, 17, 2), np.float32)
    kp[0, :, :, 0] = np.arange(n)[:, None]
    clip = SkeletonClip(clip_id="v", label=0, keypoint=kp, keypoint_score=np.ones((1, n, 17), np.float32),
                        img_shape=(240, 320), total_frames=n, source_video="v", fps=source_fps,
                        track_ids=np.array([0], np.int32), frame_inds=np.arange(n, dtype=np.int32),
                        extra={"source_fps": source_fps})
    wins = make_windows_for(clip, spec, 0.5)
    return [w.clip.keypoint[0, :, 0, 0].astype(int).tolist() for w in wins], [w.end_s - spec.window_s / 2
                                                                             for w in wins]


@pytest.mark.parametrize("source_fps, fps, window_frames", [
    (12.0, 25.0, 50), (15.0, 30.0, 60), (10.0, 25.0, 48), (20.03, 25.0, 50), (25.4, 25.0, 50), (29.5, 30.0, 60),
    (30.0, 30.0, 60), (60.0, 30.0, 60), (60.0, 30.0, 50), (50.0, 25.0, 48)])
def test_stream_windows_hold_the_frames_of_batch_windows(monkeypatch, source_fps, fps, window_frames):
    """Every stream window holds window_frames frames, the source frames batch mode's window with the same end
    holds, and the stream scores batch mode's windows, no more. The buffer trimmed to under a window lost the
    frame that completed it from a coarse source (12 fps source, 25 fps model: 49 frames instead of 50; a
    15 fps source on a 30 fps model: all 17 windows differed), and a 60 fps source scored a 38th window 1/60 s
    after batch mode's last (the session's tail, within half a model frame of the last step's end)."""
    spec = _spec(fps, window_frames)
    n = int(12 * source_fps)
    shown, centres = _drive_stream(monkeypatch, spec, np.arange(n) / source_fps, source_fps)
    batch, batch_centres = _batch_windows(spec, n, source_fps)
    assert {len(w) for w in shown} == {window_frames}
    assert len(shown) == len(batch), (len(shown), len(batch))
    # At a file's last frame a coarse source's step can take a grid end batch mode's grid (to half a model frame
    # past the last frame) does not hold: that frame is the end's nearest while no later frame comes, and the
    # stream cannot know none will. That window ends at the same frame, one grid frame later than batch's last.
    assert shown[:-1] == batch[:-1]
    assert shown[-1] == batch[-1] or (shown[-1][-1] == batch[-1][-1] and shown[-1][:-1] == batch[-1][1:])
    assert centres == pytest.approx(batch_centres, abs=1e-6)


# --- 3. tune: a --set of a searched field is refused, not silently replaced in every trial -------------------------

@pytest.fixture(scope="module")
def fight_space():
    from recognizer_core.train.stgcn.config import TrainJobConfig
    from recognizer_core.tune.search_space import load_search_space

    return load_search_space(Path(__file__).resolve().parents[1] / "search_spaces/fight.yaml", TrainJobConfig)


@pytest.mark.parametrize("key, value, named", [
    ("train.batch_size", 4, "train.batch_size (param train.batch_size)"),
    ("optim.lr", 0.1, "optim.lr (params optim.lr, optim.lr@sgd)"),
    ("model.num_stages", 4, "model.num_stages (param depth: shallow / stable / deep)"),   # set by a bundle
    ("train.class_weight[1]", 2.0, "train.class_weight[1] (param train.class_weight[1])"),
])
def test_a_set_of_a_searched_field_is_refused_naming_it(fight_space, key, value, named):
    from recognizer_core.tune.search_space import SearchSpaceError

    # the old behaviour: the sampled value silently replaced the --set one in the trial's config
    with pytest.raises(SearchSpaceError) as err:
        fight_space.check_user_overrides({key: value})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{fight_space.source}: --set {named} is searched by this space")
    assert msg.endswith("remove it from --set or from the space")


def test_a_set_of_an_unsearched_field_and_the_demo_overrides_pass(fight_space):
    # (model.base: a prefix of model.base_channels in the text, not a section that holds it)
    fight_space.check_user_overrides({"train.epochs": 3, "data.loader_workers": 0, "model.base": 1})
    # a list holding a searched element: the trial sets the sampled element into it, the other one holds
    fight_space.check_user_overrides({"train.class_weight": [1.5, 1.0]})
    # fields only some trials set (under `when`, one choice's `sets`) hold in the others: kept, with a note (a
    # 3-epoch search on real data needs its warm-up below 3 epochs in the multistep trials)
    notes = fight_space.check_user_overrides({"schedule.warmup_epochs": 1, "optim.base_batch_size": 64})
    assert notes == ["--set schedule.warmup_epochs holds in the trials that do not sample it (param "
                     "schedule.warmup_epochs)", "--set optim.base_batch_size holds in the trials that do not sample "
                     "it (param optim.type: sgd)"]
    # the demo's own budget (schedule.warmup_epochs, optim.base_batch_size) yields to what a trial samples
    fight_space.check_user_overrides({})
    assert {"schedule.warmup_epochs", "optim.base_batch_size"} <= set(fight_space.demo)


# --- 4. calibration: a target no threshold reaches is said, and precision is null where nothing fires ---------------

def _calibrate(monkeypatch, scores, positive, precision):
    import recognizer_core.skeleton.store as store
    from recognizer_core.recognize.calibrate import calibrate_thresholds

    clips = [types.SimpleNamespace(label=int(p), i=i) for i, p in enumerate(positive)]
    monkeypatch.setattr(store, "SkeletonDataset",
                        lambda path: types.SimpleNamespace(iter_clips=lambda split, copy: iter(clips)))
    probs = np.stack([1 - scores, scores], 1).astype(np.float32)
    rec = types.SimpleNamespace(spec=types.SimpleNamespace(label_names=["NonFight", "Fight"], event_classes=[1]),
                                prepare=lambda batch: np.array([c.i for c in batch]), predict=lambda x: probs[x])
    th, report = calibrate_thresholds(rec, "data", "val", precision)
    return th["Fight"], report["Fight"]


def test_calibration_that_cannot_reach_its_target_warns_and_records_no_precision(monkeypatch, capsys):
    scores = np.array([0.9, 0.8, 0.6, 0.3], np.float32)
    positive = np.array([False, True, True, False])
    th, rep = _calibrate(monkeypatch, scores, positive, 0.9)
    assert th.on == 1.0 and rep["precision"] is None and rep["recall"] == 0.0 and rep["target_reached"] is False
    assert "precision n/a" in th.source and "target 0.9 not reached" in th.source
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("[calibrate] warning: Fight: no threshold reaches precision 0.9 on "
                                               "val (4 clips); the best reached is 0.667 (at threshold 0.6)")


def test_calibration_that_reaches_its_target_says_nothing(monkeypatch, capsys):
    scores = np.array([0.9, 0.8, 0.6, 0.3], np.float32)
    th, rep = _calibrate(monkeypatch, scores, np.array([True, True, False, False]), 0.9)
    assert rep["precision"] == 1.0 and rep["target_reached"] is True and th.on == pytest.approx(0.8)
    assert capsys.readouterr().err == ""
