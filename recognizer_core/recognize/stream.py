"""Stream mode: a live source (RTSP / HTTP URL, a file, or a camera index) -> RTMO -> tracking -> windows ->
events delivered as they become final.

A reader thread decodes frames (PyAV) into a queue of `queue_frames`; when the recognizer falls behind, the
oldest queued frame is dropped and counted, so the recognizer always works on the newest frames and says how
many it skipped. Files and HTTP videos with a duration are paced to real time (`speed` x) like a live camera;
a live source that drops is reopened, and a clock that jumps is re-anchored (FrameReader). At batch mode's window
ends (StepGrid), and at a session's last frame (its last window, unless the last step scored that one), a window's
frames are tracked (track/tracking.py over them, one person per stored row); each of its window_frames model
frames shows the buffered frame nearest its time on batch mode's grid, so it holds what batch mode's window with
that end holds, and dropped frames leave gaps, not a squeezed clip; it is scored as in batch mode;
latency = wall time from the arrival of the newest frame to its window's score.
Events follow batch mode's rules (events.OnlineEvents: hysteresis, merging within `merge_gap_s`, then minimum
duration), so an event is final `merge_gap_s` of stream time after it closes; it is printed and written at once,
POSTed by a sender thread (event_delivery.EventSink). Track ids persist across the overlapping buffers
(`StableTrackIds`). Ctrl-C, and in the CLI SIGTERM, stop cleanly: open events are closed and delivered, pending
POSTs get `drain_s`, a summary is printed.

The extraction-stage imports (extract/, track/) are the three listed in `_pose_pieces`.
"""
from __future__ import annotations

import collections
import itertools
import json
import math
import queue
import sys
import time

import numpy as np

from recognizer_core.recognize.event_delivery import EventOutputError, EventSink, check_post_url, redact_url
from recognizer_core.recognize.events import OnlineEvents
from recognizer_core.recognize.frame_reader import FrameReader
from recognizer_core.recognize.runner import RecognizeConfig, effective_spec, make_windows_for, score_windows, \
    shared_span
from recognizer_core.recognize.windows import nearest_frames, resample
from recognizer_core.skeleton.clip import SkeletonClip


def _pose_pieces():
    from recognizer_core.extract.rtmo import RtmoPoseEstimator
    from recognizer_core.track.tracking import track_poses
    from recognizer_core.extract.frame_image import letterbox_frame

    return RtmoPoseEstimator, track_poses, letterbox_frame


LATENCY_STEPS = 10000  # the summary's latency median / p95 are over this many latest scoring steps
# A step scores only a buffer that spans this fraction of window_s (window_frames - 1 frame intervals span a
# little less than window_s). A session that ends with no window scored gets its one short window at its end
# (score_tail), as batch mode scores a video shorter than a window.
FULL_SPAN = 0.9
RECENT_FRAMES = 16  # a source of unknown rate: its frame interval is the median of the latest steps between these


