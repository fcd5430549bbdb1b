"""Stream mode: a live source (RTSP / HTTP URL, a file, or a camera index) -> RTMO -> tracking -> windows ->
events delivered as they become final.

A reader thread decodes frames (PyAV) into a queue of `queue_frames`; when the recognizer falls behind, the
oldest queued frame is dropped and counted, so the recognizer always works on the newest frames and says how
many it skipped. Files and HTTP videos with a duration are paced to real time (`speed` x) like a live camera;
a live source that drops is reopened, and a clock that jumps is re-anchored (FrameReader). At batch mode's window
ends (StepGrid), and at a session's last frame, the last window's frames are tracked (track/tracking.py over the
buffer, one person per stored row), placed at their true times (dropped frames leave gaps, not a squeezed clip),
cut and scored as in batch mode; latency = wall time from the arrival of a window's last frame to its score.
Events follow batch mode's rules (events.OnlineEvents: hysteresis, merging within `merge_gap_s`, then minimum
duration), so an event is final `merge_gap_s` of stream time after it closes; it is printed and written at once,
POSTed by a sender thread (event_delivery.EventSink). Track ids persist across the overlapping buffers
(`StableTrackIds`). Ctrl-C, and in the CLI SIGTERM, stop cleanly: open events are closed and delivered, pending
POSTs get `drain_s`, a summary is printed.

The extraction-stage imports (extract/, track/) are the three listed in `_pose_pieces`.
"""
from __future__ import annotations

import collections
import json
import math
import queue
import sys
import time

import numpy as np

from recognizer_core.recognize.event_delivery import EventOutputError, EventSink, check_post_url, redact_url
from recognizer_core.recognize.events import OnlineEvents
from recognizer_core.recognize.frame_reader import FrameReader
from recognizer_core.recognize.runner import RecognizeConfig, make_windows_for, score_windows, shared_span
from recognizer_core.recognize.windows import resample
from recognizer_core.skeleton.clip import SkeletonClip


def _pose_pieces():
    from recognizer_core.extract.rtmo import RtmoPoseEstimator
    from recognizer_core.track.tracking import track_poses
    from recognizer_core.extract.frame_image import letterbox_frame

    return RtmoPoseEstimator, track_poses, letterbox_frame


LATENCY_STEPS = 10000  # the summary's latency median / p95 are over this many latest scoring steps


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

    def score(t: float) -> None:
        """Score the buffer's window, which ends at frame time `t` (its newest frame)."""
        nonlocal n_windows
        grid.stepped(t)
        clip = _buffer_clip(buf, track_poses, tracking, source, stable, spec.fps)
        wins = make_windows_for(clip, spec, stride_s=1e9, cover_end=False) if clip is not None else []
        probs = score_windows(rec, wins, cfg.batch_size) if wins else []
        # a step with no window still counts: it ends the events of whoever left, and held events expire.
        # The window ends one model frame after its last frame's time, as batch mode's Window.end_s.
        events.step(t + 1.0 / spec.fps - spec.window_s / 2, grid.hop_s,
                    [(w.key, w.kind, p, w.track_ids) for w, p in zip(wins, probs)], start_s=buf[0][0])
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
        window ends at the video's last frame, score one ending at the newest frame if no step has yet."""
        if buf and grid and (grid.last is None or buf[-1][0] > grid.last) \
                and buf[-1][0] - buf[0][0] >= 0.9 * spec.window_s:
            score(buf[-1][0])

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
            # under window_frames - 0.5 model frames: resampled, it has at most window_frames frames and the window
            # ends at its newest frame (a whole window_s held one more: the window ended a model frame early)
            while len(buf) > 1 and buf[-1][0] - buf[0][0] >= (spec.window_frames - 0.5) / spec.fps - 1e-9:
                buf.popleft()
            grid = grid or StepGrid(spec, cfg.stride_s, rate, t)
            if grid.due(t) and buf[-1][0] - buf[0][0] >= 0.9 * spec.window_s:
                score(t)
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
    each end where the rate is known (as batch mode resamples), else the first at or after it. On an anchored
    grid: stepping at the first frame stride_s after the last step rounded each step up to a frame (every 0.549 s,
    not 0.48 s, at 20 fps). Ends that dropped frames passed are skipped."""

    def __init__(self, spec, stride_s: float, source_fps: float, t0: float):
        stride = max(1, int(round(stride_s * spec.fps)))
        self.hop_s = stride / spec.fps  # batch mode's events take this hop too (runner.recognize_clip)
        same = source_fps > 0 and abs(source_fps - spec.fps) <= 0.02 * spec.fps
        unit = 1.0 / (source_fps if same else spec.fps)
        # half a source frame early: that frame is the nearest (a tie is the earlier frame's, as in resample)
        early = (0.5 / source_fps if source_fps > 0 else 0.0) + 1e-6
        self.base, self.step, self.k = t0 + (spec.window_frames - 1) * unit - early, stride * unit, 0
        self.last: float | None = None  # the newest frame scored

    def due(self, t: float) -> bool:
        return t >= self.base + self.k * self.step

    def stepped(self, t: float) -> None:
        self.last, self.k = t, max(self.k, math.floor((t - self.base) / self.step) + 1)


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
