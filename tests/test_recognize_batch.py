"""Batch mode on Ray Data: shared videos + a generated marker video + a bad video, fake RTMO model, resume."""
from __future__ import annotations

import csv
import json

import pytest

from conftest import shared_path
from fakes.fake_rtmo import build_fake_rtmo, write_marker_video
from fakes.job_videos import SIDE, linear_track
from tests.recognize_helpers import make_run_folder

pytestmark = pytest.mark.ray


def test_batch_mode_events_per_video_bad_video_recorded_and_resume(ray_local, tmp_path):
    from recognizer_core.extract.config import DecodeConfig, PoseModelConfig
    from recognizer_core.track.config import TrackingConfig
    from recognizer_core.recognize.batch import run_batch
    from recognizer_core.recognize.model import load_recognizer
    from recognizer_core.recognize.runner import RecognizeConfig, effective_spec

    videos = tmp_path / "videos"
    a = linear_track((60, 80), (140, 90), 100)
    b = linear_track((200, 150), (170, 140), 100, first=10)
    write_marker_video(videos / "Fight" / "two_people.mp4", [a, b], side=SIDE)
    (videos / "Fight" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(5000))
    for rel, src in {"Fight/fi001.mp4": ("fight", "fi001.mp4"), "NonFight/nofi001.mp4": ("nofight", "nofi001.mp4")}.items():
        (videos / rel).parent.mkdir(parents=True, exist_ok=True)
        (videos / rel).symlink_to(shared_path("data", "videos", *src))
    run, _ = make_run_folder(tmp_path)
    rec = load_recognizer(run)
    cfg = RecognizeConfig(thresholds={"Fight": 0.0}, min_duration_s=0.0)
    spec = effective_spec(rec.spec, cfg)
    pose = PoseModelConfig(onnx={"model_path": str(build_fake_rtmo(tmp_path / "rtmo.onnx")),
                                 "intra_op_num_threads": 1}, batch_size=8)
    kw = dict(inputs=str(videos), out=tmp_path / "out", model=str(run), model_config=None, spec=spec,
              cfg=cfg.model_copy(update={"overlay": True}),
              pose=pose, decode=DecodeConfig(shard_frames=60, frames_per_block=8),
              tracking=TrackingConfig(min_track_len=3), verbose=False)
    s = run_batch(**kw)
    assert s["videos"] == 4 and s["failed"] == 1 and s["done"] + s["empty"] == 3 and s["frames"] > 100
    assert s["failures"][0]["rel_path"] == "Fight/broken.mp4" and s["failures"][0]["reason"]
    out = tmp_path / "out"
    # the marker video: two tracks, 4 s at 25 fps -> sliding windows, each over the top-2 tracks
    rows = list(csv.DictReader((out / "Fight__two_people.mp4.windows.csv").open()))  # named by its path
    # (which ids: the fake model's partial-cell detections near a marker make short extra tracks, and which of its
    # equal-score boxes NMS keeps decides whether one of them takes a person over; the pair must stay the same)
    pair = set(rows[1]["track_ids"].split()) if len(rows) >= 2 else set()
    assert len(pair) == 2 and all(set(r["track_ids"].split()) == pair for r in rows[1:]), rows
    events = [json.loads(x) for x in (out / "Fight__two_people.mp4.events.jsonl").read_text().splitlines()]
    in_windows = sorted({int(t) for r in rows for t in r["track_ids"].split()})
    assert len(events) == 1 and events[0]["label"] == "Fight" and events[0]["track_ids"] == in_windows
    assert (out / "Fight__two_people.mp4.timeline.png").is_file()
    assert (out / "Fight__two_people.mp4.overlay.mp4").stat().st_size > 1000  # skeletons + label per window, PyAV
    done = [json.loads(x) for x in (out / "done.jsonl").read_text().splitlines()]
    assert {d["rel_path"] for d in done} <= {"Fight/two_people.mp4", "Fight/fi001.mp4", "NonFight/nofi001.mp4"}
    again = run_batch(**kw)  # resumable: nothing is redone, the bad video stays recorded
    assert again["processed"] == 0 and again["skipped"] == 4 and again["failed"] == 0
    # ... and the evaluation still sees every video: done ones' events read back, empty ones as none
    assert set(again["events"]) == set(s["events"]) == {"Fight/two_people.mp4", "Fight/fi001.mp4",
                                                          "NonFight/nofi001.mp4"}
    assert [e.to_dict() for e in again["events"]["Fight/two_people.mp4"]] == events
