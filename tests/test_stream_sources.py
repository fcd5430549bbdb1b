"""Stream mode on sources whose timing is awkward: an AVI (timestamps guessed from packet order, shuffled by
B-frames), reordered timestamps in any source, a session shorter than a window, and a live camera whose rate is
unknown. Each is compared with what batch mode scores on the same frames."""
from __future__ import annotations

import fractions
import types
from pathlib import Path

import numpy as np
import pytest

from recognizer_core.recognize.frame_reader import FrameReader
from tests.test_e2e_review_fixes import _batch_windows, _drive_stream, _spec

SHARED_AVI = Path(__file__).resolve().parents[2] / "shared/data/videos/misc/mmaction2_S001C001P001R001A001_rgb.avi"


def _read_all(reader: FrameReader) -> list[tuple]:
    """Every frame a file source puts (the queue holds them all): (t, wall, frame, session, why, rate)."""
    reader.start()
    assert reader.finished.wait(60), "the reader did not finish"
    reader.join(5)
    items = []
    while not reader.frames.empty():
        items.append(reader.frames.get())
    assert reader.error == "", reader.error
    return items


def _write_avi_with_b_frames(path: Path, n: int, fps: int = 25) -> Path:
    import av

    with av.open(str(path), "w", format="avi") as out:
        # two B-frames in every group, whatever the content: timestamps 1, 3, 4, 2, 6, 7, 5 ... (2 frames back)
        st = out.add_stream("libx264", rate=fps, options={"x264-params": "bframes=2:b-adapt=0:scenecut=0"})
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            image = np.full((48, 64, 3), i * 4 % 250, np.uint8)
            for packet in st.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    return path


def _assert_counted(items: list[tuple], reader: FrameReader, fps: float) -> np.ndarray:
    t = np.array([i[0] for i in items])
    assert reader.clock_resets == 0 and {i[3] for i in items} == {0}, [i[4] for i in items if i[4]][:3]
    assert t == pytest.approx(np.arange(len(items)) / fps, abs=1e-9)  # batch mode's times: frame number / fps
    assert {i[5] for i in items} == {fps}
    return t


def test_an_avi_with_b_frames_is_timed_by_its_frame_count(tmp_path):
    """libx264 in AVI: timestamps 1, 3, 4, 2 ... (packet order); every step back started a new session."""
    import av

    path = _write_avi_with_b_frames(tmp_path / "b.avi", 60)
    with av.open(str(path)) as c:  # the premise: the container's timestamps do run back
        assert np.any(np.diff([f.time for f in c.decode(c.streams.video[0])]) < 0)
    reader = FrameReader(str(path), queue_frames=1000, speed=0)
    _assert_counted(_read_all(reader), reader, 25.0)


def test_the_shared_ntu_avi_scores_batch_modes_windows(monkeypatch):
    """mmaction2's NTU AVI (B-frames, timestamps up to 3 frames back): 43 sessions of at most 4 frames and no
    window scored; now one session, and the stream scores batch mode's 4 windows."""
    if not SHARED_AVI.is_file():
        pytest.skip(f"needs the shared test video {SHARED_AVI} (../shared next to the repository)")
    reader = FrameReader(str(SHARED_AVI), queue_frames=1000, speed=0)
    items = _read_all(reader)
    assert len(items) == 103
    t = _assert_counted(items, reader, 30.0)
    spec = _spec(30.0, 60)
    shown, centres = _drive_stream(monkeypatch, spec, t, 30.0)
    batch, batch_centres = _batch_windows(spec, len(t), 30.0)
    assert len(batch) == 4 and shown == batch and centres == pytest.approx(batch_centres, abs=1e-6)


class _Container:
    """A stand-in for PyAV's container: one video stream whose frames carry `times`."""

    def __init__(self, times, fps: float, live: bool):
        rate = fractions.Fraction(fps)
        self.streams = types.SimpleNamespace(video=[types.SimpleNamespace(
            average_rate=rate, guessed_rate=rate, time_base=fractions.Fraction(1, 90000))])
        self.format = types.SimpleNamespace(name="mpegts" if live else "mov,mp4,m4a,3gp,3g2,mj2")
        self.duration = None if live else int(len(times) / fps * 1e6)
        self.times = times

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def decode(self, stream):
        yield from (types.SimpleNamespace(time=float(t)) for t in self.times)


