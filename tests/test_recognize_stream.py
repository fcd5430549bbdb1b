"""Stream mode on a video served over HTTP on 127.0.0.1 with the fake RTMO model: events at close, frames
dropped and counted when the recognizer falls behind, latency reported, Ctrl-C stops cleanly, a live source that
drops is reopened."""
from __future__ import annotations

import functools
import http.server
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fakes.fake_rtmo import build_fake_rtmo, write_marker_video
from tests.fakes.job_videos import linear_track
from tests.ray_heads import free_port
from tests.recognize_helpers import make_run_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    www = root / "www"
    a = linear_track((60, 80), (140, 90), 150)
    b = linear_track((200, 150), (170, 140), 150, first=20)
    write_marker_video(www / "cam.mp4", [a, b], side=12)
    write_marker_video(www / "live.ts", [a, b], side=12)  # MPEG-TS: what an HTTP camera streams
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    run, _ = make_run_folder(root)
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}/cam.mp4", "run": run, "www": www,
           "rtmo": build_fake_rtmo(root / "rtmo.onnx"), "root": root}
    server.shutdown()


def _run(setup, speed, source=None, cfg_kw=None, **kw):
    from recognizer_core.extract.config import PoseModelConfig
    from recognizer_core.recognize.model import load_recognizer
    from recognizer_core.recognize.runner import RecognizeConfig
    from recognizer_core.recognize.stream import run_stream

    rec = load_recognizer(setup["run"])
    # always on: one event, closed at the end. The model's own spec, as a library caller passes it: run_stream
    # applies cfg's thresholds itself (they were ignored: no event)
    cfg = RecognizeConfig(**{"thresholds": {"Fight": 0.0}, "min_duration_s": 0.0, **(cfg_kw or {})})
    pose = PoseModelConfig(onnx={"model_path": str(setup["rtmo"]), "intra_op_num_threads": 1}, batch_size=1)
    return run_stream(rec, rec.spec, cfg, source or setup["url"], pose, speed=speed,
                      verbose=False, **kw)


def test_stream_over_http_scores_windows_reports_latency_and_closes_events(setup, tmp_path):
    events = tmp_path / "events.jsonl"
    s = _run(setup, speed=0.5, event_file=str(events))
    assert s["error"] == "" and s["frames_read"] == 150 and not s["interrupted"]
    assert s["frames_processed"] + s["frames_dropped"] == 150  # every frame is scored or counted as dropped
    assert s["windows"] >= 3 and s["latency_ms_median"] > 0 and s["latency_ms_p95"] >= s["latency_ms_median"]
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert s["events"] == len(lines) == 1 and lines[0]["label"] == "Fight"
    assert 0 <= lines[0]["start_s"] < lines[0]["end_s"] <= 6.1 and lines[0]["track_ids"] == [0, 1]


def test_stream_closes_an_event_when_the_scene_empties_not_when_the_stream_ends(setup, tmp_path):
    """Two people for 4 s, nobody for 4 s (more than a window), two others for 4 s. The always-on scene event
    must close when nobody is left: no window scores below `off` then, so it used to stay open through the gap,
    take in the next people and reach the user only at the stream's end. (The windows stop for 0.7 s only, the
    buffer still holding the first two: merge_gap_s 0 here, as the default 1 s merges the two, as batch mode does.)"""
    import numpy as np

    a, b = linear_track((60, 80), (140, 90), 300), linear_track((200, 150), (170, 140), 300)
    c, d = linear_track((100, 60), (60, 60), 300), linear_track((220, 100), (250, 120), 300)
    a[100:], b[100:], c[:200], d[:200] = np.nan, np.nan, np.nan, np.nan
    video = write_marker_video(tmp_path / "gap.mp4", [a, b, c, d], side=12)  # 25 fps, 12 s
    events = tmp_path / "events.jsonl"
    s = _run(setup, speed=0, source=str(video), queue_frames=400, event_file=str(events), cfg_kw={"merge_gap_s": 0})
    assert s["error"] == "" and s["frames_dropped"] == 0 and s["frames_processed"] == 300
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["label"] for e in lines] == ["Fight", "Fight"], lines
    # events span window centres (a buffer's centre is half a window, 1.6 s, before its newest frame)
    assert lines[0]["end_s"] <= 4.0 + 1.65 + 0.25 < lines[1]["start_s"], lines


