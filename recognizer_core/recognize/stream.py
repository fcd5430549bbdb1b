"""Stream mode: a live source (RTSP / HTTP URL, a file, or a camera index) -> RTMO -> tracking -> windows ->
events printed as they close.

A reader thread decodes frames (PyAV) into a queue of `queue_frames`; when the recognizer falls behind, the
oldest queued frame is dropped and counted, so the recognizer always works on the newest frames and says how
many it skipped. Files and HTTP videos are paced to real time (`speed` x) like a live camera. Every
`stride_s` of stream time the frames of the last window are tracked (track/tracking.py over the buffer), cut
and scored exactly as in batch mode; latency = wall time from the arrival of a window's last frame to its
score. Events are closed online with the same hysteresis and minimum duration as batch mode; track ids persist
across the overlapping buffers (`StableTrackIds`). Ctrl-C stops cleanly: open events are closed and a summary
is printed.

The extraction-stage imports (extract/, track/) are the three listed in `_pose_pieces`.
"""
from __future__ import annotations

import collections
import json
import queue
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from recognizer_core.recognize.events import Event
from recognizer_core.recognize.runner import RecognizeConfig, make_windows_for, score_windows
from recognizer_core.skeleton.clip import SkeletonClip


def _pose_pieces():
    from recognizer_core.extract.rtmo import RtmoPoseEstimator
    from recognizer_core.track.tracking import track_poses
    from recognizer_core.extract.video import letterbox

    return RtmoPoseEstimator, track_poses, letterbox


class FrameReader(threading.Thread):
    """Decodes `source` into a bounded queue, dropping the oldest frame when the consumer is behind."""

    def __init__(self, source: str, queue_frames: int = 4, speed: float = 1.0):
        super().__init__(daemon=True)
        self.source, self.speed = source, speed
        self.frames: queue.Queue = queue.Queue(maxsize=queue_frames)
        self.stop_event = threading.Event()
        self.read = self.dropped = 0
        self.fps = 0.0
        self.error = ""
        self.finished = threading.Event()

    def _open(self):
        import av

        if self.source.isdigit():  # a camera index (Linux V4L2)
            return av.open(f"/dev/video{self.source}", format="v4l2")
        return av.open(self.source, options={"rw_timeout": "10000000"} if "://" in self.source else {})

    def run(self) -> None:
        try:
            with self._open() as container:
                stream = container.streams.video[0]
                self.fps = float(stream.average_rate or stream.guessed_rate or 25)
                live = self.source.isdigit() or self.source.startswith(("rtsp://", "rtmp://", "udp://"))
                t_start = time.perf_counter()
                for frame in container.decode(stream):
                    if self.stop_event.is_set():
                        break
                    t = float(frame.time) if frame.time is not None else self.read / self.fps
                    if not live and self.speed > 0:  # a file or HTTP video: arrive at (speed x) real time
                        time.sleep(max(0.0, t / self.speed - (time.perf_counter() - t_start)))
                    self._put((t, time.perf_counter(), frame.to_ndarray(format="bgr24")))
                    self.read += 1
        except Exception as err:  # noqa: BLE001 - reported by the consumer, never a silent thread death
            self.error = f"{self.source}: {type(err).__name__}: {err}"
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


@dataclass
class OnlineEvents:
    """Hysteresis + minimum duration over scores arriving one window at a time, per (sequence, class)."""

    spec: object
    video: str
    open: dict = field(default_factory=dict)  # (key, class) -> [start_s, end_s, peak, track ids]

    def feed(self, key: str, centre_s: float, hop_s: float, probs: np.ndarray, track_ids) -> list[Event]:
        closed = []
        for c in self.spec.event_classes:
            th, s = self.spec.threshold(c), float(probs[c])
            cur = self.open.get((key, c))
            if cur is None and s >= th.on:
                self.open[(key, c)] = [centre_s - hop_s / 2, centre_s + hop_s / 2, s, set(track_ids)]
            elif cur is not None and s >= th.off_value:
                cur[1], cur[2] = centre_s + hop_s / 2, max(cur[2], s)
                cur[3] |= set(track_ids)
            elif cur is not None:
                closed += self._close((key, c))
        return closed

    def _close(self, k) -> list[Event]:
        a, b, peak, ids = self.open.pop(k)
        c = k[1]
        if b - a < self.spec.threshold(c).min_duration_s:
            return []
        return [Event(self.video, self.spec.label_names[c], a, b, peak, sorted(ids), c)]

    def flush(self) -> list[Event]:
        return [e for k in list(self.open) for e in self._close(k)]