def run_stream(rec, spec, cfg: RecognizeConfig, source: str, pose_cfg, *, tracking=None, event_file=None,
               post_url=None, max_seconds: float = 0, speed: float = 1.0, queue_frames: int = 4,
               reconnect_s: float = 300.0, verbose: bool = True, drain_s: float = 5.0) -> dict:
    """Run until the source ends (or stays lost for `reconnect_s`, see FrameReader), `max_seconds` pass or Ctrl-C;
    returns the summary. A bad `event_file` / `post_url` raises EventOutputError before anything starts. `cfg`'s
    overrides (thresholds, windows) are applied to `spec` here, as recognize_clip does: a library caller passing
    rec.spec got the model's thresholds (effective_spec is idempotent: the CLI's spec is unchanged)."""
    spec = effective_spec(spec, cfg)
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
    n_windows, processed, grid, t0 = 0, 0, None, time.perf_counter()
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

    def score(t: float, end: int) -> None:
        """Score the window that ends at frame `end` of batch mode's grid (StepGrid.times); `t` is the newest frame."""
        nonlocal n_windows
        times = np.array([b[0] for b in buf])
        pick = nearest_frames(times, grid.times(end, spec.window_frames))
        last_s = float(times[pick[-1]])  # the time of the window's last frame (batch mode's times[t1])
        for _ in range(int(pick[0])):  # frames before the window's first are in no later window (its grid moves on)
            buf.popleft()
        pick -= pick[0]
        clip = _buffer_clip(buf, track_poses, tracking, source, stable, spec.fps, pick=pick)
        wins = make_windows_for(clip, spec, stride_s=1e9, cover_end=False) if clip is not None else []
        probs = score_windows(rec, wins, cfg.batch_size) if wins else []
        # a step with no window still counts: it ends the events of whoever left, and held events expire.
        # The window ends one model frame after its last frame's time, as batch mode's Window.end_s.
        events.step(last_s + 1.0 / spec.fps - spec.window_s / 2, grid.hop_s,
                    [(w.key, w.kind, p, w.track_ids) for w, p in zip(wins, probs)], start_s=grid.origin)
        deliver()
        if not wins:
            return
        latencies.append(time.perf_counter() - buf[-1][1])
        n_windows += len(wins)
        if verbose and (n_windows == len(wins) or n_windows % 20 < len(wins)):  # first, then every 20th
            print(f"[stream] t={t:6.1f}s frames {processed} read {reader.read} dropped {reader.dropped} "
                  f"windows {n_windows} latency {latencies[-1] * 1000:.0f} ms", flush=True)

    def score_tail() -> None:
        """The session's frames ended (the source ended or was lost, or its clock broke): as batch mode's last
        window ends at the video's last frame of its grid, score that window unless the last step already did
        (a source faster than the model: its last frames can be within half a model frame of that step's end).
        A session with no window scored (shorter than FULL_SPAN of a window) gets its one short window here, as
        a video shorter than a window gets one in batch mode (window_starts)."""
        if not (buf and grid):
            return
        end = grid.tail_end(buf[-1][0])
        if grid.last_end is None or end > grid.last_end:
            grid.last_end = end
            score(buf[-1][0], end)

    try:
        while not (reader.finished.is_set() and reader.frames.empty()):
            if max_seconds and time.perf_counter() - t0 > max_seconds:
                break
            try:
                t, arrival, frame, frame_session, why, rate = reader.frames.get(timeout=0.2)
            except queue.Empty:
                if reader.lost_at is not None and not outage_closed:  # no frame can come until it is reopened
                    print(f"[stream] lost {source} ({reader.lost_reason}); reopening it for up to {reconnect_s:g} s",
                          file=sys.stderr, flush=True)
                    score_tail()
                    close_open_events()  # an event cannot be said to go on through what we did not see
                    outage_closed = True
                continue
            if frame_session != session:  # reopened, or the clock re-anchored: windows start anew after the gap
                if not outage_closed:
                    score_tail()
                    close_open_events()
                session, outage_closed, grid = frame_session, False, None
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
            grid = grid or StepGrid(spec, cfg.stride_s, rate, t)
            dt = 0.0 if grid.known else _recent_interval(buf)
            if grid.due(t, dt) and buf[-1][0] - buf[0][0] >= FULL_SPAN * spec.window_s:
                score(t, grid.stepped(t, dt))
            # Every later window (a step's, or the tail's within half a grid unit of the newest frame) starts
            # after t - (window_frames - 0.5) units: the last frame at or before that can be its nearest frame.
            # Trimmed to a span under a window, coarse sources lost the frame that completed it (W-2 frames).
            cut = buf[-1][0] - (spec.window_frames - 0.5) * grid.unit - 1e-6
            while len(buf) > 1 and buf[1][0] <= cut:
                buf.popleft()
        else:  # the source's frames ended (not a stop or max_seconds): its last window, as batch mode's
            score_tail()
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


