"""Delivering stream mode's events (events.OnlineEvents makes them): printed, appended to --event-file and
POSTed to --post-url by a sender thread, so that a slow or restarting endpoint never holds up scoring; and the
URL helpers that keep a camera's or a webhook's password out of events, summaries and logs.
"""
from __future__ import annotations

import collections
import json
import os
import stat
import sys
import threading
import time

from recognizer_core.recognize.events import Event

class EventOutputError(ValueError):
    """--event-file / --post-url unusable: reported before the stream starts."""


def redact_url(url: str) -> str:
    """`url` without the password of its user info (rtsp://admin:pw@cam/1 -> rtsp://admin:***@cam/1): IP cameras
    and webhooks take credentials in the URL, and events, summaries and log lines must not carry them."""
    import urllib.parse

    if "://" not in url or "@" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{name}:***@{host}" if ":" in user else f"***@{host}"))


def _without_userinfo(url: str) -> tuple[str, dict[str, str]]:
    """(url without user info, the Authorization header it stood for): urllib takes `user:pw@host` as the host."""
    import base64
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    user, _, host = parts.netloc.rpartition("@")
    user = user if ":" in user else user + ":"   # RFC 7617: user-id ":" password (a bare token as curl sends it)
    token = base64.b64encode(urllib.parse.unquote(user).encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), {"Authorization": f"Basic {token}"}


