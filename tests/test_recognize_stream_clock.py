"""Stream time in stream mode: a live MJPEG camera (no clock of its own) is timed by arrival; a clock that goes back
(MPEG-TS wraps every 26.5 h, an encoder restarts) or jumps ahead starts a new session instead of stalling the
windows; frames dropped when the recognizer falls behind keep their true times in the window."""
from __future__ import annotations

import fractions
import http.server
import io
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from recognizer_core.recognize.stream import FrameReader


def _serve(handler) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _read_all(reader: FrameReader, timeout: float = 60) -> list[tuple]:
    """Every frame the reader puts (its queue holds them all), once the source has ended."""
    reader.start()
    try:
        assert reader.finished.wait(timeout), "the reader did not finish"
    finally:
        reader.stop_event.set()
        reader.join(5)
    items = []
    while not reader.frames.empty():
        items.append(reader.frames.get())
    return items


def _ts_bytes(n: int, rate: int = 10, pts0: float = 0.0) -> bytes:
    """MPEG-TS of n 64x64 frames at `rate` fps whose first frame is at pts0 seconds."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as c:
        st = c.add_stream("mpeg2video", rate=rate)
        st.width = st.height = 64
        st.pix_fmt, st.time_base = "yuv420p", fractions.Fraction(1, rate)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), (i * 10) % 250, np.uint8), format="rgb24")
            f.pts, f.time_base = int(round(pts0 * rate)) + i, fractions.Fraction(1, rate)
            for packet in st.encode(f):
                c.mux(packet)
        for packet in st.encode():
            c.mux(packet)
    return buf.getvalue()


def test_a_live_mjpeg_camera_is_timed_by_arrival_not_by_ffmpegs_25_fps_count():
    """FFmpeg's mpjpeg demuxer numbers frames 1/25 s apart; this camera sends 10 a second, so stream time ran at
    0.4x wall time (windows held 2.5x the motion)."""
    with io.BytesIO() as b:
        with av.open(b, "w", format="image2pipe") as c:
            st = c.add_stream("mjpeg", rate=1)
            st.width = st.height = 64
            st.pix_fmt = "yuvj420p"
            for packet in st.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 90, np.uint8), format="rgb24")):
                c.mux(packet)
            for packet in st.encode():
                c.mux(packet)
        jpeg = b.getvalue()

    class Camera(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for _ in range(30):  # 3 s at 10 fps, then the camera goes away
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                                 + jpeg + b"\r\n")
                self.wfile.flush()
                time.sleep(0.1)

    server, url = _serve(Camera)
    try:
        items = _read_all(FrameReader(f"{url}/video.mjpg", queue_frames=1000, reconnect_s=0))
    finally:
        server.shutdown()
    t, wall = np.array([i[0] for i in items]), np.array([i[1] for i in items])
    assert len(items) >= 25
    assert abs((t[-1] - t[0]) - (wall[-1] - wall[0])) < 0.1 * (wall[-1] - wall[0]), (t[-1] - t[0], wall[-1] - wall[0])
    assert np.all(np.diff(t) >= 0)


def test_a_file_whose_clock_goes_back_starts_a_new_session_and_time_goes_on(tmp_path):
    """Two recordings back to back (an encoder restart; MPEG-TS's 33-bit clock wraps the same way): stream time
    went back 3 s, after which nothing was scored again and the buffer grew without bound."""
    path = tmp_path / "restart.ts"
    path.write_bytes(_ts_bytes(30, pts0=5.0) + _ts_bytes(30, pts0=5.0))
    reader = FrameReader(str(path), queue_frames=1000, speed=0)
    items = _read_all(reader)
    t, sessions = np.array([i[0] for i in items]), [i[3] for i in items]
    assert len(items) == 60 and np.all(np.diff(t) > 0), np.diff(t).min()
    assert sessions == [0] * 30 + [1] * 30 and reader.clock_resets == 1
    assert items[30][4].startswith("the stream's clock went back") and abs(t[30] - t[29] - 0.1) < 1e-6


@pytest.mark.parametrize("second_pts, why", [(5.0, "went back"), (125.0, "ran ahead of wall time")],
                         ids=["back", "ahead"])
def test_a_live_stream_whose_clock_jumps_is_re_anchored_to_wall_time(second_pts, why):
    """An HTTP camera (chunked MPEG-TS, no duration: live) whose clock restarts, or jumps two minutes ahead, after
    2 s: stream time goes on by the wall time between the frames and a new session starts."""
    data = _ts_bytes(20, pts0=5.0) + _ts_bytes(20, pts0=second_pts)

    class Camera(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = 188 * 8
            for i in range(0, len(data), chunk):  # about real time
                piece = data[i:i + chunk]
                self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                self.wfile.flush()
                time.sleep(4.0 / (len(data) / chunk))
            self.wfile.write(b"0\r\n\r\n")

    server, url = _serve(Camera)
    try:
        reader = FrameReader(f"{url}/live.ts", queue_frames=1000, reconnect_s=0)
        items = _read_all(reader)
    finally:
        server.shutdown()
    t, wall, sessions = (np.array([i[k] for i in items]) for k in (0, 1, 3))
    assert reader.live and len(items) == 40
    assert np.all(np.diff(t) >= 0) and t[-1] - t[0] < 8.0, t  # not 2 minutes
    assert sessions.tolist() == [0] * 20 + [1] * 20 and reader.clock_resets == 1
    assert why in items[20][4] and abs((t[20] - t[19]) - (wall[20] - wall[19])) < 0.05


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tests.fakes.fake_rtmo import build_fake_rtmo
    from tests.recognize_helpers import make_run_folder

    root = tmp_path_factory.mktemp("clock")
    run, _ = make_run_folder(root)
    return {"root": root, "run": run, "rtmo": build_fake_rtmo(root / "rtmo.onnx")}


def test_run_stream_scores_on_after_the_clock_goes_back(model, tmp_path):
    from recognizer_core.extract.config import PoseModelConfig
    from recognizer_core.recognize.model import load_recognizer
    from recognizer_core.recognize.runner import RecognizeConfig, effective_spec
    from recognizer_core.recognize.stream import run_stream
    from tests.fakes.fake_rtmo import write_marker_video
    from tests.fakes.job_videos import linear_track

    video = write_marker_video(tmp_path / "cam.ts", [linear_track((60, 80), (140, 90), 100),
                                                    linear_track((200, 150), (170, 140), 100)], side=12)
    twice = tmp_path / "twice.ts"
    twice.write_bytes(Path(video).read_bytes() * 2)  # 4 s, then the same 4 s: the clock goes back
    rec = load_recognizer(model["run"])
    cfg = RecognizeConfig(thresholds={"Fight": 0.0}, min_duration_s=0.0)
    pose = PoseModelConfig(onnx={"model_path": str(model["rtmo"]), "intra_op_num_threads": 1}, batch_size=1)
    events = tmp_path / "events.jsonl"
    s = run_stream(rec, effective_spec(rec.spec, cfg), cfg, str(twice), pose, speed=0, queue_frames=400,
                   verbose=False, event_file=str(events))
    # each half scores its windows (the old code scored none after the jump) and makes its own event
    per_half = s["windows"] / 2
    assert s["frames_processed"] == 200 and per_half >= 2 and s["windows"] % 2 == 0, s
    assert s["clock_resets"] == 1 and s["events"] == 2, s
    first, second = (__import__("json").loads(line) for line in events.read_text().splitlines())
    # each reaches its half's edges (the reset ends the first half's windows, the second's first step starts anew)
    assert first["end_s"] < second["start_s"] < second["end_s"], (first, second)


def test_dropped_frames_keep_their_true_times_in_the_window():
    """A burst of frames dropped while a window was scored (0.6 s here): the window's frames used to be spread
    evenly over the buffer, so each model frame after the gap showed a moment up to hundreds of ms away."""
    from types import SimpleNamespace

    from recognizer_core.recognize.stream import StableTrackIds, _buffer_clip

    times = np.arange(0, 3.2, 0.04)
    times = times[(times < 1.0) | (times >= 1.6)]

    def track_poses(_, poses, tracking):  # one person whose x coordinate is its frame's time x 100
        kp = np.zeros((1, len(poses), 17, 2), np.float32)
        kp[0, :, :, 0] = np.asarray(poses, np.float32)[:, None] * 100
        return SimpleNamespace(num_persons=1, keypoint=kp, keypoint_score=np.ones((1, len(poses), 17), np.float32),
                               box_score=np.ones((1, len(poses)), np.float32))

    buf = [(float(t), 0.0, float(t), (240, 320)) for t in times]
    clip = _buffer_clip(buf, track_poses, None, "cam", StableTrackIds(), 30.0)
    shown = clip.keypoint[0, :, 0, 0] / 100  # the time of the frame each model frame shows
    grid = times[0] + np.arange(clip.num_frames) / 30.0
    assert clip.fps == 30.0 and abs(clip.num_frames - 3.16 * 30) <= 2
    outside = (grid < 0.98) | (grid > 1.62)
    assert np.abs(shown - grid)[outside].max() <= 0.021  # half a camera frame
    assert np.abs(shown - grid).max() <= 0.31  # inside the gap: the nearest frame, at most half the gap away
