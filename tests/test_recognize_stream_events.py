"""Stream mode's event delivery: the event file, POSTs on a sender thread (retries, a bounded queue), a stop
signal during delivery, and bounded bookkeeping over a long run. Split from test_recognize_stream.py."""
from __future__ import annotations

import http.server
import json
import threading
import time

import numpy as np
import pytest

from tests.test_recognize_stream import _gap_video, _run, setup  # noqa: F401  (setup: the module's fixture)


class Endpoint(http.server.BaseHTTPRequestHandler):
    """An alert endpoint whose answers the test sets: `answers` (popped per request: 'garbage' answers a line
    that is not HTTP, 'hold' waits for `release`), then 200. Records every body."""
    state: dict = {}

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        st = self.state
        st["bodies"].append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        st.setdefault("auth", []).append(self.headers.get("Authorization"))
        answer = st["answers"].pop(0) if st["answers"] else "ok"
        if answer == "garbage":
            self.wfile.write(b"garbage\r\n")
            return
        if answer == "hold":
            st["release"].wait(30)
        self.send_response(200)
        self.end_headers()


@pytest.fixture()
def endpoint():
    Endpoint.state = {"bodies": [], "answers": [], "release": threading.Event()}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/event", Endpoint.state
    Endpoint.state["release"].set()
    server.shutdown()


def test_stream_survives_an_endpoint_that_answers_garbage_and_retries_the_post(setup, endpoint, tmp_path):
    """A BadStatusLine (an HTTPException, not an OSError) from the first POST ended the run at the first event;
    a failed POST was never tried again."""
    url, state = endpoint
    state["answers"] = ["garbage"]
    events = tmp_path / "events.jsonl"
    s = _run(setup, speed=0, queue_frames=400, event_file=str(events), post_url=url)
    assert s["error"] == "" and s["events"] == 1 and len(events.read_text().splitlines()) == 1
    assert len(state["bodies"]) == 2 and state["bodies"][1]["label"] == "Fight"  # tried again, 1 s later
    assert (s["posted"], s["post_failed"], s["post_dropped"]) == (1, 0, 0), s


def test_a_slow_post_endpoint_does_not_hold_up_scoring(setup, endpoint, tmp_path, monkeypatch):
    """The endpoint holds the first event's POST: scoring goes on meanwhile (it waited up to the 5 s timeout per
    event, inside the scoring loop, so a fight could pass unscored)."""
    from recognizer_core.recognize import stream

    url, state = endpoint
    state["answers"] = ["hold"]
    steps, score = [], stream.score_windows
    monkeypatch.setattr(stream, "score_windows", lambda *a, **k: (steps.append(time.perf_counter()), score(*a, **k))[1])
    events = tmp_path / "events.jsonl"
    s = _run(setup, speed=0, source=str(_gap_video(tmp_path / "gap.mp4")), queue_frames=400,
             event_file=str(events), post_url=url, cfg_kw={"merge_gap_s": 0})
    state["release"].set()
    assert s["error"] == "" and s["events"] == 2 and len(events.read_text().splitlines()) == 2
    assert len(state["bodies"]) >= 1 and len(steps) >= 10
    assert max(np.diff(steps)) < 4.0, np.diff(steps)  # no step waited on the held POST


def test_a_full_post_queue_drops_the_oldest_event_and_counts_it(endpoint):
    from recognizer_core.recognize.event_delivery import PostSender

    url, state = endpoint
    state["answers"] = ["hold"]
    sender = PostSender(url, max_queue=2, backoff_s=0.01)
    sender.start()
    sender.put('{"n": 0}')  # taken by the sender, held by the endpoint
    deadline = time.time() + 10
    while not state["bodies"] and time.time() < deadline:
        time.sleep(0.02)
    for n in range(1, 5):
        sender.put(json.dumps({"n": n}))
    state["release"].set()
    sender.close(drain_s=10)
    assert [b["n"] for b in state["bodies"]] == [0, 3, 4]  # 1 and 2 dropped, the newest kept
    assert (sender.posted, sender.failed, sender.dropped) == (3, 0, 2)


