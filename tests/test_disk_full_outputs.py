"""A full output disk is the machine, not a bad video: extraction and recognize's batch mode stop with one line naming
the output and the cause (exit 2), record nothing for the video being written and leave none of its outputs, and
the same command run again with space does the rest; build_dataset's line names its output folder.

The output folder is a real small tmpfs (mounted in a private mount namespace: `unshare -m`, as root), with a filler
file leaving room for about one video; each stage's two runs share one private Ray in one process."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fakes.fake_rtmo import build_fake_rtmo, write_marker_video
from fakes.job_videos import SIDE, linear_track

REPO = Path(__file__).resolve().parents[1]
PAGE_KIB = 4

needs_tmpfs = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                 reason="mounts a small tmpfs in a private mount namespace: root and unshare")

# Run in the namespace: mount the tmpfs, leave `room` KiB, run the job's main() (stderr as it prints it), free the
# space, run main() again; one JSON line per run on stdout's last line.
RUNNER = textwrap.dedent("""
    import contextlib, io, json, os, runpy, subprocess, sys
    disk, room, job, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    os.makedirs(disk, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", disk], check=True)
    avail = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize // 1024
    with open(os.path.join(disk, "filler"), "wb") as f:
        f.write(bytes((avail - room) * 1024))
    main = runpy.run_path(job)["main"]
    runs = []
    for n in range(2):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(argv)
        out = os.path.join(disk, "out")
        files = {name: open(os.path.join(out, name), encoding="utf-8").read() if name.endswith((".json", ".jsonl"))
                 else os.path.getsize(os.path.join(out, name)) for name in sorted(os.listdir(out))
                 if os.path.isfile(os.path.join(out, name))}
        runs.append({"rc": rc, "stderr": err.getvalue(), "files": files})
        if n == 0:
            os.remove(os.path.join(disk, "filler"))
    print(json.dumps(runs))
""")


def _run_on_small_disk(tmp_path: Path, room_kib: int, job: str, argv: list[str]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(["unshare", "-m", sys.executable, "-c", RUNNER, str(tmp_path / "disk"), str(room_kib),
                           str(REPO / "rayjobs" / job), json.dumps(argv)],
                          capture_output=True, text=True, timeout=400, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _videos(root: Path, n: int = 3) -> Path:
    """n videos of one person on the same path (clips and outputs of one size)."""
    for i in range(n):
        write_marker_video(root / ("Fight" if i % 2 else "NonFight") / f"v{i}.mp4",
                           [linear_track((40, 60), (120, 80), 40)], side=SIDE)
    return root


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@needs_tmpfs
@pytest.mark.ray
def test_extraction_stops_on_a_full_disk_and_a_plain_rerun_does_the_rest(tmp_path):
    """Was: every video after the disk filled decoded, inferred and recorded FAILED ('OSError: [Errno 28] No space
    left on device', no file named), exit 0; the re-run skipped them all ('processed': 0), exit 0."""
    videos, model = _videos(tmp_path / "videos"), build_fake_rtmo(tmp_path / "fake_rtmo.onnx")
    out = tmp_path / "disk" / "out"
    argv = ["--input", str(videos), "--output", str(out), "--onnx", str(model), "--quiet",
            "--set", "ray.num_cpus_per_actor=0.5", "--set", "ray.num_cpus_per_decode_task=0.5",
            "--set", "model.batch_size=4", "--set", "decode.frames_per_block=4", "--set", "ray.max_videos_in_flight=1"]
    # room for the run's start (listing, labels, config: a page each), one clip (a few pages) and its record, not
    # a second clip
    first, again = _run_on_small_disk(tmp_path, 10 * PAGE_KIB, "extract_poses.py", argv)
    assert first["rc"] == 2, first["stderr"]
    line = next(x for x in first["stderr"].splitlines() if x.startswith("error: "))
    assert str(out) in line and "No space left on device" in line and "run the same command again" in line, line
    assert "failed:" not in first["stderr"] and "failures.jsonl" not in first["files"]   # no video blamed
    assert again["rc"] == 0, again["stderr"]
    summary = json.loads(again["files"]["summary.json"])
    done_before = {r["rel_path"] for r in _records(first["files"].get("done.jsonl", ""))}
    done = {r["rel_path"] for r in _records(again["files"]["done.jsonl"])}
    assert done == {"NonFight/v0.mp4", "Fight/v1.mp4", "NonFight/v2.mp4"} and summary["failed"] == 0
    assert summary["skipped_failed"] == 0 and summary["skipped_done"] == len(done_before) < 3
    assert summary["processed"] == summary["done"] == 3 - len(done_before)


@needs_tmpfs
@pytest.mark.ray
def test_recognize_batch_stops_on_a_full_disk_and_a_plain_rerun_does_the_rest(tmp_path):
    """Was: a manifest append on the full disk ended the driver in a raw traceback, a failed output write recorded
    the video FAILED (a re-run skipped it; recognize has no retry) and left its 0-byte events.jsonl, which reads as
    a real 'no events' result."""
    from tests.recognize_helpers import make_run_folder

    videos, model = _videos(tmp_path / "videos"), build_fake_rtmo(tmp_path / "fake_rtmo.onnx")
    run, _ = make_run_folder(tmp_path)
    out = tmp_path / "disk" / "out"
    argv = ["--model", str(run), "--input", str(videos), "--pose-model", str(model), "--output", str(out),
            "--set", "timeline=false"]
    # room for one video's outputs (a page each) and its record, not a second video's
    first, again = _run_on_small_disk(tmp_path, 5 * PAGE_KIB, "recognize.py", argv)
    assert first["rc"] == 2, first["stderr"]
    line = next(x for x in first["stderr"].splitlines() if x.startswith("error: "))
    assert str(out) in line and "No space left on device" in line and "run the same command again" in line, line
    assert "Traceback" not in first["stderr"] and "failed:" not in first["stderr"]
    assert "failures.jsonl" not in first["files"]
    done_before = {r["output"].removesuffix(".events.jsonl")
                   for r in _records(first["files"].get("done.jsonl", ""))}
    stems = {name.split(".mp4.")[0] + ".mp4" for name in first["files"] if ".mp4." in name}
    assert stems == done_before and len(done_before) < 3   # no outputs of a video without a record
    assert again["rc"] == 0, again["stderr"]
    summary = json.loads(again["files"]["summary.json"])
    assert summary["done"] + summary["empty"] == summary["processed"] == 3 - len(done_before)
    assert summary["failed"] == 0 and summary["skipped"] == len(done_before) and not summary["failures"]


@needs_tmpfs
def test_recognize_on_skeleton_input_stops_on_a_full_disk_and_a_plain_rerun_does_it(tmp_path):
    """Was: each clip after the disk filled was printed `failed: <skeleton file>: writing outputs failed: [Errno 28]`
    (the input blamed, the output not named), its 0-byte events.jsonl left (a real 'no events' to read), and the run
    exited 0 since one clip had a result."""
    from recognizer_core.extract.clip_files import write_clip_file
    from recognizer_core.skeleton.demo_data import make_demo_clips
    from tests.recognize_helpers import make_run_folder

    run, _ = make_run_folder(tmp_path)
    skeletons = tmp_path / "skeletons"
    skeletons.mkdir()
    for i, clip in enumerate(make_demo_clips("fight", 3, seed=1)):   # extract_poses.py's one-clip files
        clip.source_video = f"/videos/v{i}.mp4"
        write_clip_file(clip, str(skeletons / f"v{i}.parquet"))
    out = tmp_path / "disk" / "out"
    argv = ["--model", str(run), "--input", str(skeletons), "--output", str(out), "--set", "timeline=false"]
    # room for one clip's three outputs (a page each) and a temp file, not a second clip's
    first, again = _run_on_small_disk(tmp_path, 5 * PAGE_KIB, "recognize.py", argv)
    assert first["rc"] == 2, first["stderr"]
    line = next(x for x in first["stderr"].splitlines() if x.startswith("error: "))
    assert str(out) in line and "No space left on device" in line and "run the same command again" in line, line
    assert "failed:" not in first["stderr"] and "Traceback" not in first["stderr"]
    outputs: dict[str, list[str]] = {}
    for name in first["files"]:
        outputs.setdefault(name.split(".mp4.")[0], []).append(name.split(".mp4.")[1])
    assert 0 < len(outputs) < 3, first["files"]   # the clips before the full disk kept, none of the rest
    assert all(sorted(kinds) == ["events.csv", "events.jsonl", "windows.csv"] for kinds in outputs.values()), outputs
    assert again["rc"] == 0, again["stderr"]
    assert sorted(again["files"]) == sorted(f"v{i}.mp4.{kind}" for i in range(3)
                                            for kind in ("events.csv", "events.jsonl", "windows.csv")), again["files"]
