"""Exit codes and the last words of recognize and export_model when the environment fails (a full disk, an
unwritable folder, SIGTERM) or the input is bad before work starts: one line and the documented code
(docs/recognize.md, Exit codes), never a traceback or a half-written file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.recognize_helpers import make_run_folder
from tests.test_recognize_stream import setup  # noqa: F401  (setup: a served video, a run folder, a fake RTMO)

ROOT = Path(__file__).resolve().parents[1]
FULL = Path("/dev/full")   # every write fails with ENOSPC: a full disk
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="no /dev/full here")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tests.fakes.fake_rtmo import build_fake_rtmo

    root = tmp_path_factory.mktemp("exit_model")
    run, _ = make_run_folder(root)
    return {"run": run, "dataset": root / "dataset", "rtmo": build_fake_rtmo(root / "rtmo.onnx")}


def _script(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh Python (signals reach only it), from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


# 1. a full disk under --event-file


@needs_dev_full
def test_an_event_file_on_a_full_disk_is_counted_and_close_does_not_raise(capsys):
    """Before: the failed line stayed in the file's buffer and close() wrote it again, raising ENOSPC."""
    from recognizer_core.recognize.event_delivery import EventSink
    from recognizer_core.recognize.events import Event

    sink = EventSink(str(FULL))
    sink.emit(Event("cam", "Fight", 1.0, 4.0, 0.9, [0], 1))
    delivered = sink.close(0.1)
    assert delivered["events"] == 1 and delivered["event_write_failed"] == 1, delivered
    err = capsys.readouterr().err.splitlines()
    assert err == ["[stream] writing /dev/full failed: [Errno 28] No space left on device"], err


@needs_dev_full
def test_a_stream_with_its_event_file_on_a_full_disk_ends_with_its_summary(setup, capsys):  # noqa: F811
    """Before: at the end, a 30-line ENOSPC traceback from the stream's cleanup, no summary, exit 1."""
    from rayjobs.recognize import main

    rc = main(["--model", str(setup["run"]), "--stream", setup["url"], "--pose-model", str(setup["rtmo"]),
               "--set", "thresholds.Fight=0.0", "--set", "min_duration_s=0",   # one event, closed at the end
               "--event-file", str(FULL)])   # the 6 s video, at real time, to its end
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and "Traceback" not in err, err
    assert summary["events"] >= 1 and summary["event_write_failed"] == summary["events"], summary


_PARTIAL_WRITE = """
import json, os, resource, signal, sys
from recognizer_core.recognize.event_delivery import EventSink
from recognizer_core.recognize.events import Event
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
path = sys.argv[1]
sink = EventSink(path)
ev = lambda i: Event(f"rtsp://cam/{i}", "Fight", float(i), i + 2.0, 0.9, [1], 1)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
sink.emit(ev(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) + 40, hard))  # the disk fills mid-line
sink.emit(ev(2))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again (a log rotated)
sink.emit(ev(3))
print("SUMMARY", json.dumps(sink.close()))
"""


def test_event_file_write_cut_short_leaves_no_fragment(tmp_path):
    """A write that took part of a line (RLIMIT_FSIZE: write() takes what fits, then EFBIG, as ENOSPC on a full
    disk) left its fragment, and the next event was appended to it: that line was unreadable too. Run in a child
    process (stdout a pipe, which the size limit does not reach): the limit holds for every file it writes."""
    path = tmp_path / "events.jsonl"
    out = subprocess.run([sys.executable, "-c", _PARTIAL_WRITE, str(path)], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.split("SUMMARY ", 1)[1])
    assert summary["events"] == 3 and summary["event_write_failed"] == 1
    assert [json.loads(line)["video"] for line in path.read_text().splitlines()] == ["rtsp://cam/1", "rtsp://cam/3"]
    assert "File too large" in out.stderr


