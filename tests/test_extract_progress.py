"""The extraction driver's progress display on a real local Ray pipeline: frames count while a video is still
running (they were counted only when it finished: a long CCTV video showed 0 frames for hours), and a driver whose
stderr is no terminal prints plain lines instead of a bar (each '\\r' redraw became a line in `ray job logs`)."""
from __future__ import annotations

import io
import re
import sys

import pytest

from fakes.fake_rtmo import build_fake_rtmo, write_marker_video
from fakes.job_videos import SIDE, linear_track
from recognizer_core.extract import job
from recognizer_core.extract.config import ExtractionConfig

pytestmark = pytest.mark.ray
FRAMES = 300


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory):
    return build_fake_rtmo(tmp_path_factory.mktemp("model") / "fake_rtmo.onnx")


def _plan(tmp_path, model):
    """One 300-frame video in 3 shards: its letterboxed frames (1.2 MB each) fill at least 3 of Ray Data's 128 MB
    blocks, so several batches of poses reach the driver; the video completes with the last."""
    write_marker_video(tmp_path / "videos" / "Fight" / "long.mp4", [linear_track((30, 30), (200, 150), FRAMES)],
                       side=SIDE)
    cfg = ExtractionConfig.model_validate({
        "source": {"input": str(tmp_path / "videos")}, "output": str(tmp_path / "poses"),
        "decode": {"shard_frames": 100}, "model": {"onnx": {"model_path": str(model)}, "batch_size": 8},
        "tracking": {"min_track_len": 2}, "ray": {"num_cpus_per_actor": 0.5, "num_cpus_per_decode_task": 0.5}})
    return job.prepare_extraction(cfg)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_with_frames_of_a_running_video(ray_local, tmp_path, fake_model, capfd, monkeypatch):
    from ray.util import debug

    debug._logged.discard("ray_data_progress_manager_disabled")   # Ray logs it once per process: an earlier test's
    monkeypatch.setattr(job, "PROGRESS_INTERVAL_S", 0.0, raising=False)   # a line per block
    summary = job.run_prepared(_plan(tmp_path, fake_model), verbose=True)
    out, err = capfd.readouterr()
    assert summary["done"] == 1 and summary["frames"] == FRAMES
    assert "\r" not in out + err
    lines = out.splitlines()
    done = lines.index("[extract] done   Fight/long.mp4")
    running = [int(m.group(1)) for m in map(re.compile(r"\[extract\] 0/1 videos, (\d+) frames, [\d.]+ frames/s$").match,
                                            lines[:done]) if m]
    assert any(0 < f < FRAMES for f in running), out
    assert re.fullmatch(rf"\[extract\] 1/1 videos, {FRAMES} frames, [\d.]+ frames/s", lines[-1]), out
    assert "Progress bars disabled" not in err


def test_a_terminal_bar_shows_frames_of_a_running_video(ray_local, tmp_path, fake_model, capfd, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    job.run_prepared(_plan(tmp_path, fake_model), verbose=True)
    out, _ = capfd.readouterr()
    running = [int(f) for f in re.findall(r" 0/1 \[[^\]]*frames=(\d+)\]", terminal.getvalue())]
    assert any(0 < f < FRAMES for f in running), terminal.getvalue()[-2000:]
    assert "[extract] done   Fight/long.mp4" in out and "videos," not in out   # the bar, no plain lines