def test_stream_paces_a_file_from_its_first_timestamp_not_from_zero(tmp_path):
    """Recorder exports and MPEG-TS start at t > 0 (here 15 s): pacing by the absolute timestamp waited that long
    before the first frame."""
    import fractions

    import av
    import numpy as np

    from recognizer_core.recognize.stream import FrameReader

    path = tmp_path / "recorder.ts"
    with av.open(str(path), "w", format="mpegts") as c:
        st = c.add_stream("mpeg2video", rate=10)
        st.width = st.height = 64
        st.pix_fmt, st.time_base = "yuv420p", fractions.Fraction(1, 10)
        for i in range(20):  # 2 s from t = 15 s
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 10, np.uint8), format="rgb24")
            f.pts, f.time_base = 150 + i, fractions.Fraction(1, 10)
            for packet in st.encode(f):
                c.mux(packet)
        for packet in st.encode():
            c.mux(packet)
    reader = FrameReader(str(path), queue_frames=100, speed=2.0)
    t0 = time.perf_counter()
    reader.start()
    try:
        first = reader.frames.get(timeout=30)[0]
        waited = time.perf_counter() - t0
        assert reader.finished.wait(30)
    finally:
        reader.stop_event.set()
        reader.join(5)
    assert 14.9 <= first <= 15.2 and reader.read == 20
    assert waited < 5.0 and time.perf_counter() - t0 < 10.0  # about 1 s at 2x; 7.5 s more when paced from 0


def test_stream_drops_frames_and_says_so_when_it_cannot_keep_up(setup):
    s = _run(setup, speed=30.0, queue_frames=1)  # frames arrive 30x faster than real time
    assert s["frames_read"] == 150 and s["frames_dropped"] > 0
    assert s["frames_processed"] + s["frames_dropped"] == 150


def test_stream_camera_index_opens_its_v4l2_device_and_names_it_when_missing(setup):
    """A camera index N reads /dev/videoN through FFmpeg's V4L2 input. No V4L2 device can exist here (a VM with
    no kernel modules, so no v4l2loopback): this checks the mapping and that a missing camera is a reported
    error naming the device, with nothing read, rather than a dead reader thread or a hang."""
    import av

    assert "video4linux2,v4l2" in av.formats_available  # PyAV's own FFmpeg has the V4L2 input
    index = next(str(i) for i in range(90, 200) if not Path(f"/dev/video{i}").exists())
    s = _run(setup, speed=1.0, source=index)
    assert s["frames_read"] == s["windows"] == 0 and not s["interrupted"]
    assert s["error"].startswith(f"{index}: ") and f"/dev/video{index}" in s["error"], s["error"]