def test_event_file_fragment_that_cannot_be_cut_ends_before_the_next_event(tmp_path):
    """A pipe or FIFO cannot be truncated: the fragment is ended with a newline, so the next event is its own line;
    the events after it are plain lines again (no blank line before each)."""
    from recognizer_core.recognize.event_delivery import EventSink
    from recognizer_core.recognize.events import Event

    r, w = os.pipe()

    class Raw:  # a raw file whose second write takes 10 bytes and then fails, as a full device does
        name, calls = "pipe", 0

        def fileno(self):
            return w

        def write(self, data):
            self.calls += 1
            if self.calls == 2:
                return os.write(w, bytes(data[:10]))
            if self.calls == 3:
                raise OSError(28, "No space left on device")
            return os.write(w, bytes(data))

        def close(self):
            os.close(w)

    sink = EventSink(None)
    sink.file = Raw()
    for i in range(1, 5):
        sink.emit(Event(f"cam{i}", "Fight", float(i), i + 2.0, 0.9, [1], 1))
    assert sink.close()["event_write_failed"] == 1
    with os.fdopen(r, "rb") as f:
        lines = f.read().decode().split("\n")
    assert [json.loads(x)["video"] for x in (lines[0], *lines[2:4])] == ["cam1", "cam3", "cam4"]
    assert lines[1] == '{"video": ' and lines[4:] == [""]


def test_a_line_another_writer_appended_during_a_failed_write_is_not_cut(tmp_path):
    """A shared event file: our write takes 10 bytes, another process appends its whole line, then ours fails (a
    full disk). Cutting the file back to where our write began would delete the other writer's line: it stays."""
    from recognizer_core.recognize.event_delivery import EventSink
    from recognizer_core.recognize.events import Event

    path = tmp_path / "events.jsonl"
    sink = EventSink(str(path))
    real = sink.file

    class Raw:  # the real file, whose second write takes 10 bytes, lets the other writer in, then fails
        name, calls = str(path), 0

        def fileno(self):
            return real.fileno()

        def write(self, data):
            self.calls += 1
            if self.calls == 2:
                n = real.write(bytes(data[:10]))
                with open(path, "ab") as other:
                    other.write(b'{"video": "other-process"}\n')
                return n
            if self.calls == 3:
                raise OSError(28, "No space left on device")
            return real.write(bytes(data))

        def close(self):
            real.close()

    sink.file = Raw()
    for i in (1, 2):
        sink.emit(Event(f"cam{i}", "Fight", float(i), i + 2.0, 0.9, [1], 1))
    assert sink.close()["event_write_failed"] == 1
    assert '{"video": "other-process"}\n' in path.read_text()


def test_an_event_file_whose_close_fails_is_counted(tmp_path, capsys):
    """NFS reports a write it lost at close(): lines may be missing, so the summary counts it as a failed write
    (and says so in one line) instead of reporting every event written."""
    from recognizer_core.recognize.event_delivery import EventSink
    from recognizer_core.recognize.events import Event

    path = tmp_path / "events.jsonl"
    sink = EventSink(str(path))
    real = sink.file

    class NfsFile:
        name = str(path)

        def fileno(self):
            return real.fileno()

        def write(self, data):
            return real.write(data)

        def close(self):
            real.close()
            raise OSError(5, "Input/output error")

    sink.file = NfsFile()
    sink.emit(Event("cam", "Fight", 1.0, 4.0, 0.9, [0], 1))
    delivered = sink.close(0.1)
    assert delivered["events"] == 1 and delivered["event_write_failed"] == 1, delivered
    assert capsys.readouterr().err.splitlines() == [f"[stream] closing {path} failed: [Errno 5] Input/output error"]


# 2. a batch re-run in which every video had failed before


