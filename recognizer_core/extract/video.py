"""Video decoding: probing, shard planning, and streamed frames (PyAV; OpenCV as a fallback).

Frames are yielded one at a time, never a whole video in memory. A frame's index is its position on the
video's own time line, round((t - start_time) * fps) made unique, so decoding a shard after a seek gives the same
indices (and the same frame_stride selection) as decoding the whole file from the start. Frames come upright: a phone's
portrait video is stored landscape with a display rotation, which is applied (sizes are the displayed ones).
A packet the decoder rejects as damaged is skipped and counted (`DecodeStats`), and decoding goes on: its frame is
a gap in the indices, not a shift, and not the end of the video.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

# a frame's image (upright, BGR, letterboxed) is made in frame_image.py
from recognizer_core.extract.frame_image import (frame_bgr, letterbox_frame, letterbox_params, pad_letterbox,
                                                 quarter_turns)
from recognizer_core.extract.sources import open_video_file


class VideoDecodeError(RuntimeError):
    """A video that cannot be opened or decoded; the message names the file."""


@dataclass
class DecodeStats:
    """What `iter_frames` skipped, filled in as it runs: read it once the frames are consumed."""
    skipped_packets: int = 0     # packets the decoder rejected as damaged data; their frames are missing
    first_skip: str = ""         # the first one: "frame N: InvalidDataError: ..." (N: the first frame missing)
    dropped_frames: int = 0      # decoded by time, frames left without an index (`_timestamp_slots`)


# FFmpeg's decoders answer damaged data with AVERROR_INVALIDDATA; bits damaged into a feature flag can also give
# AVERROR_PATCHWELCOME. Either costs that packet's frame, not the rest of the stream.
_DAMAGED_DATA_ERRORS = ("InvalidDataError", "PatchWelcomeError")
# Count mode: a skipped packet's frame is looked for in the timestamps of this many frames after the skip (the
# decoder reports the error before it would have output that frame, at most its reorder delay + threads earlier).
_GAP_SEARCH_FRAMES = 32


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    num_frames: int      # container's count or an estimate from the duration; 0 when unknown
    codec: str
    # False for AVI: its frames carry timestamps guessed from packet order, out of order with B-frames, so the
    # file is decoded in one shard, frames indexed by decode order (shards index by timestamp)
    seekable: bool = True


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    end: int | None      # None: decode to the end of the file (the last shard, whatever the estimate said)


def probe_video(uri: str) -> VideoInfo:
    import av

    try:
        with open_video_file(uri) as f, av.open(f) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{uri}: no video stream")
            stream = container.streams.video[0]
            fps = _stream_fps(stream)
            num = _declared_frames(container, stream, fps)
            width, height = stream.codec_context.width, stream.codec_context.height
            if not width or not height:
                raise VideoDecodeError(f"{uri}: video stream has no frame size")
            if _first_frame_quarter_turns(container, stream) % 2:
                width, height = height, width  # displayed upright: portrait
            seekable = "avi" not in container.format.name.split(",")
            return VideoInfo(int(width), int(height), fps, num, stream.codec_context.name, seekable)
    except VideoDecodeError:
        raise
    except Exception as err:  # av.error.* (InvalidDataError, ...), OSError from the filesystem
        raise VideoDecodeError(f"{uri}: cannot open video: {type(err).__name__}: {err}") from None


def _declared_frames(container, stream, fps: float) -> int:
    """The video stream's frame count, capped by its duration x fps: a lossless cut's count includes the pre-roll
    frames its edit list hides (450 counted, 250 shown). Matroska has the video's end time as a DURATION tag; the
    container's duration, the fallback, is the longest stream's (audio can run longer)."""
    seconds, tag = None, stream.metadata.get("DURATION", "").split(":")  # "HH:MM:SS.nnnnnnnnn"
    if stream.duration is not None and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif len(tag) == 3 and all(p.replace(".", "", 1).isdigit() for p in tag):
        start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        seconds = max(0.0, int(tag[0]) * 3600 + int(tag[1]) * 60 + float(tag[2]) - start)
    elif container.duration:
        seconds = container.duration / 1e6
    # less a hundredth of a frame: 10.000000001 s at 25 fps are 250 frames, not 251
    by_time = int(math.ceil(seconds * fps - 0.01)) if seconds and fps > 0 else 0
    frames = int(stream.frames or 0)
    return min(frames, by_time) if frames > 0 and by_time > 0 else frames or by_time


def _first_frame_quarter_turns(container, stream) -> int:
    """Counter-clockwise quarter turns of the display rotation; PyAV exposes it on decoded frames only."""
    try:
        return quarter_turns(next(_decode_skipping(container, stream, _Skips(0.0, False, 0, None, DecodeStats()))))
    except Exception:  # noqa: BLE001 - no frame, or undecodable: decoding reports it, naming the file
        return 0


def _stream_fps(stream) -> float:
    # guessed_rate (FFmpeg's r_frame_rate guess) is the nominal rate; average_rate is skewed by dropped
    # frames or a long last frame (mmaction2's demo mp4: 28.05 average, 30 real).
    rate = stream.guessed_rate or stream.average_rate or stream.base_rate
    return float(rate) if rate else 0.0


def plan_shards(num_frames: int, shard_frames: int) -> list[Shard]:
    """Frame ranges of at most `shard_frames`; the last is open-ended because counts are often estimates."""
    if num_frames <= shard_frames:
        return [Shard(0, 0, None)]
    starts = list(range(0, num_frames, shard_frames))
    if num_frames - starts[-1] < shard_frames // 4 and len(starts) > 1:
        starts.pop()  # fold a tiny tail into the previous shard
    return [Shard(i, s, starts[i + 1] if i + 1 < len(starts) else None) for i, s in enumerate(starts)]


def frame_stride_for(fps: float, frame_stride: int, target_fps: float) -> int:
    if target_fps > 0 and fps > 0:
        return max(1, int(round(fps / target_fps)))
    return frame_stride


def _iter_pyav(uri: str, start: int, end: int | None, stride: int, input_size: tuple[int, int] | None,
               by_time: bool, stats: DecodeStats) -> Iterator[tuple[int, np.ndarray]]:
    import av

    with open_video_file(uri) as f, av.open(f) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream)
        tb = float(stream.time_base) if stream.time_base else 0.0
        t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None and tb else 0.0
        skips = _Skips(tb * fps, _constant_rate_timestamps(container, stream, fps), start, end, stats)
        if start > 0:
            if fps <= 0 or tb <= 0:
                raise VideoDecodeError(f"{uri}: cannot seek to frame {start}: no frame rate / time base")
            frames = _seek_before(container, stream, start, fps, tb, t0, skips)
        else:
            frames = _decode_skipping(container, stream, skips)
        numbered = _numbered(uri, frames, by_time, fps, tb, t0, skips)
        last, upright_hw = -1, None
        for idx, frame in _timestamp_slots(numbered, start, end, stats) if by_time else numbered:
            if idx < start:
                continue  # frames before the seek target
            if end is not None and idx >= end:
                break
            last = idx
            if idx % stride:
                continue
            if input_size is None:
                yield idx, frame_bgr(frame)
                continue
            # every frame at the first one's geometry: the poses are mapped back with one ratio and size per video
            # (stages.py), so a stream whose frame size changes midway keeps its keypoints on the image
            padded, _, hw = letterbox_frame(frame, input_size, upright_hw)
            upright_hw = upright_hw or hw
            yield idx, padded
        else:
            skips.stream_ended(last + 1)
        if last < 0 and skips.rejected and start == 0 and end is None:
            # a whole file of which nothing decodes fails as before (OpenCV is tried); an empty shard does not
            raise VideoDecodeError(f"{uri}: no frame decodes: the decoder rejected {skips.rejected} packet(s) as "
                                   f"damaged ({skips.error})")


def _numbered(uri: str, frames, by_time: bool, fps: float, tb: float, t0: float, skips: "_Skips"):
    """(index, frame) per decoded frame: its count (a skipped packet's frame a gap) or round((t - t0) * fps)."""
    prev = (t0 - 1 / fps) / tb if tb * fps > 0 else None  # the timestamp a frame -1 would have
    count = -1
    for frame in frames:
        pts, gap = frame.pts, 0
        if skips.rejected != skips.seen or skips.owed:  # packets rejected: where did their frames go?
            here = count + 1 if not by_time or prev is None else int(round((prev * tb - t0) * fps)) + 1
            gap = skips.settle(pts, prev, here)
        prev = pts
        if not by_time:
            count += 1 + gap  # a lost frame is a gap: the frames after it keep their numbers
            yield count, frame
        elif pts is not None and fps > 0 and tb > 0:
            yield int(round((pts * tb - t0) * fps)), frame
        else:
            raise VideoDecodeError(f"{uri}: frames carry no timestamps; cannot decode it in shards")


def _timestamp_slots(numbered, start: int, end: int | None, stats: DecodeStats):
    """Unique numbers where jittered or variable-rate timestamps round two frames to one (1200 -> 1073 frames of
    an irregular mp4, silently). A frame sharing the next frame's number takes the one below if no kept frame
    has it; else (or where timestamps go back) it is dropped and counted (`stats.dropped_frames`) by the call
    whose [start, end) holds that number. Looking at the next frame only, a shard (first frame at or before its
    start) numbers as a whole-file decode; taking the number above would depend on frames before its seek point."""
    last, pending = -1, None
    for item in itertools.chain(numbered, [None]):
        if pending is not None:
            idx, frame = pending
            if item is not None and item[0] <= idx:
                idx -= 1  # shares its number with the next frame
            if idx > last:
                last = idx
                yield idx, frame
            elif max(idx, 0) >= start and (end is None or idx < end):
                stats.dropped_frames += 1
        pending = item


class _Skips:
    """The packets `_decode_skipping` skipped (`rejected`), settled frame by frame into `stats`. The decoder
    reports a damaged packet before it would have output its frame, so that frame is the next jump in the
    timestamps (`_place_gap`); the skip is counted by the call whose [start, end) holds that gap, which is how
    two shards that both decode the packets around their boundary count it once."""

    __slots__ = ("rate", "exact", "start", "end", "stats", "rejected", "error", "seen", "owed", "wait")

    def __init__(self, rate: float, exact: bool, start: int, end: int | None, stats: DecodeStats):
        self.rate, self.exact, self.start, self.end, self.stats = rate, exact, start, end, stats
        self.rejected, self.error = 0, ""  # by `_decode_skipping`: all it skipped, the latest one's error
        self.seen = self.owed = self.wait = 0

    def settle(self, pts, prev, here: int) -> int:
        """At a frame while skips are owed (`here`: the index a frame right after the previous one has) -> the
        frames lost just before this one."""
        if self.rejected != self.seen:
            self.owed, self.seen, self.wait = self.owed + self.rejected - self.seen, self.rejected, _GAP_SEARCH_FRAMES
        gap, owed, self.wait = _place_gap(self.owed, self.wait, pts, prev, self.rate, self.exact)
        if owed < self.owed:  # at the gap that starts at `here`; or no jump came: at this frame, `here` too
            self._count(self.owed - owed, here)
        self.owed = owed
        return gap

    def stream_ended(self, here: int) -> None:
        """Skips still owed at the stream's end are the last frames', so this call's if it decodes to the end (a
        shard that stopped at `end` leaves its owed ones to the next shard)."""
        if self.end is None:
            self._count(self.owed + self.rejected - self.seen, max(here, self.start))

    def _count(self, n: int, at: int) -> None:
        if n and at >= self.start and (self.end is None or at < self.end):
            self.stats.skipped_packets += n
            self.stats.first_skip = self.stats.first_skip or f"frame {at}: {self.error}"


def _decode_skipping(container, stream, skips: _Skips):
    """`container.decode(stream)` packet by packet, as PyAV runs it, except that a packet the decoder rejects as
    damaged is skipped (noted in `skips`) and decoding goes on with the next."""
    import av

    damaged = tuple(getattr(av.error, name) for name in _DAMAGED_DATA_ERRORS)
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except damaged as err:
            skips.rejected += 1
            skips.error = f"{type(err).__name__}: {err}"
            continue
        yield from frames


def _constant_rate_timestamps(container, stream, fps: float) -> bool:
    """Whether a jump in the frames' timestamps means missing frames: not in AVI (timestamps guessed from packet
    order, shuffled by B-frames), nor where the average rate is off the nominal one (variable frame rate: the
    mmaction2 demo's timestamps skip 5 frames where none is missing)."""
    if "avi" in container.format.name.split(","):
        return False
    average = float(stream.average_rate or 0)
    return average <= 0 or abs(average / fps - 1) < 0.01


def _place_gap(owed: int, wait: int, pts, prev, rate: float, exact: bool) -> tuple[int, int, int]:
    """Count mode, `owed` frames lost to skipped packets -> (gap before this frame, still owed, frames left to
    look). The decoder reports a damaged packet before it would output that frame, so the gap is the next jump
    in the timestamps: all of it at a constant frame rate (`exact`: a damaged reference can cost more frames
    than its packet, 36 frames for 2 packets in an HEVC test), else at most `owed`. Without timestamps it is
    here; with no jump within _GAP_SEARCH_FRAMES the decoder lost no frame (it showed a concealed one): no gap."""
    if pts is None or prev is None or rate <= 0:
        return owed, 0, 0
    lost = int(round((pts - prev) * rate)) - 1
    if lost > 0:
        gap = lost if exact else min(lost, owed)
        return gap, max(owed - gap, 0), wait
    wait -= 1
    return 0, owed if wait > 0 else 0, wait


_UNINDEXED_FORMATS = ("mpegts", "mpeg", "mpegvideo", "h264", "hevc")  # PyAV's names: no index to seek with


def _seek_before(container, stream, start: int, fps: float, tb: float, t0: float, skips: _Skips):
    """Decoded frames from at or before frame `start`. A seek lands on the keyframe before its target in indexed
    containers, but MPEG-TS / MPEG-PS have no index and often land after it (or, past their last keyframe, at
    the end): those frames would belong to no shard. Seek again further back (1 s, 2 s, 4 s ...) until the first
    frame is at or before `start`."""
    margin = 0.0
    while True:
        t = max(0.0, start / fps - margin)
        # the last try seeks a second before the stream's start: in a TS with B-frames the first frame's pts is
        # start_time + a frame or two, and a seek to start_time itself landed on the next keyframe
        target = t0 + t if t > 0 else t0 - 1.0
        container.seek(int(target / tb), stream=stream, backward=True, any_frame=False)
        skips.rejected = 0  # a try that seeks again decodes its packets again
        frames = _decode_skipping(container, stream, skips)
        first = next(frames, None)
        # an indexed container (mp4, mkv) seeks to the keyframe before its target: nothing decoded means the shard is
        # past the data (a truncated copy), and seeking further back would decode up to the cut for nothing
        if first is None and (t == 0.0 or container.format.name not in _UNINDEXED_FORMATS):
            return iter(())
        if first is not None and (t == 0.0 or first.pts is None or int(round((first.pts * tb - t0) * fps)) <= start):
            return itertools.chain([first], frames)
        margin = max(1.0, 2 * margin)


def _iter_opencv(uri: str, start: int, end: int | None, stride: int, input_size: tuple[int, int] | None,
                 by_time: bool, stats: DecodeStats) -> Iterator[tuple[int, np.ndarray]]:
    try:
        import cv2
    except ImportError:
        raise VideoDecodeError(f"{uri}: OpenCV fallback requested but opencv-python is not installed") from None
    if "://" in uri:
        raise VideoDecodeError(f"{uri}: the OpenCV fallback reads local files only")
    cap = cv2.VideoCapture(uri)
    if not cap.isOpened():
        raise VideoDecodeError(f"{uri}: OpenCV cannot open the video")
    try:
        if start:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        idx = start
        while end is None or idx < end:
            ok, image = cap.read()
            if not ok:
                break
            if idx % stride == 0:
                if input_size is not None:
                    ratio, nh, nw = letterbox_params(image.shape[0], image.shape[1], input_size)
                    image = pad_letterbox(cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR), input_size)
                yield idx, image
            idx += 1
    finally:
        cap.release()


