"""recognize_clip makes and scores windows a batch at a time: its memory stays near the video's own arrays
(every window of the video, each a copy of its frames, was built before any was scored: ~7-10x a video's
arrays, 11-16 GB for a 24 h recording), and its results are those of scoring the whole list at once."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from recognizer_core.recognize.events import detect_events
from recognizer_core.recognize.model import load_recognizer
from recognizer_core.recognize.runner import (RecognizeConfig, effective_spec, make_windows_for, recognize_clip,
                                              score_windows, shared_span)
from recognizer_core.recognize.windows import resample
from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.demo_sequence import make_demo_sequence
from tests.recognize_helpers import make_run_folder


@pytest.fixture(scope="module")
def fight_model(tmp_path_factory):
    run, _ = make_run_folder(tmp_path_factory.mktemp("memory"))
    return load_recognizer(run, threads=1)


def _long_video(minutes: float, fps: float = 25.0, people: int = 3) -> SkeletonClip:
    """A whole-video clip as tracking leaves it: `people` rows seen throughout, at another fps than the model's."""
    T = int(minutes * 60 * fps)
    rng = np.random.default_rng(0)
    kp = rng.uniform(100, 600, (people, T, 17, 2)).astype(np.float32)
    return SkeletonClip("cam1", 0, kp, np.full((people, T, 17), 0.9, np.float32), (720, 1280), T, fps=fps,
                        track_ids=np.arange(people, dtype=np.int32), frame_inds=np.arange(T, dtype=np.int32),
                        source_video="cam1.mp4",
                        extra={"source_fps": fps, "box_score": np.full((people, T), 0.9, np.float32)})


def _clip_bytes(clip: SkeletonClip) -> int:
    arrays = [clip.keypoint, clip.keypoint_score, clip.frame_inds, *clip.extra.values()]
    return sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))


@pytest.mark.parametrize("mode, stride_s", [("scene", 0.5), ("track", 1.0)])
def test_a_long_videos_recognition_holds_about_its_own_arrays_not_every_window(fight_model, mode, stride_s):
    """10 min at 25 fps, 3 people (9 MB): the old code peaked at 7x (scene) and 6x (track, 1 s stride) the
    clip's arrays; now 1.2x (the clip resampled to the model's 30 fps) plus a batch of windows."""
    clip = _long_video(10.0)
    cfg = RecognizeConfig(window_mode=mode, stride_s=stride_s, timeline=False)
    tracemalloc.start()
    try:
        res = recognize_clip(fight_model, clip, fight_model.spec, cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(res.windows) == len(res.probs) > 500
    assert all(w.clip is None for w in res.windows)   # only their metadata is kept
    assert peak < 2.5 * _clip_bytes(clip), (peak / 2**20, _clip_bytes(clip) / 2**20)


@pytest.mark.parametrize("mode", ["scene", "track"])
def test_batch_at_a_time_gives_the_probabilities_windows_and_events_of_the_whole_list(fight_model, mode):
    """The old path, spelled out: every window made first, then scored, then events from them."""
    clip, _ = make_demo_sequence()
    base = RecognizeConfig(window_mode=mode, stride_s=1.0, batch_size=3, timeline=False)  # batches with a rest
    spec = effective_spec(fight_model.spec, base)
    eager = make_windows_for(clip, spec, base.stride_s)
    eager_probs = score_windows(fight_model, eager, base.batch_size)
    assert len(eager) % base.batch_size and eager_probs[:, 1].std() > 0
    # a threshold inside the scores (all near 0: an untrained model), so that events fire and end
    cfg = base.model_copy(update={"thresholds": {"Fight": float(np.median(eager_probs[:, 1]))},
                                  "hysteresis": 0.0, "min_duration_s": 0.0, "merge_gap_s": 0.0})
    spec = effective_spec(fight_model.spec, cfg)
    _, times = resample(clip, spec.fps)
    extent = (float(times[0]), float(times[-1]) + 1.0 / spec.fps)
    hop_s = max(1, round(cfg.stride_s * spec.fps)) / spec.fps
    eager_events = detect_events(eager, eager_probs, spec, cfg.merge_gap_s, extent, shared_span(spec, cfg), hop_s)

    res = recognize_clip(fight_model, clip, fight_model.spec, cfg)
    np.testing.assert_array_equal(res.probs, eager_probs)
    assert res.probs.dtype == eager_probs.dtype
    assert [(w.video, w.kind, w.start_s, w.end_s, w.track_ids, w.key) for w in res.windows] == \
        [(w.video, w.kind, w.start_s, w.end_s, w.track_ids, w.key) for w in eager]
    assert all(w.clip is None for w in res.windows)
    assert len(eager_events) >= 2
    assert [e.to_dict() for e in res.events] == [e.to_dict() for e in eager_events]