def _batch(model, tmp_path, monkeypatch, capsys, done: bool) -> tuple[int, dict]:
    """A re-run over two videos whose first run recorded both failed (or, with `done`, the first finished with
    no event): nothing is left to do, so Ray is never used (start_ray stubbed)."""
    import recognizer_core.ray_runtime as ray_runtime
    from rayjobs.recognize import main
    from recognizer_core.extract.manifest import DONE, FAILED, ExtractionManifest
    from recognizer_core.recognize.batch import list_inputs, output_stems

    monkeypatch.setattr(ray_runtime, "start_ray", lambda *a, **k: None)
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    out.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (videos / name).write_bytes(b"not a video")
    manifest = ExtractionManifest(str(out))
    listed = list_inputs(str(videos))
    stems = output_stems(manifest, listed)[0]
    for i, v in enumerate(listed):
        ids = {"uri": v.uri, "rel_path": v.rel_path, "video_id": v.video_id}
        if done and i == 0:
            (out / f"{stems[v.rel_path]}.events.jsonl").write_text("")
            manifest.record(DONE, v.key, **ids, output=f"{stems[v.rel_path]}.events.jsonl", events=0, windows=3)
        else:
            manifest.record(FAILED, v.key, **ids, reason="InvalidDataError: corrupt")
    capsys.readouterr()
    rc = main(["--model", str(model["run"]), "--input", str(videos), "--pose-model", str(model["rtmo"]),
               "--output", str(out), "--set", "timeline=false"])
    return rc, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_batch_rerun_in_which_every_video_had_failed_still_exits_1(model, tmp_path, monkeypatch, capsys):
    """Before: `failed` counts this run's failures; the re-run skipped both videos, so 0 and exit 0."""
    rc, summary = _batch(model, tmp_path, monkeypatch, capsys, done=False)
    assert summary["skipped"] == 2 and summary["failed"] == 0 and len(summary["failures"]) == 2, summary
    assert rc == 1


def test_a_batch_rerun_with_an_earlier_result_exits_0(model, tmp_path, monkeypatch, capsys):
    rc, summary = _batch(model, tmp_path, monkeypatch, capsys, done=True)
    assert summary["skipped"] == 2 and len(summary["failures"]) == 1 and rc == 0, summary


# 4. video mode's errors before work starts: 2, as every job


