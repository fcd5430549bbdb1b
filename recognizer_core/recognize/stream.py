"""Stream mode: a live source (RTSP / HTTP URL, a file, or a camera index) -> RTMO -> tracking -> windows ->
events delivered as they become final.

A reader thread decodes frames (PyAV) into a queue of `queue_frames`; when the recognizer falls behind, the
oldest queued frame is dropped and counted, so the recognizer always works on the newest frames and says how
many it skipped. Files and HTTP videos with a duration are paced to real time (`speed` x) like a live camera;
a live source that drops is reopened, and a clock that jumps is re-anchored (FrameReader). Every `stride_s` of
stream time the frames of the last window are tracked (track/tracking.py over the buffer, one person per stored
row), placed at their true times (dropped frames leave gaps, not a squeezed clip), cut and scored as in batch mode;
latency = wall time from the arrival of a window's last frame to its score. Events follow batch mode's rules
(events.OnlineEvents: hysteresis, merging within `merge_gap_s`, then minimum duration), so an event is final
`merge_gap_s` of stream time after it closes; it is printed and written at once, POSTed by a sender thread
(event_delivery.EventSink). Track ids persist across the overlapping buffers (`StableTrackIds`). Ctrl-C, and in the CLI
SIGTERM, stop cleanly: open events are closed and delivered, pending POSTs get `drain_s`, a summary is printed.

The extraction-stage imports (extract/, track/) are the three listed in `_pose_pieces`.
"""
from __future__ import annotations

import collections
import json
import queue
import sys
import threading
import time

import numpy as np

from recognizer_core.recognize.event_delivery import EventOutputError, EventSink, check_post_url, redact_url
from recognizer_core.recognize.events import OnlineEvents
from recognizer_core.recognize.runner import RecognizeConfig, make_windows_for, score_windows, shared_span
from recognizer_core.recognize.windows import resample
from recognizer_core.skeleton.clip import SkeletonClip


def _pose_pieces():
    from recognizer_core.extract.rtmo import RtmoPoseEstimator
    from recognizer_core.track.tracking import track_poses
    from recognizer_core.extract.frame_image import letterbox_frame

    return RtmoPoseEstimator, track_poses, letterbox_frame


# Schemes whose sources are live by nature; an HTTP source is live when FFmpeg finds no duration (MJPEG, MPEG-TS).
LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "udp://", "srt://", "tcp://")
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0  # reopening a lost live source: the first wait, doubling up to this
# A live source's clock that drifts this far from wall time (a file's that jumps this far ahead) is re-anchored:
# well above a camera's start-up burst (FFmpeg's probe buffers seconds, then decodes them at once) and a stall
# that the 10 s read timeout allows; a smaller jump ahead is a gap in time, as when frames are lost.
CLOCK_SLIP_S = 10.0
# Live formats whose timestamps are FFmpeg's frame count at a guessed rate, not the camera's (MJPEG over HTTP)
NO_CLOCK_FORMATS = {"mpjpeg", "mjpeg", "jpeg_pipe", "image2", "image2pipe"}
LATENCY_STEPS = 10000  # the summary's latency median / p95 are over this many latest scoring steps
ENDED = "the stream ended"


