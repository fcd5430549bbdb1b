"""Bad input to recognize / export_model, each with the one message it must give (no Ray started):
skeleton files with NaN keypoints, truncated Parquet or wrong list lengths fail alone (`failed: <file>: ...`,
the others still scored), an out-of-range threshold or calibration precision, a non-RTMO --pose-model, a
missing --input and an --output that is a file."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.store_rows import clips_to_table
from tests.recognize_helpers import make_run_folder

NAMES = ["NonFight", "Fight"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run_folder(tmp_path_factory.mktemp("model"))[0]


def _clip(name: str, T: int = 60) -> SkeletonClip:
    rng = np.random.default_rng(len(name))
    return SkeletonClip(clip_id=name, label=1, keypoint=rng.uniform(10, 300, (2, T, 17, 2)).astype(np.float32),
                        keypoint_score=rng.uniform(0.2, 1, (2, T, 17)).astype(np.float32), img_shape=(320, 320),
                        total_frames=T, fps=30.0, source_video=f"/videos/{name}.mp4")


def _write(clip: SkeletonClip, path, edit=None):
    """A one-clip file as extract_poses.py writes it, unvalidated (write_clip_file would refuse a NaN)."""
    table = clips_to_table([clip], NAMES)
    pq.write_table(edit(table) if edit else table, path)
    return path


def _short_keypoints(table: pa.Table) -> pa.Table:
    kp = table.column("keypoint").to_pylist()
    kp[0] = kp[0][:-7]
    return table.set_column(table.schema.get_field_index("keypoint"), "keypoint", pa.array(kp, pa.list_(pa.float32())))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _recognize(args, capsys):
    from rayjobs.recognize import main

    rc = main([*args, "--set", "timeline=false"])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return rc, (json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None), err


def _failed_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("[recognize] failed: ")]


def test_a_nan_keypoint_fails_its_file_with_one_line_and_the_others_are_scored(run, tmp_path, capsys):
    """Before: no message, rc 0 and windows.csv rows of NaN scores for the NaN clip."""
    clips = tmp_path / "poses" / "clips"
    clips.mkdir(parents=True)
    _write(_clip("good"), clips / "good.parquet")
    bad = _clip("nan")
    bad.keypoint[0, 3, 5, 1] = np.nan
    nan_file = _write(bad, clips / "nan.parquet")
    rc, summary, err = _recognize(["--model", str(run), "--input", str(tmp_path / "poses"), "--output",
                                   str(tmp_path / "out")], capsys)
    assert rc == 0, err
    assert _failed_lines(err) == [f"[recognize] failed: {nan_file}: clip 'nan': keypoint has NaN/inf values (first "
                                  "at index (0, 3, 5, 1)); use nan_policy='zero' to zero those joints"]
    assert summary["videos"] == 1 and summary["failed"] == 1
    assert summary["failures"] == [{"rel_path": str(nan_file), "reason": _failed_lines(err)[0].split(": ", 2)[2]}]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.windows.csv")) == ["good.mp4.windows.csv"]
    # nan_policy=zero (training's data.nan_policy) zeroes the joint and scores the clip
    rc, summary, err = _recognize(["--model", str(run), "--input", str(tmp_path / "poses"), "--output",
                                   str(tmp_path / "out_zero"), "--set", "nan_policy=zero"], capsys)
    assert rc == 0 and summary["videos"] == 2 and summary["failed"] == 0 and not _failed_lines(err)
    scores = (tmp_path / "out_zero" / "nan.mp4.windows.csv").read_text()
    assert "nan" not in scores.lower().replace("nan.mp4", "")


def test_a_clip_whose_outputs_cannot_be_written_fails_alone(run, tmp_path, capsys):
    """An OSError writing one clip's outputs (full disk, a name taken by a folder) ended a skeleton run."""
    clips = tmp_path / "poses" / "clips"
    clips.mkdir(parents=True)
    _write(_clip("good"), clips / "good.parquet")
    _write(_clip("blocked"), clips / "blocked.parquet")
    (tmp_path / "out" / "blocked.mp4.events.jsonl").mkdir(parents=True)   # a folder where the file goes
    rc, summary, err = _recognize(["--model", str(run), "--input", str(tmp_path / "poses"), "--output",
                                   str(tmp_path / "out")], capsys)
    assert rc == 0 and summary["videos"] == 1 and summary["failed"] == 1, err
    assert [f["rel_path"] for f in summary["failures"]] == [str(clips / "blocked.parquet")]
    assert "writing outputs failed" in summary["failures"][0]["reason"]
    assert (tmp_path / "out" / "good.mp4.windows.csv").is_file()