@pytest.mark.parametrize("pose", [False, True])
def test_video_mode_errors_before_work_exit_2(model, tmp_path, capsys, pose):
    """Before: "video input needs --pose-model" and "no videos found" exited 1, the code of failed work."""
    from rayjobs.recognize import main

    (tmp_path / "empty").mkdir()
    args = ["--model", str(model["run"]), "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]
    rc = main(args + (["--pose-model", str(model["rtmo"])] if pose else []))
    err = capsys.readouterr().err.strip().splitlines()
    want = f"error: {tmp_path / 'empty'}: no videos found" if pose else \
        "error: video input needs --pose-model (rtmo-s|rtmo-m|rtmo-l or an RTMO .onnx path)"
    assert rc == 2 and err == [want], (rc, err)


def test_sigterm_in_skeleton_mode_stops_with_one_line_and_130(model, tmp_path):
    """Before: SIGTERM killed the run without a word (-15, the shell's 143); now it stops as Ctrl-C does (the
    process ends itself with SIGINT after the line: the shell's 130)."""
    proc = _script(f"""
import os, signal, time
import recognizer_core.recognize.runner as runner
def stop(*a, **k):   # the signal arrives while the first clip is scored
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
runner.recognize_clip = stop
from rayjobs.recognize import main
main(["--model", {str(model["run"])!r}, "--input", {str(model["dataset"])!r}, "--output", {str(tmp_path / "o")!r}])
""", tmp_path)
    assert proc.returncode == -signal.SIGINT, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("stopped (SIGTERM)")


# 3. export_model: an unwritable --out, SIGTERM


@needs_dev_full
def test_export_to_an_unwritable_out_is_one_error_line_and_exit_2(model, capsys):
    """Before: the cleanup's own unlink raised NotADirectoryError (a traceback hiding the real error); an
    unwritable folder gave a 29-line PermissionError traceback."""
    from rayjobs.export_model import main

    rc = main([str(model["run"]), "--out", str(FULL / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == f"error: --out {FULL / 'm.onnx'}: {FULL} is not a folder", err
    assert "Traceback" not in "\n".join(err) and sum(line.startswith("error:") for line in err) == 1


def test_sigterm_during_export_leaves_no_temporary_file(model, tmp_path):
    """Before: no stop handler, so SIGTERM killed the export and .m.<pid>.partial.onnx stayed beside --out."""
    out = tmp_path / "exp" / "m.onnx"
    out.parent.mkdir()
    proc = _script(f"""
import os, signal, sys, time
import recognizer_core.export.onnx as onnx
def stop(*a, **k):   # after the .onnx is written under its temporary name
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
onnx.check_onnx_parity = stop
from rayjobs.export_model import main
sys.exit(main([{str(model["run"])!r}, "--out", {str(out)!r}]))
""", tmp_path)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-3000:])
    assert proc.stderr.strip().splitlines()[-1] == "stopped (SIGTERM); the export's temporary files were removed"
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("case", ["no_data", "empty_split"])
def test_export_calibration_without_data_exits_1_and_with_an_empty_split_exits_2(tmp_path, capsys, case):
    """docs/recognize.md, Export: training data not found is a failed step (1); found, but with no clips in its
    validation split, calibrate_thresholds raises ValueError, bad input (2). The docs said 1 for both."""
    import shutil

    from rayjobs.export_model import main

    run, _ = make_run_folder(tmp_path / "m", num_clips=8)
    if case == "no_data":
        shutil.rmtree(tmp_path / "m" / "dataset")
    else:   # the run names a validation split the dataset does not have
        text = (run / "config.yaml").read_text()
        assert "val_split: val\n" in text
        (run / "config.yaml").write_text(text.replace("val_split: val\n", "val_split: holdout\n"))
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    try:
        rc = main([str(run), "--out", str(out), "--calibrate-precision", "0.9"])
    except SystemExit as stop:   # what the process prints and exits with: SystemExit("error: ...") is 1
        print(stop.code, file=sys.stderr)
        rc = 1
    err = capsys.readouterr().err.strip().splitlines()
    if case == "no_data":
        assert rc == 1 and err[-1].startswith("error: --calibrate-precision needs the model's training data"), err
    else:
        assert rc == 2 and err[-1].startswith("error: ") and "no clips in split 'holdout'" in err[-1], err
    assert list(out.parent.iterdir()) == []


# 4. every job's exit status after a stop, with Ray imported


def test_a_stopped_job_exits_130_even_with_ray_imported(tmp_path):
    """Before: an uncaught KeyboardInterrupt exited 1 once `ray` was imported (code Ray runs at exit clears
    CPython's note of it), so Kubernetes / CI read a stopped job as a failed one. run_job makes the 130 explicit."""
    code = """
import sys
import ray  # noqa: F401  (what every job's process has)
from recognizer_core.ray_runtime import install_stop_handlers, run_job
install_stop_handlers()
def main():
    raise KeyboardInterrupt("SIGTERM")
sys.exit(run_job(main))
"""
    wrapped = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert wrapped.returncode == 130, (wrapped.returncode, wrapped.stderr[-2000:])
    assert wrapped.stderr.strip().splitlines() == [
        "stopped (SIGTERM); finished work is kept (checkpoints, trials, extracted videos), re-run the same command "
        "to continue"]


# 5. the embedded demo (`python <repo>/rayjobs/recognize.py`, no arguments) started outside the repo root


@pytest.mark.parametrize("storage", ["none", "folder", "s3"])
def test_the_demo_finds_the_model_it_trained_from_any_folder(model, tmp_path, monkeypatch, capsys, storage):
    """Before: the demo trained in the repo root (cwd=ROOT: the repo's work_dirs, unwritable in a read-only
    checkout) and looked in the caller's work_dirs, so from any other folder it trained, then exited 1 with
    "training the demo model failed", every time; with $RECOGNIZER_STORAGE it looked in no storage either; with
    an s3:// one the job trained into the bucket, which the search skipped: "the demo model was trained, but no
    best_*.pth ...", exit 1, at every run (and its output went to a local folder named "s3:"). Now under an s3://
    storage the demo trains into the working directory's work_dirs (run.storage_path=<absolute folder>).
    The training subprocess is replaced by a copy of a trained run folder put where the real job, started with
    the same command line from the same working directory, puts its run folder (run_folder of the config its
    own argument parser makes: output_uri(run.storage_path)/run.name). Nothing is read from the bucket."""
    import argparse
    import shutil

    from rayjobs.recognize import main
    from recognizer_core.config_args import add_config_args, config_from_args
    from recognizer_core.train.stgcn.config import TrainJobConfig
    from recognizer_core.train.stgcn.job import run_folder

    caller = tmp_path / "caller"
    caller.mkdir()
    monkeypatch.chdir(caller)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/ray_results model of this machine's
    if storage == "none":
        monkeypatch.delenv("RECOGNIZER_STORAGE", raising=False)
    else:
        monkeypatch.setenv("RECOGNIZER_STORAGE", str(tmp_path / "store") if storage == "folder" else
                           "s3://bucket/runs")
    trained, real_run = [], subprocess.run

    def train(command, cwd=None, **kwargs):
        if str(ROOT / "rayjobs/train_stgcn.py") not in command:   # matplotlib's fc-list, ...
            return real_run(command, cwd=cwd, **kwargs)
        assert command[:3] == [sys.executable, str(ROOT / "rayjobs/train_stgcn.py"), "--config"], command
        assert Path(command[3]).is_absolute() and not kwargs, (command, kwargs)
        parser = argparse.ArgumentParser()   # as rayjobs/train_stgcn.py parses its command line
        add_config_args(parser, TrainJobConfig, default_config="configs/fight_stable.yaml")
        parser.add_argument("--address")
        here = os.getcwd()
        os.chdir(cwd or here)   # the working directory the job would run in
        try:
            run_dir = run_folder(config_from_args(TrainJobConfig, parser.parse_args(command[2:])))
        finally:
            os.chdir(here)
        trained.append(run_dir)
        if tmp_path in Path(run_dir).parents:   # never into the repo (where the old code trained) or a bucket
            shutil.copytree(model["run"], run_dir)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", train)
    capsys.readouterr()
    rc = main([])
    out = capsys.readouterr().out
    where = tmp_path / "store" if storage == "folder" else caller
    assert trained == [str(where / "work_dirs" / "fight_demo")], trained
    assert rc == 0 and f"[recognize] no trained model found under {where / 'work_dirs'} or ~/ray_results: training " \
                       f"the 1-minute fight_demo model first into {where / 'work_dirs' / 'fight_demo'}" in out, out
    assert json.loads(out.strip().splitlines()[-1])["output"] == str(where / "outputs" / "recognize")
    assert not (caller / "s3:").exists()
    capsys.readouterr()
    assert main([]) == 0 and len(trained) == 1   # the second run uses it: no training again
    assert f"[recognize] using the newest local model: {where / 'work_dirs' / 'fight_demo'}" in capsys.readouterr().out


def test_recognize_refuses_an_output_under_an_object_store_storage(model, tmp_path, monkeypatch, capsys):
    """Before: --output under an s3:// $RECOGNIZER_STORAGE became Path("s3://...") and the run wrote a local folder
    named "s3:"; now one line and exit 2 before any model work."""
    from rayjobs.recognize import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOGNIZER_STORAGE", "s3://bucket/runs")
    rc = main(["--model", str(model["run"]), "--input", str(model["dataset"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: --output outputs/recognize: resolves to "
                                          "s3://bucket/runs/outputs/recognize, object storage"), err
    assert list(tmp_path.iterdir()) == []