def iter_frames(uri: str, start: int = 0, end: int | None = None, stride: int = 1,
                input_size: tuple[int, int] | None = None, backend: str = "pyav",
                by_time: bool | None = None, stats: DecodeStats | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame_index, BGR uint8 image) for frames start <= index < end with index % stride == 0.

    Frame indices count decoded frames, which is robust to broken timestamps (AVI). A video decoded in
    shards (`by_time=True`, the default when start > 0 or end is set) indexes frames by timestamp instead,
    round((t - start_time) * fps), so every shard agrees on indices and on the stride selection; for a
    constant-frame-rate file the two are equal (frames rounding to one number: `_timestamp_slots`, the frames it
    drops counted in `stats.dropped_frames`). All shards of one video must use the same mode.
    With `input_size` the image is RTMO's letterboxed model input (`letterbox_frame`);
    otherwise the original frame. A packet PyAV's decoder rejects as damaged is skipped and counted in
    `stats` (the frames after it keep their indices: its frame is a gap); decoding goes on to the end. PyAV
    errors before the first frame (or a whole file of damaged packets) fall back to OpenCV when it is
    installed; a demuxer error later ends the stream as a truncated file does (the frames so far are kept).
    """
    if by_time is None:
        by_time = start > 0 or end is not None
    if start > 0 and not by_time:
        raise ValueError("decoding from start > 0 needs by_time=True")
    stats = DecodeStats() if stats is None else stats
    decoders = [_iter_pyav, _iter_opencv] if backend == "pyav" else [_iter_opencv, _iter_pyav]
    errors = []
    for decode in decoders:
        produced = 0
        # the counts of the decoder whose frames are kept
        stats.skipped_packets, stats.first_skip, stats.dropped_frames = 0, "", 0
        try:
            for item in decode(uri, start, end, stride, input_size, by_time, stats):
                produced += 1
                yield item
            return
        except VideoDecodeError as err:
            if produced:
                raise
            errors.append(str(err))
        except Exception as err:  # av.error.* from the demuxer: the data ends early (truncated file)
            if produced:
                return  # truncated tail: keep what was decoded
            errors.append(f"{uri}: {type(err).__name__}: {err}")
    raise VideoDecodeError("; ".join(errors))