# Runs a script with Python's own Ctrl-C handler, as from an interactive shell, even where this suite was started
# with SIGINT ignored (a background job of a shell without job control), which the child would inherit.
WITH_CTRL_C = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_stream_cli_stops_cleanly_on_ctrl_c_and_sigterm(setup, stop):
    """Ctrl-C, and SIGTERM (docker stop, Kubernetes, systemd), close the open event and print the summary."""
    proc = subprocess.Popen([sys.executable, "-c", WITH_CTRL_C, str(ROOT / "rayjobs/recognize.py"),
                             "--model", str(setup["run"]), "--stream", setup["url"], "--pose-model", str(setup["rtmo"]),
                             "--set", "thresholds.Fight=0.0", "--set", "min_duration_s=0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, head = time.time() + 120, []
    for line in proc.stdout:  # wait until it is scoring windows, then Ctrl-C
        head.append(line)
        if line.startswith("[stream] t=") or time.time() > deadline:
            break
    proc.send_signal(stop)
    out, err = proc.communicate(timeout=60)
    out = "".join(head) + out
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["interrupted"] and summary["frames_read"] < 150 and summary["windows"] >= 1
    said = "Ctrl-C" if stop == signal.SIGINT else "SIGTERM"
    assert "[event]" in out and f"[stream] {said}: stopping" in out  # the open event is closed and delivered


def test_track_ids_persist_across_overlapping_buffers():
    import numpy as np

    from recognizer_core.recognize.stream import StableTrackIds

    rng = np.random.default_rng(0)
    kp = rng.uniform(0, 100, (3, 10, 17, 2)).astype(np.float32)  # persons a, b, c over frames 0..9
    sc = np.ones((3, 10, 17), np.float32)
    sc[2, :6] = 0  # c appears at frame 6
    times = np.arange(10) / 10
    stable = StableTrackIds()
    assert stable.assign(times[:6], kp[:2, :6], sc[:2, :6]).tolist() == [0, 1]
    # next buffer (frames 3..9): the tracker ranks them b, c, a; ids follow the people, c is new
    order = [1, 2, 0]
    assert stable.assign(times[3:], kp[order, 3:], sc[order, 3:]).tolist() == [1, 2, 0]


class LiveCamera(http.server.BaseHTTPRequestHandler):
    """An HTTP camera: streams MPEG-TS chunked (no length, so FFmpeg sees no duration: a live source) at about
    2x real time. The first connection is cut after `cut_fraction` of the stream, and the camera then answers
    503 for `down_s` (a reboot); after that it streams in full until it has served `serves` connections in all,
    then is down for good."""
    protocol_version = "HTTP/1.1"
    state: dict = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        st = self.state
        if time.time() < st["down_until"] or st["served"] >= st["serves"]:
            self.send_error(503)
            return
        st["served"] += 1
        data = st["data"]
        first = st["served"] == 1
        end = int(len(data) * st["cut_fraction"]) if first else len(data)
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = 188 * 40
        pause = 3.0 / (len(data) / chunk)  # the 6 s video in about 3 s
        for i in range(0, end, chunk):
            piece = data[i:min(i + chunk, end)]
            self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
            self.wfile.flush()
            time.sleep(pause)
        if first:  # the network drops: no chunked terminator, the connection is reset
            st["down_until"] = time.time() + st["down_s"]
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")


def test_stream_reopens_a_live_source_that_drops_and_gives_up_when_it_stays_down(setup, tmp_path):
    LiveCamera.state = {"data": (setup["www"] / "live.ts").read_bytes(), "cut_fraction": 0.8, "down_s": 1.5,
                        "down_until": 0.0, "served": 0, "serves": 2}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LiveCamera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    events = tmp_path / "events.jsonl"
    try:
        t0 = time.perf_counter()
        s = _run(setup, speed=1.0, source=f"http://127.0.0.1:{server.server_address[1]}/live.ts",
                 event_file=str(events), reconnect_s=2.0, max_seconds=60)
        took = time.perf_counter() - t0
    finally:
        server.shutdown()
    # Cut at 80% of the stream, down 1.5 s, reopened once and read in full; then down for good: given up 2 s after
    # the last frame, with the reason in the error (not a hang, not a silent end).
    assert s["reconnects"] == 1 and 1.0 <= s["outage_s"] < 10, s
    assert 150 < s["frames_read"] < 300 and s["frames_processed"] + s["frames_dropped"] == s["frames_read"]
    assert "no frame for" in s["error"] and "gave up" in s["error"] and "live.ts" in s["error"], s["error"]
    assert took < 40
    # The always-on event is closed at the cut and a new one opens after the reopening, later in stream time
    # (stream time goes on across the gap).
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(lines) == s["events"] == 2, lines
    assert lines[1]["start_s"] >= lines[0]["end_s"] + 1.0, lines


def test_stream_rtsp_source_that_refuses_is_reported_at_once(setup):
    port = free_port()  # nothing listens there: a camera that is off or a wrong address
    t0 = time.perf_counter()
    s = _run(setup, speed=1.0, source=f"rtsp://127.0.0.1:{port}/cam", reconnect_s=30)
    # never gave a frame: reported at once (a wrong URL is not retried for 30 s), naming the source
    assert s["frames_read"] == 0 and s["reconnects"] == 0 and time.perf_counter() - t0 < 15
    assert s["error"].startswith(f"rtsp://127.0.0.1:{port}/cam: ConnectionRefusedError"), s["error"]


def test_stream_cli_rejects_a_negative_reconnect_time(setup, capsys):
    from rayjobs.recognize import main

    assert main(["--model", str(setup["run"]), "--stream", setup["url"], "--pose-model", str(setup["rtmo"]),
                 "--reconnect-s", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --reconnect-s must be >= 0 seconds (0 = never reopen), got -1.0"]


SYSTEM_PY = "/usr/bin/python3"  # GStreamer's bindings are Debian packages: the system interpreter has them


def _rtsp_server_missing() -> str | None:
    try:
        # the server library and the elements of tests/rtsp_server.py's pipeline
        probe = subprocess.run([SYSTEM_PY, "-c", "import gi; gi.require_version('Gst', '1.0'); "
                                "gi.require_version('GstRtspServer', '1.0'); from gi.repository import Gst, "
                                "GstRtspServer; Gst.init(None); assert all(Gst.ElementFactory.find(e) for e in "
                                "('qtdemux', 'h264parse', 'rtph264pay'))"], capture_output=True, text=True)
    except OSError:  # no system python3 at all
        probe = None
    if probe is None or probe.returncode != 0:
        return "GStreamer's RTSP server is not installed here (as root: bash .ci/test_tools.sh, which `make test` runs)"
    return None


def test_stream_reopens_a_real_rtsp_camera_after_it_restarts(setup, tmp_path, monkeypatch):
    why = _rtsp_server_missing()
    if why:
        pytest.skip(why)
    from recognizer_core.recognize import stream

    readers = []  # the run's reader, to follow its progress (the real class, only recorded)

    class Recorded(stream.FrameReader):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            readers.append(self)

    monkeypatch.setattr(stream, "FrameReader", Recorded)
    port = free_port()

    def serve() -> subprocess.Popen:
        cmd = [SYSTEM_PY, str(ROOT / "tests/rtsp_server.py"), str(port), str(setup["www"] / "cam.mp4")]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout.readline().strip() == "ready", proc.stdout.read()
        return proc

    def wait_for(cond, what: str, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while not cond():
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    servers = [serve()]
    events = tmp_path / "events.jsonl"
    result = {}
    run = threading.Thread(target=lambda: result.update(_run(
        setup, speed=1.0, source=f"rtsp://127.0.0.1:{port}/cam", event_file=str(events), reconnect_s=3.0,
        max_seconds=90)))
    run.start()
    try:
        # The 6 s clip streams in real time; a window (3.3 s here) is scored once 0.9 of it is buffered: each
        # session is cut after 4.4 s, so it has scored one.
        wait_for(lambda: readers and readers[0].read >= 110, "frames from the first session")
        servers[0].kill()  # the camera loses power mid-stream
        wait_for(lambda: readers[0].lost_at is not None, "the reader to notice")
        first = readers[0].read
        time.sleep(1.0)
        servers.append(serve())  # and comes back on the same address
        wait_for(lambda: readers[0].reconnects == 1 and readers[0].read >= first + 110, "frames after reopening")
        servers[1].kill()  # down for good
        run.join(timeout=60)
    finally:
        for proc in servers:
            proc.kill()
        run.join(timeout=30)
    s = result
    assert s["reconnects"] == 1 and s["outage_s"] >= 1.0 and "gave up" in s["error"], s
    assert s["frames_processed"] + s["frames_dropped"] == s["frames_read"] >= 150
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(lines) == s["events"] == 2 and lines[1]["start_s"] >= lines[0]["end_s"] + 1.0, lines


# --- events: batch mode's rules one step at a time, and their delivery -------------------------------------------


@pytest.mark.parametrize("seed, merge_gap_s", [(0, 1.0), (1, 1.0), (2, 0.0), (3, 2.0), (4, 1.0), (5, 0.5)])
def test_stream_events_equal_batch_events_on_the_same_scores(seed, merge_gap_s):
    """The same window scores through batch detect_events and the stream's OnlineEvents give the same events:
    merged within merge_gap_s (the stream ignored it), min_duration_s on the merged event (the stream applied it
    to each piece), and with window_mode both only the classes of each window's kind (the stream made events of
    every class from every window)."""
    import numpy as np

    from recognizer_core.recognize.events import OnlineEvents, detect_events
    from recognizer_core.recognize.spec import ClassThreshold, ModelSpec
    from recognizer_core.recognize.windows import Window
    from recognizer_core.skeleton.transforms import PipelineConfig

    spec = ModelSpec(label_names=["Normal", "Fight", "Falldown"], pipeline=PipelineConfig(), fps=30, window_frames=90,
                     window_mode="both", track_classes=["Falldown"],
                     thresholds={"Fight": ClassThreshold(on=0.6, off=0.4, min_duration_s=1.5),
                                 "Falldown": ClassThreshold(on=0.5, min_duration_s=1.0)})
    rng = np.random.default_rng(seed)
    hop, n = 0.5, 120
    present = {"scene": np.ones(n, bool), "track0": np.ones(n, bool), "track1": np.zeros(n, bool)}
    present["scene"][rng.integers(0, n, 3)] = False  # nobody seen at a few steps
    present["track0"][40:40 + rng.integers(1, 5)] = False  # a person missed for 1-4 steps
    present["track1"][30:100] = True
    scores = {k: np.clip(np.convolve(rng.uniform(-0.6, 1.6, n + 4), np.ones(5) / 5, "valid"), 0, 1) for k in present}
    steps = []
    windows, probs = [], []
    for i in range(n):
        centre, step = spec.window_s / 2 + i * hop, []
        for key in present:
            if present[key][i]:
                kind, ids = ("scene", [0, 1]) if key == "scene" else ("track", [int(key[-1])])
                p = np.array([0.0, scores[key][i], scores[key][i]], np.float32)
                windows.append(Window("cam", kind, centre - spec.window_s / 2, centre + spec.window_s / 2, ids, None))
                probs.append(p)
                step.append((windows[-1].key, kind, p, ids))
        steps.append((centre, step))
    online = OnlineEvents(spec, "cam", merge_gap_s)
    for centre, step in steps:
        online.step(centre, hop, step)
    online.flush()

    def rows(events):
        return sorted((e.label, round(e.start_s, 6), round(e.end_s, 6), round(e.peak_score, 5), e.track_ids)
                      for e in events)

    batch = rows(detect_events(windows, np.array(probs), spec, merge_gap_s))
    assert batch and {r[0] for r in batch} == {"Fight", "Falldown"}, batch
    assert rows(online.pop_ready()) == batch


def _gap_video(path):
    """Two people for 4 s, nobody for 4 s, two others for 4 s (25 fps): a scene event closes mid-stream."""
    import numpy as np

    a, b = linear_track((60, 80), (140, 90), 300), linear_track((200, 150), (170, 140), 300)
    c, d = linear_track((100, 60), (60, 60), 300), linear_track((220, 100), (250, 120), 300)
    a[100:], b[100:], c[:200], d[:200] = np.nan, np.nan, np.nan, np.nan
    return write_marker_video(path, [a, b, c, d], side=12)