def test_truncated_and_short_list_files_fail_alone_and_nothing_scored_is_rc_1(run, tmp_path, capsys):
    """Before: an uncaught traceback at the first bad file and no output for any video."""
    clips = tmp_path / "poses" / "clips"
    clips.mkdir(parents=True)
    trunc = _truncate(_write(_clip("a_trunc"), clips / "a_trunc.parquet"))
    short = _write(_clip("b_short"), clips / "b_short.parquet", _short_keypoints)
    _write(_clip("c_good"), clips / "c_good.parquet")
    rc, summary, err = _recognize(["--model", str(run), "--input", str(tmp_path / "poses"), "--output",
                                   str(tmp_path / "out")], capsys)
    assert rc == 0 and "Traceback" not in err, err
    lines = _failed_lines(err)
    assert len(lines) == 2 and lines[0].startswith(f"[recognize] failed: {trunc}: not a skeleton Parquet file (")
    assert lines[1] == (f"[recognize] failed: {short}: row 0: clip 'b_short': keypoint has 4073 values, expected "
                        "num_person x num_frames x num_joints x 2 = 2 x 60 x 17 x 2 = 4080")
    assert summary["videos"] == 1 and summary["failed"] == 2 and [f["rel_path"] for f in summary["failures"]] == \
        [str(trunc), str(short)]
    assert (tmp_path / "out" / "c_good.mp4.events.jsonl").is_file()
    # nothing could be scored: the same lines, and rc 1
    (clips / "c_good.parquet").unlink()
    rc, summary, err = _recognize(["--model", str(run), "--input", str(tmp_path / "poses"), "--output",
                                   str(tmp_path / "out2")], capsys)
    assert rc == 1 and summary["videos"] == 0 and summary["failed"] == 2 and len(_failed_lines(err)) == 2


def test_a_truncated_part_file_of_a_skeleton_dataset_fails_alone(run, tmp_path, capsys):
    from recognizer_core.skeleton.store import SkeletonDataset, write_dataset

    data = write_dataset([_clip(f"v{i}") for i in range(4)], tmp_path / "ds", NAMES, rows_per_file=2)
    files = SkeletonDataset(data).files
    _truncate(tmp_path / "ds" / files[0].rsplit("/", 1)[-1])
    rc, summary, err = _recognize(["--model", str(run), "--input", str(data), "--output", str(tmp_path / "out")],
                                  capsys)
    assert rc == 0 and "Traceback" not in err, err
    assert [line.split(": ", 2)[1] for line in _failed_lines(err)] == [files[0]]
    assert summary["videos"] == 2 and summary["failed"] == 1


def test_a_threshold_outside_0_1_names_the_field_before_the_model_loads(tmp_path, capsys):
    """Before: a raw pydantic block "1 validation error for ClassThreshold / on / ..." after the model loaded."""
    rc, _, err = _recognize(["--model", str(tmp_path / "no_model"), "--input", str(tmp_path), "--set",
                             "thresholds.Fight=1.7"], capsys)
    assert rc == 2 and "ClassThreshold" not in err and "pydantic" not in err
    assert "  thresholds.Fight: Input should be less than or equal to 1 (got 1.7)" in err.splitlines()


def test_a_missing_input_is_named_not_taken_for_video(run, tmp_path, capsys):
    """Before: "video input needs --pose-model" for a path that does not exist."""
    rc, _, err = _recognize(["--model", str(run), "--input", str(tmp_path / "nope"), "--output",
                             str(tmp_path / "out")], capsys)
    assert rc == 2 and err.strip().splitlines() == [f"error: --input {tmp_path / 'nope'}: no such file or folder"]


def test_an_output_that_is_a_file_is_one_line_and_left_alone(run, tmp_path, capsys):
    """Before: a FileExistsError traceback at the first write."""
    (tmp_path / "taken").write_text("keep")
    rc, _, err = _recognize(["--model", str(run), "--input", str(tmp_path), "--output", str(tmp_path / "taken")],
                            capsys)
    assert rc == 2 and err.strip().splitlines() == [f"error: --output {tmp_path / 'taken'}: exists and is not a "
                                                    "folder"]
    assert (tmp_path / "taken").read_text() == "keep"


def test_the_action_model_as_pose_model_is_refused_before_ray(run, tmp_path, capsys, monkeypatch):
    """Before: Ray started and every pose actor failed with a traceback (x4), rc 1."""
    import recognizer_core.ray_runtime as ray_runtime
    from rayjobs.export_model import export
    from recognizer_core.extract.backends import check_model_file
    from recognizer_core.extract.config import PoseModelConfig
    from tests.fakes.fake_rtmo import build_fake_rtmo, write_marker_video

    def no_ray(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray_runtime, "start_ray", no_ray)
    stgcn = tmp_path / "fight.onnx"
    export(str(run), str(stgcn))
    write_marker_video(tmp_path / "videos" / "a.mp4", [np.full((5, 2), 100.0)])
    rc, _, err = _recognize(["--model", str(stgcn), "--input", str(tmp_path / "videos"), "--pose-model", str(stgcn),
                             "--output", str(tmp_path / "out")], capsys)
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"error: --pose-model {stgcn}: RTMO model needs one (N, 3, H, W) input, got "
                                        "[('skeletons', ['batch', 2, 24, 17, 6])]"]
    check_model_file(PoseModelConfig(onnx={"model_path": str(build_fake_rtmo(tmp_path / "rtmo.onnx"))}))  # passes


@pytest.mark.parametrize("value", ["90", "1.5", "0", "-1", "nan"])
def test_export_calibrate_precision_outside_0_1_is_refused(run, tmp_path, capsys, value):
    """Before: 90 or 1.5 wrote threshold 1.0 (never fires), 0 or -1 wrote 0.0 (fires always), rc 0."""
    from rayjobs.export_model import main

    rc = main([str(run), "--out", str(tmp_path / "m.onnx"), "--calibrate-precision", value])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [
        f"error: --calibrate-precision must be a precision in (0, 1] (0.9 = 90 %), got {float(value):g}"]
    assert list(tmp_path.iterdir()) == []