class FrameReader(threading.Thread):
    """Decodes `source` into a bounded queue, dropping the oldest frame when the consumer is behind.

    A live source (a camera, an RTSP / RTMP / UDP URL, or an HTTP stream with no duration) that fails or ends after
    it gave frames is reopened, waiting 0.5 s, 1 s, 2 s ... 10 s between tries, until `reconnect_s` pass without a
    frame (0: never reopen): a camera that reboots or a network that drops for a minute must not end a detector
    that runs for weeks. A source that gives no frame at all is reported at once (a wrong URL or device).

    Stream time only increases. A live source without a clock of its own (MJPEG over HTTP: FFmpeg numbers its
    frames 1/25 s apart whatever the camera sends) is timed by arrival. A clock that goes back (MPEG-TS wraps
    every 26.5 h; an encoder restarts), jumps ahead, or in a live source drifts more than CLOCK_SLIP_S from wall
    time is re-anchored, as is a reopening: the next frame comes after the last one by the wall time between them
    (a file: by one frame), and starts a new session. Every frame carries its session number and why that session
    began, so the consumer starts its window anew.
    """

    def __init__(self, source: str, queue_frames: int = 4, speed: float = 1.0, reconnect_s: float = 300.0):
        super().__init__(daemon=True)
        self.source, self.speed, self.reconnect_s = source, speed, reconnect_s
        self.frames: queue.Queue = queue.Queue(maxsize=queue_frames)
        self.stop_event = threading.Event()
        self.read = self.dropped = 0
        self.fps = 0.0
        self.error = ""
        self.finished = threading.Event()
        self.live = source.isdigit() or source.startswith(LIVE_SCHEMES)
        self.reconnects = self.clock_resets = self.session = 0
        self.clock = "stream"  # or "arrival": the live source has no clock of its own
        self.outage_s = 0.0
        self.lost_at: float | None = None  # wall time the current outage began; None while frames flow
        self.lost_reason = ""
        self._t_last: float | None = None  # stream time and wall time of the last frame put
        self._wall_last = 0.0

    def _open(self):
        import av

        if self.source.isdigit():  # a camera index (Linux V4L2)
            return av.open(f"/dev/video{self.source}", format="v4l2")
        options = {}
        if "://" in self.source:
            options["rw_timeout"] = "10000000"  # a network read that waits 10 s fails, rather than hanging
        if self.source.startswith(("rtsp://", "rtsps://")):
            # RTP inside the RTSP TCP connection: over UDP, packets lost between a camera and a server smear
            # frames; and the RTSP demuxer's own socket timeout (microseconds), so a silent camera is noticed.
            options.update(rtsp_transport="tcp", timeout="10000000")
        return av.open(self.source, options=options)

    def _clock_break(self, step: float, slip: float) -> str:
        """Why the source's clock cannot go on as stream time ('' when it can): `step` is its advance since the
        last frame, `slip` how far it fell behind wall time since the session's anchor (negative: ran ahead)."""
        if step < 0:
            return f"the stream's clock went back {-step:.2f} s"
        if self.live and abs(slip) > CLOCK_SLIP_S:
            return f"the stream's clock {'fell behind' if slip > 0 else 'ran ahead of'} wall time by {abs(slip):.1f} s"
        if not self.live and step > CLOCK_SLIP_S:
            return f"the stream's clock jumped {step:.1f} s ahead"
        return ""

    def _session(self) -> str:
        """Opens the source and puts its frames until it ends, fails or is stopped; returns what ended it."""
        try:
            with self._open() as container:
                stream = container.streams.video[0]
                self.fps = float(stream.average_rate or stream.guessed_rate or 25)
                self.live = self.live or ("://" in self.source and container.duration is None)
                by_arrival = self.live and (container.format.name in NO_CLOCK_FORMATS or stream.time_base is None)
                shift = raw_last = lag0 = why = None
                t_start, t_first = time.perf_counter(), 0.0
                for frame in container.decode(stream):
                    if self.stop_event.is_set():
                        return "stopped"
                    now = time.perf_counter()
                    first = raw_last is None  # the first frame of this opening
                    if first:  # a live source whose first frame has no time has no clock: one choice per opening
                        by_arrival = by_arrival or (self.live and frame.time is None)
                        self.clock = "arrival" if by_arrival else "stream"
                    if by_arrival:
                        raw = now
                    elif frame.time is not None:
                        raw = float(frame.time)
                    else:  # a frame without a time in a source with a clock: one frame after the last
                        raw = 0.0 if first else raw_last + 1.0 / self.fps
                    broke = "" if first else self._clock_break(raw - raw_last, (now - raw) - lag0)
                    if first or broke:  # (re-)anchor the source's clock to stream time
                        if self._t_last is None:  # the very first frame: the source's own time (arrival: 0)
                            t_new = 0.0 if by_arrival else raw
                        elif self.live or first:
                            t_new = self._t_last + (now - self._wall_last)
                        else:  # a file read faster or slower than real time: the wall time means nothing
                            t_new = self._t_last + 1.0 / self.fps
                        shift, lag0 = t_new - raw, now - raw
                        if broke:
                            self.clock_resets += 1
                            self.session, why = self.session + 1, broke
                        else:
                            t_first = t_new  # MPEG-TS and recorder exports start at t > 0: pace from here
                            if self.lost_at is not None:
                                self.reconnects += 1
                                self.outage_s += now - self.lost_at
                                self.lost_at = None
                                self.session, why = self.session + 1, "reopened"
                    t = raw + shift
                    if not self.live and self.speed > 0:  # a file or HTTP video: arrive at (speed x) real time
                        time.sleep(max(0.0, (t - t_first) / self.speed - (now - t_start)))
                    self._put((t, time.perf_counter(), frame, self.session, why))  # letterboxed as batch does
                    self._t_last, self._wall_last, raw_last = t, time.perf_counter(), raw
                    self.read += 1
            return ENDED
        except Exception as err:  # noqa: BLE001 - reported by the consumer, never a silent thread death
            # PyAV's messages quote the URL it opened, password included
            return f"{type(err).__name__}: {err}".replace(self.source, redact_url(self.source))

    def run(self) -> None:
        delay = RETRY_FIRST_S
        try:
            while not self.stop_event.is_set():
                problem = self._session()
                if self.stop_event.is_set():
                    return
                if not (self.live and self.reconnect_s > 0 and self._t_last is not None):
                    if problem != ENDED:
                        self.error = f"{redact_url(self.source)}: {problem}"
                    return
                now = time.perf_counter()
                if self.lost_at is None:  # a new outage (the reason first: the consumer reads it once lost_at is set)
                    self.lost_reason, delay = problem, RETRY_FIRST_S
                    self.lost_at = now
                if now - self._wall_last > self.reconnect_s:
                    self.error = (f"{redact_url(self.source)}: no frame for {now - self._wall_last:.0f} s since "
                                  f"the stream was lost ({self.lost_reason}); gave up reopening it "
                                  f"(--reconnect-s {self.reconnect_s:g})")
                    return
                self.stop_event.wait(delay)
                delay = min(2 * delay, RETRY_MAX_S)
        finally:
            self.finished.set()

    def _put(self, item) -> None:
        while True:
            try:
                self.frames.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.frames.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass


def run_stream(rec, spec, cfg: RecognizeConfig, source: str, pose_cfg, *, tracking=None, event_file=None,
               post_url=None, max_seconds: float = 0, speed: float = 1.0, queue_frames: int = 4,
               reconnect_s: float = 300.0, verbose: bool = True, drain_s: float = 5.0) -> dict:
    """Run until the source ends (or stays lost for `reconnect_s`, see FrameReader), `max_seconds` pass or Ctrl-C;
    returns the summary. A bad `event_file` / `post_url` raises EventOutputError before anything starts."""
    from recognizer_core.extract.backends import build_backend
    from recognizer_core.track.config import TrackingConfig

    sink = EventSink(event_file, post_url)
    Estimator, track_poses, letterbox_frame = _pose_pieces()
    tracking = tracking or TrackingConfig(min_track_len=3)
    try:
        estimator = Estimator(build_backend(pose_cfg), pose_cfg)
    except BaseException:
        sink.close(0)  # no sender thread or open file left behind by a pose model that fails to load
        raise
    reader = FrameReader(source, queue_frames, speed, reconnect_s)
    reader.start()
    source = redact_url(source)   # events, POSTs, the summary and log lines never carry a camera's password
    buf: collections.deque = collections.deque()  # (stream time, arrival, FramePoses, (H, W))
    events = OnlineEvents(spec, source, cfg.merge_gap_s, shared_span=shared_span(spec, cfg))
    # the latest LATENCY_STEPS scoring steps: a detector that runs for weeks keeps its memory flat
    latencies: collections.deque = collections.deque(maxlen=LATENCY_STEPS)
    n_windows, processed, next_due, t0 = 0, 0, None, time.perf_counter()
    stable = StableTrackIds()
    interrupted, session, outage_closed = False, 0, False

    def deliver() -> None:
        """Printed and written first, POSTs queued (the sender thread posts them): final events leave the queue
        only once handed over, so a SIGTERM here loses none of those closed in the same step."""
        while events.ready:
            sink.emit(events.ready[0])
            events.ready.popleft()

    def close_open_events() -> None:
        events.flush()
        deliver()

    try:
        while not (reader.finished.is_set() and reader.frames.empty()):
            if max_seconds and time.perf_counter() - t0 > max_seconds:
                break
            try:
                t, arrival, frame, frame_session, why = reader.frames.get(timeout=0.2)
            except queue.Empty:
                if reader.lost_at is not None and not outage_closed:  # no frame can come until it is reopened
                    print(f"[stream] lost {source} ({reader.lost_reason}); reopening it for up to {reconnect_s:g} s",
                          file=sys.stderr, flush=True)
                    close_open_events()  # an event cannot be said to go on through what we did not see
                    outage_closed = True
                continue
            if frame_session != session:  # reopened, or the clock re-anchored: windows start anew after the gap
                if not outage_closed:
                    close_open_events()
                session, outage_closed, next_due = frame_session, False, None
                buf.clear()
                if why == "reopened":
                    print(f"[stream] reopened {source}: {reader.reconnects} reopening(s), {reader.outage_s:.1f} s "
                          "without frames so far", file=sys.stderr, flush=True)
                else:
                    print(f"[stream] {source}: {why}; stream time goes on from t={t:.1f} s and windows start anew",
                          file=sys.stderr, flush=True)
            padded, ratio, hw = letterbox_frame(frame, pose_cfg.model_input_size)
            buf.append((t, arrival, estimator(padded[None], [ratio], [hw])[0], hw))
            processed += 1
            while buf and buf[-1][0] - buf[0][0] > spec.window_s:
                buf.popleft()
            next_due = t if next_due is None else next_due
            if t < next_due or buf[-1][0] - buf[0][0] < 0.9 * spec.window_s:
                continue
            next_due = t + cfg.stride_s
            clip = _buffer_clip(buf, track_poses, tracking, source, stable, spec.fps)
            wins = make_windows_for(clip, spec, stride_s=1e9, cover_end=False) if clip is not None else []
            probs = score_windows(rec, wins, cfg.batch_size) if wins else []
            # a step with no window still counts: it ends the events of whoever left, and held events expire
            events.step(t - spec.window_s / 2, cfg.stride_s,
                        [(w.key, w.kind, p, w.track_ids) for w, p in zip(wins, probs)], start_s=buf[0][0])
            deliver()
            if not wins:
                continue
            latencies.append(time.perf_counter() - buf[-1][1])
            n_windows += len(wins)
            if verbose and (n_windows == len(wins) or n_windows % 20 < len(wins)):  # first, then every 20th
                print(f"[stream] t={t:6.1f}s frames {processed} read {reader.read} dropped {reader.dropped} "
                      f"windows {n_windows} latency {latencies[-1] * 1000:.0f} ms", flush=True)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (docker stop, Kubernetes, systemd) in the CLI
        interrupted = True
        print(f"[stream] {stop or 'Ctrl-C'}: stopping", flush=True)
    finally:
        reader.stop_event.set()
        close_open_events()
        delivered = sink.close(drain_s)  # what the POST sender still holds, for up to drain_s
        reader.join(timeout=5)
    lat = np.array(latencies) * 1000
    return {"source": source, "frames_read": reader.read, "frames_processed": processed,
            "frames_dropped": reader.dropped, "windows": n_windows, **delivered,
            "reconnects": reader.reconnects, "outage_s": round(reader.outage_s, 2),
            "clock": reader.clock, "clock_resets": reader.clock_resets,
            "latency_ms_median": round(float(np.median(lat)), 1) if len(lat) else None,
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
            "latency_steps": len(lat),
            "seconds": round(time.perf_counter() - t0, 2), "interrupted": interrupted, "error": reader.error}


