"""The recognize API from a user's own process (a notebook, a service), without the CLI: recognize_clip applies the
config's overrides itself, and load_recognizer(threads=N) leaves torch's process-wide thread count alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recognizer_core.recognize.model import load_recognizer
from recognizer_core.recognize.runner import RecognizeConfig, effective_spec, recognize_clip
from recognizer_core.skeleton.clip import SkeletonClip
from tests.recognize_helpers import make_run_folder


def _scene(seconds: float = 8.0, fps: float = 30.0) -> SkeletonClip:
    T, rng = int(seconds * fps), np.random.default_rng(1)
    kp = rng.uniform(10, 300, (2, T, 17, 2)).astype(np.float32)
    sc = rng.uniform(0.2, 1.0, (2, T, 17)).astype(np.float32)
    return SkeletonClip(clip_id="v", label=0, keypoint=kp, keypoint_score=sc, img_shape=(320, 320), total_frames=T,
                        fps=fps, track_ids=np.array([3, 4], np.int32), frame_inds=np.arange(T, dtype=np.int32),
                        source_video="v.mp4", extra={"source_fps": fps})


def _events(res) -> list[dict]:
    return [e.to_dict() for e in res.events]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    return make_run_folder(tmp_path_factory.mktemp("lib"))[0]


def test_effective_spec_applied_twice_is_applied_once(run_folder):
    """The CLI and batch mode pass an effective spec to recognize_clip, which applies the config again."""
    spec = load_recognizer(run_folder).spec
    for cfg in (RecognizeConfig(), RecognizeConfig(thresholds={"Fight": 0.8}, hysteresis=0.3, min_duration_s=2.0),
                RecognizeConfig(hysteresis=0.05, window_s=1.3, window_mode="track"),
                RecognizeConfig(window_mode="both", track_classes=["Fight"], thresholds={"Fight": 0.2})):
        once = effective_spec(spec, cfg)
        assert effective_spec(once, cfg) == once, cfg
    assert effective_spec(spec, RecognizeConfig()) == spec.model_copy(
        update={"thresholds": {"Fight": spec.thresholds["Fight"]}})


def test_recognize_clip_takes_the_config_overrides_with_the_models_own_spec(run_folder):
    """recognize_clip(rec, clip, rec.spec, cfg) ignored cfg's thresholds, min_duration_s and window_s: events and
    windows came from the model's spec, where the CLI (effective_spec first) gave the configured ones."""
    rec, clip = load_recognizer(run_folder), _scene()
    plain = recognize_clip(rec, clip, rec.spec, RecognizeConfig())
    assert plain.events == []  # this model scores Fight far below the default 0.5 here

    cfg = RecognizeConfig(thresholds={"Fight": 0.0}, min_duration_s=0.0, window_s=2.0)
    as_cli = recognize_clip(rec, clip, effective_spec(rec.spec, cfg), cfg)
    as_library = recognize_clip(rec, clip, rec.spec, cfg)
    assert as_cli.events, "threshold 0 fires on every window"
    assert _events(as_library) == _events(as_cli)
    assert [(w.start_s, w.end_s) for w in as_library.windows] == [(w.start_s, w.end_s) for w in as_cli.windows]
    assert as_library.windows[0].end_s - as_library.windows[0].start_s == pytest.approx(2.0)
    np.testing.assert_array_equal(as_library.probs, as_cli.probs)


def test_load_recognizer_threads_bound_the_model_only_while_it_predicts(run_folder):
    """threads=N called the process-wide torch.set_num_threads at load and never restored it: a notebook's or
    service's other torch work ran on N threads from then on. Now N holds during predict only."""
    before = torch.get_num_threads()
    n = 2 if before == 1 else 1
    try:
        rec = load_recognizer(run_folder, threads=n)
        assert torch.get_num_threads() == before
        during: list[int] = []
        rec.net.backbone.register_forward_pre_hook(lambda module, args: during.append(torch.get_num_threads()))
        x = rec.prepare([_scene(1.0)])
        probs = rec.predict(x)
        assert probs.shape == (1, 2) and during == [n]
        assert torch.get_num_threads() == before
        with pytest.raises(Exception):  # a failing call restores the count too
            rec.predict(x[..., :1])
        assert torch.get_num_threads() == before
        # threads=0 (the default): torch's own count, untouched
        default = load_recognizer(run_folder)
        default.net.backbone.register_forward_pre_hook(lambda module, args: during.append(torch.get_num_threads()))
        default.predict(x)
        assert during == [n, before] and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_concurrent_bounded_predicts_leave_no_thread_with_the_bound():
    """A service calls predict from several threads: torch's count is per OS thread, and a thread whose first torch
    call came while another was inside predict (bound to 1) read 1 as its count before and kept it for good. A
    forced interleaving: B tries to enter while A is inside."""
    import threading

    import torch

    from recognizer_core.recognize.model import TorchRecognizer

    a_in, b_in = threading.Event(), threading.Event()
    seen: dict = {}

    class Net(torch.nn.Module):
        def predict(self, x):
            me = threading.current_thread().name
            seen[me] = torch.get_num_threads()
            if me == "A":
                a_in.set()
                b_in.wait(1.0)   # B is let in while A is inside, where nothing keeps it out
            else:
                b_in.set()
            return torch.zeros(x.shape[0], 2)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rec = TorchRecognizer(Net(), spec=None, source="x", threads=1)
        x = np.zeros((1, 3), np.float32)

        def run_b():
            a_in.wait(5)
            rec.predict(x)
            seen["B after"] = torch.get_num_threads()

        threads = [threading.Thread(target=lambda: rec.predict(x), name="A"), threading.Thread(target=run_b, name="B")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert seen["A"] == seen["B"] == 1 and seen["B after"] == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