@pytest.mark.parametrize("source", ["clip.mp4", "rtsp://cam/1"], ids=["file", "live"])
def test_reordered_timestamps_are_the_next_frame_and_a_real_reset_a_new_session(source):
    """A step back of a frame (B-frames whose timestamps a muxer guessed) is the next frame; a clock that goes
    back seconds (an encoder restart) starts a new session. Each step back had started one."""
    fps = 25.0
    order = [0, 2, 1, 3, 5, 4, 6, 7, 9, 8, 10, 11, 12, 14, 13, 15] + list(range(16, 40))  # presentation frames
    times = [k / fps + 7.0 for k in order]  # (a stream that does not start at 0)
    times += [k / fps + 6.0 for k in order]  # then its clock restarts at 6 s: 2.56 s back from 8.56 s
    reader = FrameReader(source, queue_frames=1000, speed=0, reconnect_s=0)
    reader._open = lambda: _Container(times, fps, source.startswith("rtsp"))
    items = _read_all(reader)
    t, sessions = np.array([i[0] for i in items]), [i[3] for i in items]
    assert sessions == [0] * 40 + [1] * 40 and reader.clock_resets == 1, [i[4] for i in items if i[4]]
    assert items[40][4] == "the stream's clock went back 2.56 s"
    assert np.all(np.diff(t) > 0)
    first = t[:40] - t[0]   # each frame at most a frame from its true time, never a new session
    assert np.abs(first - np.arange(40) / fps).max() <= 1 / fps + 1e-9 and first[-1] == pytest.approx(39 / fps)


@pytest.mark.parametrize("n, source_fps", [(5, 25.0), (30, 25.0), (46, 25.0), (23, 12.0)])
def test_a_session_shorter_than_a_window_scores_batch_modes_one_short_window(monkeypatch, n, source_fps):
    """A 30-frame, 25 fps video on a 50-frame model: batch mode scores one short window, the stream none (its
    buffer never spanned 0.9 of a window)."""
    spec = _spec(25.0, 50)
    shown, centres = _drive_stream(monkeypatch, spec, np.arange(n) / source_fps, source_fps)
    batch, batch_centres = _batch_windows(spec, n, source_fps)
    assert len(batch) == 1 and shown == batch and centres == pytest.approx(batch_centres, abs=1e-6)


def test_a_short_session_before_a_clock_reset_gets_its_window_and_the_next_session_its_own(monkeypatch):
    spec = _spec(25.0, 50)
    n0, n1 = 30, 100
    times = np.concatenate([np.arange(n0) / 25.0, n0 / 25.0 + 0.5 + np.arange(n1) / 25.0])
    shown, centres = _drive_stream(monkeypatch, spec, times, 25.0, sessions=[0] * n0 + [1] * n1)
    b0, c0 = _batch_windows(spec, n0, 25.0)
    b1, c1 = _batch_windows(spec, n1, 25.0)
    assert shown == b0 + [[f + n0 for f in w] for w in b1]
    assert centres == pytest.approx(c0 + [c + times[n0] for c in c1], abs=1e-6)


@pytest.mark.parametrize("camera_fps", [30.0, 15.0, 12.0])
def test_a_camera_of_unknown_rate_scores_each_window_at_its_last_frame(monkeypatch, camera_fps):
    """A live camera (rate 0) stepped at the first frame at or after each window end: 48 of 122 windows (30 fps
    camera, 25 fps model) waited a camera frame past the frame nearest their end. Now each step is that frame,
    estimated from the buffer's recent intervals, and the windows are those a known rate gives."""
    spec = _spec(25.0, 50)
    rng = np.random.default_rng(1)
    times = np.arange(int(30 * camera_fps)) / camera_fps
    jittered = times + rng.uniform(-0.002, 0.002, len(times)) * (np.arange(len(times)) > 0)
    runs = []
    for t in (times, jittered):
        at: list[int] = []
        shown, _ = _drive_stream(monkeypatch, spec, t, 0.0, at=at)
        assert len(shown) >= 55 and {len(w) for w in shown} == {50}
        assert at == [w[-1] for w in shown]  # scored when its last frame arrived, not one camera frame later
        runs.append(shown)
    assert runs[0] == _drive_stream(monkeypatch, spec, times, camera_fps)[0]