def test_a_stop_signal_during_delivery_loses_no_event_closed_in_the_same_step(setup, tmp_path, monkeypatch):
    """SIGTERM arrives while the first of the events closed in one step is delivered (it was during its POST):
    the others of that step were lost. Two tracks leave at once here, so one step closes two events."""
    import builtins

    from recognizer_core.recognize import stream

    real_print, first, same_step, made = builtins.print, [], [], []

    class Recorded(stream.OnlineEvents):  # the stream's event state, to read what its step closed
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            made.append(self)

    def print_then_stop(*args, **kw):
        real_print(*args, **kw)
        if not first and args and str(args[0]).startswith("[event] "):
            first.append(json.loads(str(args[0])[len("[event] "):]))
            same_step.extend(e.to_dict() for e in made[0].ready)  # this event first, then its step's others
            raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(stream, "OnlineEvents", Recorded)
    monkeypatch.setattr(builtins, "print", print_then_stop)
    events = tmp_path / "events.jsonl"
    s = _run(setup, speed=0, source=str(_gap_video(tmp_path / "gap.mp4")), queue_frames=400,
             event_file=str(events), cfg_kw={"window_mode": "track", "merge_gap_s": 0})
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert s["interrupted"] and first and first[0] in lines, (first, lines)
    # its step's other event too (found by the stream's queue: events of one step may end at different times,
    # since an event is cut to the span its windows share)
    assert len(same_step) >= 2 and same_step[0] == first[0] and all(e in lines for e in same_step), (same_step, lines)
    assert len(lines) == len({json.dumps(e) for e in lines}) == s["events"]  # each once


def test_stream_cli_checks_the_event_file_and_post_url_before_it_starts(setup, tmp_path, capsys):
    """A folder that does not exist failed at the first event (hours in); a URL without http:// at the first
    POST. Both are one error line before the stream starts."""
    from rayjobs.recognize import main

    base = ["--model", str(setup["run"]), "--stream", setup["url"], "--pose-model", str(setup["rtmo"]),
            "--max-seconds", "3", "--set", "thresholds.Fight=0.0", "--set", "min_duration_s=0"]
    missing = tmp_path / "no_such_dir" / "events.jsonl"
    assert main([*base, "--event-file", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --event-file {missing}: No such file or directory"], err
    assert main([*base, "--post-url", "alerts:8080/event"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --post-url 'alerts:8080/event': not an http:// or https:// URL with a host"], err


def test_stream_latency_is_kept_for_a_bounded_number_of_steps(setup, monkeypatch):
    from recognizer_core.recognize import stream

    monkeypatch.setattr(stream, "LATENCY_STEPS", 3)
    s = _run(setup, speed=0, queue_frames=400)
    assert s["windows"] > 3 and s["latency_steps"] == 3 and s["latency_ms_median"] > 0, s


def test_camera_and_webhook_passwords_stay_out_of_events_posts_and_logs(setup, endpoint, tmp_path, capsys):
    """rtsp://admin:pw@cam/1 (how IP cameras authenticate) went into every event's `video`, the POST body, the
    event file and the summary; a --post-url with user:token@ failed every POST (urllib took it as the host name)
    and printed the token."""
    import base64

    from recognizer_core.recognize.event_delivery import redact_url

    assert redact_url("rtsp://admin:S3cret@10.0.0.7:554/s1") == "rtsp://admin:***@10.0.0.7:554/s1"
    assert redact_url("rtsp://token@cam/1") == "rtsp://***@cam/1" and redact_url("/videos/a@b.mp4") == "/videos/a@b.mp4"
    url, state = endpoint
    hook = url.replace("http://", "http://alerts:hunter2@")
    source = setup["url"].replace("http://", "http://admin:S3cret@")   # FFmpeg sends it as Basic auth
    events = tmp_path / "events.jsonl"
    # queue_frames 400: at speed 0 the reader outruns the recognizer, and a short queue can drop every frame
    s = _run(setup, speed=0, source=source, event_file=str(events), post_url=hook, queue_frames=400)
    assert s["error"] == "" and s["events"] >= 1 and s["posted"] == s["events"]
    printed = capsys.readouterr()
    for text in (json.dumps(s), events.read_text(), json.dumps(state["bodies"]), printed.out, printed.err):
        assert "S3cret" not in text and "hunter2" not in text
    assert state["bodies"][0]["video"] == setup["url"].replace("http://", "http://admin:***@")
    assert state["auth"][0] == "Basic " + base64.b64encode(b"alerts:hunter2").decode()


def test_a_source_that_fails_to_open_reports_it_without_the_password(setup):
    """PyAV quotes the URL it opened, password included: the error (summary, stderr) carried it."""
    import base64

    from recognizer_core.recognize.event_delivery import _without_userinfo

    s = _run(setup, speed=0, source="rtsp://admin:s3cret@127.0.0.1:1/stream1")
    assert s["error"].startswith("rtsp://admin:***@127.0.0.1:1/stream1: ") and "s3cret" not in json.dumps(s), s
    # a bare token as the user part is sent as curl does, `token:` (RFC 7617 wants the colon)
    assert _without_userinfo("https://tok123@hooks.example/x") == (
        "https://hooks.example/x", {"Authorization": "Basic " + base64.b64encode(b"tok123:").decode()})
