"""Evaluation: temporal-IoU matching and video-level metrics on known events, and the recognize job on a
labelled demo set (skeleton Parquet per video + a labels CSV with intervals)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recognizer_core.recognize.evaluation import evaluate, match_events, read_labels, temporal_iou
from recognizer_core.recognize.events import Event
from tests.recognize_helpers import make_run_folder

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["NonFight", "Fight"]


def test_temporal_iou_matching_is_one_to_one_and_per_class():
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(1 / 3)
    pred = [{"label": "Fight", "start_s": 0, "end_s": 10}, {"label": "Fight", "start_s": 1, "end_s": 9},
            {"label": "Fight", "start_s": 30, "end_s": 40}, {"label": "Fall", "start_s": 50, "end_s": 60}]
    true = [{"label": "Fight", "start_s": 0, "end_s": 9}, {"label": "Fight", "start_s": 50, "end_s": 60}]
    assert match_events(pred, true, 0.5) == (1, 3, 1)  # the duplicate and the wrong class do not match


def test_video_and_event_level_report(tmp_path):
    ev = lambda v, a, b, p: Event(v, "Fight", a, b, p, [1], 1)  # noqa: E731
    events = {"/x/a.mp4": [ev("/x/a.mp4", 2, 8, 0.9)], "/x/b.mp4": [], "/x/c.mp4": [ev("/x/c.mp4", 0, 3, 0.7)],
              "/x/d.mp4": []}
    csv = tmp_path / "labels.csv"
    csv.write_text("video,label,start_s,end_s\na.mp4,Fight,1,8\nb.mp4,Fight,4,6\nc.mp4,NonFight,,\n"
                   "d.mp4,NonFight,,\n")
    labels, intervals = read_labels(csv, NAMES)
    assert labels == {"a": "Fight", "b": "Fight", "c": "NonFight", "d": "NonFight"}
    r = evaluate(events, labels, intervals, NAMES, 0)
    assert r["accuracy"] == 0.5 and r["confusion_matrix"] == [[1, 1], [1, 1]]
    assert r["precision"]["Fight"] == 0.5 and r["recall"]["Fight"] == 0.5
    assert r["events"]["per_class"]["Fight"] == {"tp": 1, "fp": 1, "fn": 1, "precision": 0.5, "recall": 0.5}
    # a Fight video without times is scored at the video level only: its event is not a false one
    events["/y/e.mp4"] = [ev("/y/e.mp4", 3, 9, 0.8)]
    r = evaluate(events, {**labels, "e": "Fight"}, intervals, NAMES, 0)
    assert r["videos"] == 5 and r["events_unscored"] == ["e"]
    assert r["events"]["per_class"]["Fight"] == {"tp": 1, "fp": 1, "fn": 1, "precision": 0.5, "recall": 0.5}
    bad = tmp_path / "bad.csv"
    bad.write_text("video,label\na.mp4,Fall\n")
    with pytest.raises(ValueError, match="bad.csv:2: label 'Fall' is not one of the model's"):
        read_labels(bad, NAMES)


def test_recognize_job_evaluates_a_labelled_demo_set(tmp_path):
    from recognizer_core.extract.clip_files import write_clip_file
    from recognizer_core.skeleton.demo_sequence import make_demo_sequence

    run, _ = make_run_folder(tmp_path)
    rows = ["video,label,start_s,end_s"]
    scripts = {"fights": (("fight", 0, 3), ("fight", 1, 5), ("fight", 0, 3)),
               "calm": (("fight", 0, 6), ("falldown", 0, 4)), "brawl": (("fight", 1, 6),)}
    for i, (name, script) in enumerate(scripts.items()):
        clip, truth = make_demo_sequence(script, seed=i)
        clip.source_video = f"/videos/{name}.mp4"
        write_clip_file(clip, tmp_path / "poses" / "clips" / f"{name}.parquet")
        rows += [f"{name}.mp4,{t['label']},{t['start_s']},{t['end_s']}" for t in truth] or [f"{name}.mp4,NonFight,,"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "rayjobs/recognize.py"), "--model", str(run), "--input",
                           str(tmp_path / "poses"), "--labels", str(tmp_path / "labels.csv"), "--output", str(out),
                           "--set", "thresholds.Fight=0.003"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    report = json.loads((out / "evaluation.json").read_text())
    assert (out / "confusion_matrix.png").stat().st_size > 1000 and summary["videos"] == 3
    # the report agrees with the per-video event files it was computed from
    preds = {}
    for name in scripts:
        events = [json.loads(line) for line in (out / f"{name}.mp4.events.jsonl").read_text().splitlines()]
        assert (out / f"{name}.mp4.timeline.png").is_file() and (out / f"{name}.mp4.events.csv").is_file()
        preds[name] = max(events, key=lambda e: e["peak_score"])["label"] if events else "NonFight"
    truth = {"fights": "Fight", "calm": "NonFight", "brawl": "Fight"}
    assert report["accuracy"] == pytest.approx(np.mean([preds[n] == truth[n] for n in truth]))
    assert report["videos"] == 3 and "events" in report and report["events"]["tiou"] == 0.5


def test_videos_with_one_file_name_in_two_folders_are_scored_apart(tmp_path):
    """Fight/cam1_0001.mp4 and NonFight/cam1_0001.mp4: matched by file-name stem they were one video (3 scored of
    4, one counted wrong although every prediction was right)."""
    from recognizer_core.recognize.evaluation import match_videos

    root = tmp_path / "videos"
    rel = ["Fight/cam1_0001.mp4", "NonFight/cam1_0001.mp4", "Fight/cam2_0007.mp4", "NonFight/cam3_0002.mp4"]
    for p in rel:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"")
    labels, intervals = read_labels(root, NAMES)
    assert labels == {"Fight/cam1_0001": "Fight", "NonFight/cam1_0001": "NonFight", "Fight/cam2_0007": "Fight",
                      "NonFight/cam3_0002": "NonFight"} and intervals == {}
    ev = lambda v: [Event(v, "Fight", 1.0, 3.0, 0.9, [], 1)]  # noqa: E731
    for name in (lambda p: p, lambda p: str(root / p)):      # batch mode's relative paths, or full paths
        events = {name(p): ev(name(p)) if p.startswith("Fight") else [] for p in rel}
        r = evaluate(events, labels, intervals, NAMES, 0)
        assert r["videos"] == 4 and r["accuracy"] == 1.0 and r["confusion_matrix"] == [[2, 0], [0, 2]]
        assert r["unlabelled"] == [] and r["missing"] == []
    # a CSV naming videos by file name alone: fine where the name is unique, an error where it is not
    assert match_videos(["/nvr/cam2/a.mp4", "/nvr/cam1/b.mp4"], ["a", "cam1/b"]) == {"/nvr/cam2/a.mp4": "a",
                                                                                      "/nvr/cam1/b.mp4": "cam1/b"}
    csv = tmp_path / "labels.csv"
    csv.write_text("video,label\ncam1_0001.mp4,Fight\ncam2_0007.mp4,Fight\n")
    labels, intervals = read_labels(csv, NAMES)
    with pytest.raises(ValueError, match=r"'cam1_0001' fits several videos \('Fight/cam1_0001.mp4', "
                                         r"'NonFight/cam1_0001.mp4'\); name the videos by their path"):
        evaluate({p: [] for p in rel}, labels, intervals, NAMES, 0)
    with pytest.raises(ValueError, match=r"video '/x/a.mp4' fits several labelled names \['a', 'x/a'\]"):
        match_videos(["/x/a.mp4"], ["a", "x/a"])


def test_a_videos_label_is_its_first_non_background_row_whatever_the_class_order(tmp_path):
    """Classes in extraction's sorted order (Fight, NonFight): the background is NonFight, not class 0."""
    csv = tmp_path / "labels.csv"
    csv.write_text("video,label,start_s,end_s\na.mp4,NonFight,,\na.mp4,Fight,2,4\nb.mp4,NonFight,,\n")
    labels, _ = read_labels(csv, ["Fight", "NonFight"], background=1)
    assert labels == {"a": "Fight", "b": "NonFight"}