def check_post_url(url: str) -> None:
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as err:
        raise EventOutputError(f"--post-url {redact_url(url)!r}: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise EventOutputError(f"--post-url {redact_url(url)!r}: not an http:// or https:// URL with a host")


class PostSender(threading.Thread):
    """POSTs event lines from a bounded queue: each one tried up to 1 + `retries` times, 1 s, 2 s, 4 s ... apart
    (an endpoint that restarts); when the queue is full the oldest unsent event is dropped and counted (the
    newest are the ones still worth an alert). Any exception of a POST counts as a failed try."""

    def __init__(self, url: str, max_queue: int = 100, retries: int = 3, timeout_s: float = 5.0,
                 backoff_s: float = 1.0):
        super().__init__(daemon=True)
        # user:password@ in the URL becomes Basic auth (urllib would take it as part of the host name); log lines
        # name the URL without the password
        (self._target, self._auth), self.url = _without_userinfo(url), redact_url(url)
        self.max_queue, self.retries = max_queue, retries
        self.timeout_s, self.backoff_s = timeout_s, backoff_s
        self.pending: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.posted = self.failed = self.dropped = 0
        self.closing, self.deadline = False, float("inf")

    def put(self, line: str) -> None:
        with self.cond:
            if len(self.pending) >= self.max_queue:
                self.pending.popleft()
                self.dropped += 1
                if self.dropped == 1:
                    print(f"[stream] POST {self.url} is behind: {self.max_queue} events waiting; dropping the oldest "
                          "unsent ones (counted in the summary)", file=sys.stderr, flush=True)
            self.pending.append(line)
            self.cond.notify()

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.closing:
                    self.cond.wait()
                if not self.pending or time.monotonic() > self.deadline:
                    return
                line = self.pending.popleft()
            self._post(line)

    def _post(self, line: str) -> None:
        import urllib.error
        import urllib.request

        err: BaseException | None = None
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(self._target, data=line.encode(),
                                             headers={"Content-Type": "application/json", **self._auth})
                urllib.request.urlopen(req, timeout=self.timeout_s).close()
                self.posted += 1
                return
            except Exception as e:  # noqa: BLE001 - a bad answer (BadStatusLine), a refused or slow endpoint
                err = e
            if isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500 and err.code not in (408, 429):
                break  # the endpoint refuses this event: the same request again gets the same answer
            wait = self.backoff_s * 2 ** attempt
            if attempt == self.retries or time.monotonic() + wait > self.deadline:
                break
            time.sleep(wait)
        self.failed += 1
        print(f"[stream] POST {self.url} failed after {attempt + 1} tr{'y' if attempt == 0 else 'ies'}: "
              f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)

    def close(self, drain_s: float) -> None:
        """Posts what is pending for up to `drain_s`, then counts the rest as dropped."""
        with self.cond:
            self.closing, self.deadline = True, time.monotonic() + drain_s
            self.cond.notify_all()
        self.join(timeout=drain_s + 0.5)
        with self.cond:
            left = len(self.pending)
            self.pending.clear()
            self.dropped += left
        if left or self.is_alive():
            print(f"[stream] POST {self.url}: stopped waiting after {drain_s:g} s; {left} event(s) not posted"
                  + (", one POST still in flight" if self.is_alive() else ""), file=sys.stderr, flush=True)


def _cut(fd: int, size: int) -> bool:
    try:
        os.ftruncate(fd, size)
        return True
    except OSError:
        return False


class EventSink:
    """Stream mode's events, each printed (`[event] {...}`) and appended to `event_file` at once, then handed to
    the POST sender. The file is opened here, before the stream starts: a folder that does not exist is one error
    line at start, not a crash at the first event hours later."""

    def __init__(self, event_file: str | None = None, post_url: str | None = None, **sender_kw):
        if post_url:
            check_post_url(post_url)
        try:
            # unbuffered: a line whose write failed (a full disk) stays in no buffer, which close() would write
            # again, raising out of the stream's cleanup (a traceback, no summary, exit 1)
            self.file = open(event_file, "ab", buffering=0) if event_file else None  # noqa: SIM115 - held open
        except OSError as err:
            raise EventOutputError(f"--event-file {event_file}: {err.strerror or err}") from None
        self.sender = PostSender(post_url, **sender_kw) if post_url else None
        if self.sender:
            self.sender.start()
        self.events = self.write_failed = 0
        self.torn = False  # a failed line's start stayed in the file (not a regular file): end it before the next

    def emit(self, event: Event) -> None:
        line = json.dumps(event.to_dict())
        print(f"[event] {line}", flush=True)
        self.events += 1
        if self.file:
            try:
                self._write_line(line)
            except Exception as err:  # noqa: BLE001 - a full disk must not end a detector: counted, said once each
                self.write_failed += 1
                print(f"[stream] writing {self.file.name} failed: {err}", file=sys.stderr, flush=True)
        if self.sender:
            self.sender.put(line)

    def _write_line(self, line: str) -> None:
        """Appends the line whole (one write where the OS takes it all) or, on a regular file, not at all: a write
        that took part of it (a full disk, a file size limit) is cut off again, else the next event was appended to
        the fragment and that line was lost to JSON readers too."""
        fd = self.file.fileno()
        st = os.fstat(fd)
        start = st.st_size if stat.S_ISREG(st.st_mode) else None
        data = memoryview((("\n" if self.torn else "") + line + "\n").encode())
        written = 0
        try:
            while written < len(data):  # a raw write may take part of the line
                n = self.file.write(data[written:])
                if not n:  # never on a regular file; a loop that writes nothing must not spin
                    raise OSError(f"wrote 0 of {len(data) - written} bytes")
                written += n
        except BaseException:
            # cut only our own fragment: another writer's line appended meanwhile (a shared file) stays
            if written and not (start is not None and os.fstat(fd).st_size == start + written and _cut(fd, start)):
                self.torn = True
            raise
        self.torn = False

    def close(self, drain_s: float = 5.0) -> dict:
        if self.sender:
            self.sender.close(drain_s)
        if self.file:
            try:
                self.file.close()
            except OSError as err:  # NFS reports a failed write at close: lines may be missing; the summary goes on
                self.write_failed += 1
                print(f"[stream] closing {self.file.name} failed: {err}", file=sys.stderr, flush=True)
        s = self.sender
        return {"events": self.events, "posted": s.posted if s else 0, "post_failed": s.failed if s else 0,
                "post_dropped": s.dropped if s else 0, "event_write_failed": self.write_failed}