class StableTrackIds:
    """Track ids that persist across the overlapping window buffers: a track of the new buffer takes the id of
    the previous buffer's track that used the same detections (same frame, same keypoints) in their shared
    frames, else a new id. So per-track event sequences and reported ids follow a person through the stream."""

    def __init__(self) -> None:
        self.prev: dict[tuple[float, bytes], int] = {}
        self.next_id = 0

    def assign(self, times: np.ndarray, keypoint: np.ndarray, keypoint_score: np.ndarray) -> np.ndarray:
        ids, seen, taken = [], {}, set()
        for m in range(keypoint.shape[0]):
            frames = np.nonzero(keypoint_score[m].max(-1) > 0)[0]
            sigs = [(float(times[t]), keypoint[m, t].tobytes()) for t in frames]
            votes = collections.Counter(self.prev[s] for s in sigs if s in self.prev)
            pid = next((p for p, _ in votes.most_common() if p not in taken), None)
            if pid is None:
                pid, self.next_id = self.next_id, self.next_id + 1
            taken.add(pid)
            ids.append(pid)
            seen.update({s: pid for s in sigs})
        self.prev = seen
        return np.array(ids, np.int32)


def _buffer_clip(buf, track_poses, tracking, source: str, stable: StableTrackIds, fps: float) -> SkeletonClip | None:
    """The buffer's tracked people as a clip at the model's `fps`, each model frame the buffered frame nearest
    its time: frames dropped when the recognizer fell behind (or an irregular camera) leave gaps in time, which
    a clip numbered 0, 1, 2 ... would close up, squeezing the motion."""
    times = np.array([b[0] for b in buf])
    if tracking is not None:  # (None: a stand-in tracker that takes no config)
        # no row reuse inside the buffer: StableTrackIds gives a row one id and the windows take it as one person,
        # and the default row_gap (300 camera frames) is shorter than a buffer of window_s > 10 s at 30 fps
        tracking = tracking.model_copy(update={"row_gap": max(tracking.row_gap, len(buf))})
    tracked = track_poses(np.arange(len(buf)), [b[2] for b in buf], tracking)
    if tracked.num_persons == 0:
        return None
    track_ids = stable.assign(times, tracked.keypoint, tracked.keypoint_score)
    h, w = buf[-1][3]
    # frame numbers in milliseconds from the buffer's first frame: frame_times() reads them back as seconds
    clip = SkeletonClip(clip_id=source, label=0, keypoint=tracked.keypoint, keypoint_score=tracked.keypoint_score,
                        img_shape=(int(h), int(w)), total_frames=len(buf), source_video=source,
                        fps=float((len(times) - 1) / max(times[-1] - times[0], 1e-6)), track_ids=track_ids,
                        frame_inds=np.rint((times - times[0]) * 1000).astype(np.int32),
                        extra={"box_score": tracked.box_score, "source_fps": 1000.0})
    return resample(clip, fps, tolerance=-1.0)[0]  # always by time: an average rate near the model's hides gaps


