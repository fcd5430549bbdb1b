"""The stream mode's reader: a thread that decodes a live source (RTSP / HTTP URL, a file, or a camera index) with
PyAV into a bounded queue, reopening a lost live source and keeping stream time monotonic (FrameReader)."""
from __future__ import annotations

import queue
import threading
import time

from recognizer_core.recognize.event_delivery import redact_url

# Schemes whose sources are live by nature; an HTTP source is live when FFmpeg finds no duration (MJPEG, MPEG-TS).
LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "udp://", "srt://", "tcp://")
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0  # reopening a lost live source: the first wait, doubling up to this
# A live source's clock that drifts this far from wall time (a file's that jumps this far ahead) is re-anchored:
# well above a camera's start-up burst (FFmpeg's probe buffers seconds, then decodes them at once) and a stall
# that the 10 s read timeout allows; a smaller jump ahead is a gap in time, as when frames are lost.
CLOCK_SLIP_S = 10.0
# Live formats whose timestamps are FFmpeg's frame count at a guessed rate, not the camera's (MJPEG over HTTP)
NO_CLOCK_FORMATS = {"mpjpeg", "mjpeg", "jpeg_pipe", "image2", "image2pipe"}
# A file format whose timestamps are guessed from packet (decode) order: with B-frames they run out of order by up
# to 3 frames (1, 2, 4, 3, ... 12, 9 in mmaction2's NTU AVI), so its frames are counted at the nominal rate, as
# extraction counts them (docs/extraction.md) and batch mode times them.
COUNTED_FORMATS = {"avi"}
# A step back of less than this many frame intervals is a reordered timestamp (B-frames in a stream whose muxer
# guessed them), taken as the next frame; a larger one is a clock that went back (a reset: a new session).
REORDER_FRAMES = 2.0
ENDED = "the stream ended"


class FrameReader(threading.Thread):
    """Decodes `source` into a bounded queue, dropping the oldest frame when the consumer is behind.

    A live source (a camera, an RTSP / RTMP / UDP URL, or an HTTP stream with no duration) that fails or ends after
    it gave frames is reopened, waiting 0.5 s, 1 s, 2 s ... 10 s between tries, until `reconnect_s` pass without a
    frame (0: never reopen): a camera that reboots or a network that drops for a minute must not end a detector
    that runs for weeks. A source that gives no frame at all is reported at once (a wrong URL or device).

    Stream time only increases. A live source without a clock of its own (MJPEG over HTTP: FFmpeg numbers its
    frames 1/25 s apart whatever the camera sends) is timed by arrival; a file in a COUNTED_FORMATS container
    (AVI) by its frame count at its nominal rate. A step back (or none) of under REORDER_FRAMES frame intervals
    is a reordered timestamp: the frame comes one interval after the last. A clock that goes back further (MPEG-TS
    wraps every 26.5 h; an encoder restarts), jumps ahead, or in a live source drifts more than CLOCK_SLIP_S from wall
    time is re-anchored, as is a reopening: the next frame comes after the last one by the wall time between them
    (a file: by one frame), and starts a new session. Every frame carries its session number and why that session
    began, so the consumer starts its window anew; and the session's frame rate where it is known (a file or an
    HTTP video with a duration: its average rate), else 0 (a live camera's declared rate is often not what it
    sends; a source timed by arrival has none).
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
                rate = float(stream.average_rate or 0)
                self.live = self.live or ("://" in self.source and container.duration is None)
                by_arrival = self.live and (container.format.name in NO_CLOCK_FORMATS or stream.time_base is None)
                counted = not self.live and bool(COUNTED_FORMATS & set(container.format.name.split(",")))
                if counted:  # extraction's rate (video._stream_fps): the nominal one, which batch mode times by
                    self.fps = float(stream.guessed_rate or stream.average_rate or 25)
                    rate = self.fps
                rate = rate if rate > 0 and not self.live else 0.0
                shift = raw_last = lag0 = why = None
                t_start, t_first = time.perf_counter(), 0.0
                for count, frame in enumerate(container.decode(stream)):
                    if self.stop_event.is_set():
                        return "stopped"
                    now = time.perf_counter()
                    first = raw_last is None  # the first frame of this opening
                    if first:  # a live source whose first frame has no time has no clock: one choice per opening
                        by_arrival = by_arrival or (self.live and frame.time is None)
                        self.clock = "arrival" if by_arrival else "stream"
                    if by_arrival:
                        raw = now
                    elif counted:
                        raw = count / self.fps
                    elif frame.time is not None:
                        raw = float(frame.time)
                    else:  # a frame without a time in a source with a clock: one frame after the last
                        raw = 0.0 if first else raw_last + 1.0 / self.fps
                    if not (first or by_arrival) and -REORDER_FRAMES / self.fps < raw - raw_last <= 0:
                        raw = raw_last + 1.0 / self.fps  # reordered (or repeated): the next frame, not a reset
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
                    self._put((t, time.perf_counter(), frame, self.session, why, rate))  # letterboxed as batch does
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
