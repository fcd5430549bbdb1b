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
    if times[-1] > grid.last:  # the source ends: its last window (batch mode's cover_end)
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
    ("optim.base_batch_size", 64, "optim.base_batch_size (param optim.type: sgd)"),       # by one choice's sets
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