def _deliver(event: Event, event_file: str | None, post_url: str | None) -> None:
    line = json.dumps(event.to_dict())
    print(f"[event] {line}", flush=True)
    if event_file:
        with open(event_file, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    if post_url:
        import urllib.request

        req = urllib.request.Request(post_url, data=line.encode(), headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=5).close()
        except OSError as err:
            print(f"[stream] POST {post_url} failed: {err}", file=sys.stderr, flush=True)


def run_stream(rec, spec, cfg: RecognizeConfig, source: str, pose_cfg, *, tracking=None, event_file=None,
               post_url=None, max_seconds: float = 0, speed: float = 1.0, queue_frames: int = 4,
               verbose: bool = True) -> dict:
    """Run until the source ends, `max_seconds` pass or Ctrl-C; returns the summary."""
    from recognizer_core.extract.backends import build_backend
    from recognizer_core.track.config import TrackingConfig

    Estimator, track_poses, letterbox = _pose_pieces()
    tracking = tracking or TrackingConfig(min_track_len=3)
    estimator = Estimator(build_backend(pose_cfg), pose_cfg)
    reader = FrameReader(source, queue_frames, speed)
    reader.start()
    buf: collections.deque = collections.deque()  # (stream time, arrival, FramePoses, (H, W))
    events = OnlineEvents(spec, source)
    latencies, n_windows, processed, next_due, t0 = [], 0, 0, None, time.perf_counter()
    delivered: list[Event] = []
    stable = StableTrackIds()
    interrupted = False
    try:
        while not (reader.finished.is_set() and reader.frames.empty()):
            if max_seconds and time.perf_counter() - t0 > max_seconds:
                break
            try:
                t, arrival, image = reader.frames.get(timeout=0.2)
            except queue.Empty:
                continue
            padded, ratio = letterbox(image, pose_cfg.model_input_size)
            buf.append((t, arrival, estimator(padded[None], [ratio], [image.shape[:2]])[0], image.shape[:2]))
            processed += 1
            while buf and buf[-1][0] - buf[0][0] > spec.window_s:
                buf.popleft()
            next_due = t if next_due is None else next_due
            if t < next_due or buf[-1][0] - buf[0][0] < 0.9 * spec.window_s:
                continue
            next_due = t + cfg.stride_s
            clip = _buffer_clip(buf, track_poses, tracking, source, stable)
            if clip is None:
                continue
            wins = [w for w in make_windows_for(clip, spec, stride_s=1e9)]
            if not wins:
                continue
            probs = score_windows(rec, wins, cfg.batch_size)
            latencies.append(time.perf_counter() - buf[-1][1])
            n_windows += len(wins)
            for w, p in zip(wins, probs):
                for e in events.feed(w.key, t - spec.window_s / 2, cfg.stride_s, p, w.track_ids):
                    delivered.append(e)
                    _deliver(e, event_file, post_url)
            if verbose and (n_windows == len(wins) or n_windows % 20 < len(wins)):  # first, then every 20th
                print(f"[stream] t={t:6.1f}s frames {processed} read {reader.read} dropped {reader.dropped} "
                      f"windows {n_windows} latency {latencies[-1] * 1000:.0f} ms", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("[stream] Ctrl-C: stopping", flush=True)
    finally:
        reader.stop_event.set()
        for e in events.flush():
            delivered.append(e)
            _deliver(e, event_file, post_url)
        reader.join(timeout=5)
    lat = np.array(latencies) * 1000
    return {"source": source, "frames_read": reader.read, "frames_processed": processed,
            "frames_dropped": reader.dropped, "windows": n_windows, "events": len(delivered),
            "latency_ms_median": round(float(np.median(lat)), 1) if len(lat) else None,
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
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


def _buffer_clip(buf, track_poses, tracking, source: str, stable: StableTrackIds) -> SkeletonClip | None:
    times = np.array([b[0] for b in buf])
    tracked = track_poses(np.arange(len(buf)), [b[2] for b in buf], tracking)
    if tracked.num_persons == 0:
        return None
    track_ids = stable.assign(times, tracked.keypoint, tracked.keypoint_score)
    fps = (len(times) - 1) / max(times[-1] - times[0], 1e-6)
    h, w = buf[-1][3]
    return SkeletonClip(clip_id=source, label=0, keypoint=tracked.keypoint, keypoint_score=tracked.keypoint_score,
                        img_shape=(int(h), int(w)), total_frames=len(buf), source_video=source, fps=float(fps),
                        track_ids=track_ids, frame_inds=None, extra={"box_score": tracked.box_score})


def run_stream_cli(rec, spec, cfg: RecognizeConfig, args) -> int:
    from recognizer_core.extract.config import PoseModelConfig
    from recognizer_core.recognize.pose_models import PoseModelError, resolve_pose_model

    if not args.pose_model:
        print("error: --stream needs --pose-model (rtmo-s|rtmo-m|rtmo-l or an RTMO .onnx path)", file=sys.stderr)
        return 2
    try:
        onnx_path = resolve_pose_model(args.pose_model, args.pose_cache)
    except PoseModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pose = PoseModelConfig(onnx={"model_path": str(onnx_path)}, batch_size=1)
    summary = run_stream(rec, spec, cfg, args.stream, pose, event_file=args.event_file, post_url=args.post_url,
                         max_seconds=args.max_seconds)
    print(json.dumps(summary), flush=True)
    if summary["error"]:
        print(f"error: {summary['error']}", file=sys.stderr)
        return 1
    return 0