def run_stream_cli(rec, spec, cfg: RecognizeConfig, args) -> int:
    from recognizer_core.extract.config import PoseModelConfig
    from recognizer_core.ray_runtime import install_stop_handlers
    from recognizer_core.recognize.pose_models import PoseModelError, resolve_pose_model

    if not args.pose_model:
        print("error: --stream needs --pose-model (rtmo-s|rtmo-m|rtmo-l or an RTMO .onnx path)", file=sys.stderr)
        return 2
    if not args.reconnect_s >= 0:  # NaN too
        print(f"error: --reconnect-s must be >= 0 seconds (0 = never reopen), got {args.reconnect_s}", file=sys.stderr)
        return 2
    try:
        EventSink(args.event_file).close()  # before the pose model loads: where events go is checked first
        if args.post_url:
            check_post_url(args.post_url)
        onnx_path = resolve_pose_model(args.pose_model, args.pose_cache)
    except (PoseModelError, EventOutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pose = PoseModelConfig(onnx={"model_path": str(onnx_path)}, batch_size=1)
    # A detector in a container is stopped with SIGTERM, whose default ends the process with its open events
    # undelivered and no summary (and which PID 1 ignores, so `docker stop` would wait for its SIGKILL).
    install_stop_handlers()
    summary = run_stream(rec, spec, cfg, args.stream, pose, event_file=args.event_file, post_url=args.post_url,
                         max_seconds=args.max_seconds, reconnect_s=args.reconnect_s)
    print(json.dumps(summary), flush=True)
    if summary["error"]:
        print(f"error: {summary['error']}", file=sys.stderr)
        return 1
    return 0