class StepGrid:
    """Where stream mode scores: at batch mode's window ends (video_windows), window_frames - 1 frames after the
    session's first frame, then every round(stride_s * fps) (`hop_s`); in the source's frames where its rate is
    known and within 2 % of the model's (batch mode keeps them then), else in model frames; at the frame nearest
    each end: where the rate is known (as batch mode resamples) by it, else by `dt`, the source's recent frame
    interval (a live camera: the first frame at or after an end was a frame late in 40 % of steps). On an anchored
    grid: stepping at the first frame stride_s after the last step rounded each step up to a frame (every 0.549 s,
    not 0.48 s, at 20 fps). Ends that dropped frames passed are skipped.
    Frame i of the grid is at origin + i * unit, batch mode's i-th (resampled) frame: a window ending at frame
    `end` shows the buffered frames nearest `times(end)`, so it holds window_frames frames, the ones batch mode's
    window with that end holds."""

    def __init__(self, spec, stride_s: float, source_fps: float, t0: float):
        stride = max(1, int(round(stride_s * spec.fps)))
        self.hop_s = stride / spec.fps  # batch mode's events take this hop too (runner.recognize_clip)
        same = source_fps > 0 and abs(source_fps - spec.fps) <= 0.02 * spec.fps
        self.rate = source_fps if same else spec.fps
        self.unit = 1.0 / self.rate
        self.origin, self.first, self.stride = t0, spec.window_frames - 1, stride
        self.known = source_fps > 0
        self.interval = 1.0 / source_fps if self.known else 0.0
        self.base, self.step, self.k = t0 + self.first * self.unit, stride * self.unit, 0
        self.last: float | None = None  # the newest frame scored
        self.last_end: int | None = None  # the grid frame the newest scored window ends at

    def _early(self, dt: float) -> float:
        """Half a source frame (the known rate's, else `dt`): a frame that close before an end is the nearest to
        it (a tie is the earlier frame's, as in resample)."""
        return 0.5 * (self.interval if self.known else dt) + 1e-6

    def due(self, t: float, dt: float = 0.0) -> bool:
        return t >= self.base + self.k * self.step - self._early(dt)

    def stepped(self, t: float, dt: float = 0.0) -> int:
        """A step at frame time t: returns the grid frame its window ends at, the latest end due by t."""
        k = max(self.k, math.floor((t + self._early(dt) - self.base) / self.step))
        self.last, self.k, self.last_end = t, k + 1, self.first + k * self.stride
        return self.last_end

    def tail_end(self, t: float) -> int:
        """The grid frame batch mode's last window ends at when the video's last frame is at t: resample's
        np.arange(origin, t + unit / 2, unit) (or, kept at the source's rate, the frame at t itself)."""
        # as resample computes it, to the last bit: t + unit / 2 can be a grid frame's time
        return max(0, math.ceil((t + 0.5 / self.rate - self.origin) / self.unit) - 1)

    def times(self, end: int, frames: int) -> np.ndarray:
        """The times of the window of up to `frames` grid frames that ends at grid frame `end`."""
        return self.origin + np.arange(max(0, end - frames + 1), end + 1) * self.unit


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


def _recent_interval(buf) -> float:
    """The median step between the buffer's latest RECENT_FRAMES frames (0 with one frame): a live camera's rate,
    which it does not declare reliably, robust to a dropped frame or jittered arrival."""
    times = [b[0] for b in itertools.islice(reversed(buf), RECENT_FRAMES)]
    return float(np.median(-np.diff(times))) if len(times) > 1 else 0.0


def _buffer_clip(buf, track_poses, tracking, source: str, stable: StableTrackIds, fps: float,
                 pick: np.ndarray | None = None) -> SkeletonClip | None:
    """The buffer's tracked people as a clip at the model's `fps`, each model frame the buffered frame nearest
    its time: frames dropped when the recognizer fell behind (or an irregular camera) leave gaps in time, which
    a clip numbered 0, 1, 2 ... would close up, squeezing the motion. `pick` (stream mode's window): the buffered
    frame each model frame shows, tracked over buf[pick[0]:pick[-1] + 1]; else the whole buffer from its first frame."""
    frames = list(buf) if pick is None else list(itertools.islice(buf, int(pick[0]), int(pick[-1]) + 1))
    times = np.array([b[0] for b in frames])
    if tracking is not None:  # (None: a stand-in tracker that takes no config)
        # no row reuse inside the buffer: StableTrackIds gives a row one id and the windows take it as one person,
        # and the default row_gap (300 camera frames) is shorter than a buffer of window_s > 10 s at 30 fps
        tracking = tracking.model_copy(update={"row_gap": max(tracking.row_gap, len(frames))})
    tracked = track_poses(np.arange(len(frames)), [b[2] for b in frames], tracking)
    if tracked.num_persons == 0:
        return None
    track_ids = stable.assign(times, tracked.keypoint, tracked.keypoint_score)
    h, w = frames[-1][3]
    cols = np.arange(len(frames)) if pick is None else np.asarray(pick) - int(pick[0])
    # frame numbers in milliseconds from the first frame: frame_times() reads them back as seconds
    rate = float(fps) if pick is not None else float((len(times) - 1) / max(times[-1] - times[0], 1e-6))
    clip = SkeletonClip(clip_id=source, label=0, keypoint=np.ascontiguousarray(tracked.keypoint[:, cols]),
                        keypoint_score=np.ascontiguousarray(tracked.keypoint_score[:, cols]),
                        img_shape=(int(h), int(w)), total_frames=len(cols), source_video=source,
                        fps=rate, track_ids=track_ids,
                        frame_inds=np.rint((times[cols] - times[0]) * 1000).astype(np.int32),
                        extra={"box_score": np.ascontiguousarray(tracked.box_score[:, cols]), "source_fps": 1000.0})
    if pick is not None:
        return clip  # already one frame per model frame
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
