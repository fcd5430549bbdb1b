"""A tune experiment whose files a full disk damaged: the re-run stops in one line naming the file instead of
letting Ray start the search over while reporting a resume, and a search the machine stops (a full disk, a file Ray
wrote cut short) ends in one line naming the experiment folder instead of a bare traceback."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pytest

from recognizer_core.config import ConfigError
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.tune import stgcn_job
from recognizer_core.tune.cli import add_tune_args, plan_from_args
from recognizer_core.tune.tuner import run_tuning
from tests.fakes.tuner_stand_in import stand_in_tuner

REPO = Path(__file__).resolve().parents[1]


def _truncate_to_half(path: Path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.read_bytes()


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_cut_short_experiment_state_stops_the_rerun_in_one_line_naming_it(ray_local, tmp_path, capsys):
    """The review's disk-full run: Ray's experiment_state JSON was cut short; the re-run logged Ray's
    JSONDecodeError, ran one new trial of the two asked, and the summary said "resumed": true (exit 0)."""
    sys.path.insert(0, str(REPO))
    from rayjobs.tune_fight import main

    argv = ["--smoke", "--num-samples", "1", "--max-concurrent-trials", "1", "--scheduler", "fifo",
            "--set", "train.epochs=1", "--storage-path", str(tmp_path), "--name", "damaged"]
    assert main(argv) == 0, capsys.readouterr()
    experiment = tmp_path / "damaged"
    states = sorted(experiment.glob("experiment_state-*.json"))
    assert len(states) == 1, states
    summary_before = (experiment / "summary" / "summary.json").read_bytes()
    cut = _truncate_to_half(states[0])
    capsys.readouterr()

    assert main(argv) == 2
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {states[0]}: Ray Tune's experiment state does not "
                                                     "load (JSONDecodeError: "), err[-3000:]
    assert "start a new --name" in errors[0]
    # stopped before Tune ran: no resume claimed, no new state, the user's files as they were
    assert "[tune] resuming experiment" not in out
    assert sorted(experiment.glob("experiment_state-*.json")) == states and states[0].read_bytes() == cut
    assert (experiment / "summary" / "summary.json").read_bytes() == summary_before


def test_the_error_points_to_an_older_state_that_loads(tmp_path):
    """Each driver session writes its own experiment_state-<start time>.json: an older one that loads is offered."""
    from recognizer_core.tune.tuner import check_experiment_state

    older = tmp_path / "experiment_state-2026-12-01_10-00-00.json"
    older.write_text(json.dumps({"trial_data": [], "runner_data": {}, "stats": {}}))
    newest = tmp_path / "experiment_state-2026-12-02_10-00-00.json"
    newest.write_text('{"trial_data": [["{\\"trial_id\\": \\"ab')
    with pytest.raises(ConfigError) as raised:
        check_experiment_state(str(tmp_path))
    message = str(raised.value)
    assert message.startswith(f"{newest}: Ray Tune's experiment state does not load (JSONDecodeError: ")
    assert f"resume from the older {older.name}" in message and "\n" not in message
    newest.write_text(older.read_text())
    check_experiment_state(str(tmp_path))  # a state that loads: nothing to say


def _disk_full() -> OSError:
    try:
        with open("/dev/full", "wb", buffering=0) as full:  # a real ENOSPC, as a full disk gives it
            full.write(b"x")
    except OSError as err:
        return err
    raise AssertionError("/dev/full took a write")


def _cut_short_pickle(tmp_path: Path) -> EOFError:
    import ray.cloudpickle

    error_pkl = tmp_path / "error.pkl"
    error_pkl.write_bytes(b"")  # what the full disk left of the trial's error.pkl
    try:
        ray.cloudpickle.loads(error_pkl.read_bytes())  # as Trial.get_pickled_error reads it
    except EOFError as err:
        return err
    raise AssertionError("an empty pickle loaded")


@pytest.mark.parametrize("machine_error, expected", [
    ("disk_full", r"OSError: \[Errno 28\] No space left on device; free space, then run the same command with "
                  r"--retry-errored to resume it"),
    ("cut_short", r"EOFError: Ran out of input \(a file Ray Tune wrote there is cut short, as a full disk leaves "
                  r"it\); free space, then run"),
])
def test_a_search_the_machine_stops_is_one_line_naming_the_experiment(tmp_path, monkeypatch, machine_error, expected):
    """The review's run 1: both trials errored on the full disk, then fit() died in ResultGrid reading a 0-byte
    error.pkl (`EOFError: Ran out of input`, a traceback naming no file). Ray's fit is stood in for; the error it
    raises is a real one."""
    import ray.tune

    error = _disk_full() if machine_error == "disk_full" else _cut_short_pickle(tmp_path)

    def fit():
        raise error

    parser = argparse.ArgumentParser()
    add_tune_args(parser, str(REPO / "search_spaces" / "fight.yaml"))
    plan = plan_from_args(parser.parse_args(["--smoke", "--storage-path", str(tmp_path), "--name", "exp"]),
                          config_cls=TrainJobConfig, job=stgcn_job.JOB, metrics=stgcn_job.METRICS)
    monkeypatch.setattr(ray.tune, "Tuner", stand_in_tuner(fit))
    monkeypatch.setattr(ray.tune, "with_parameters", lambda fn, **kwargs: fn)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path / 'exp'))}: the search stopped: {expected}") \
            as raised:
        run_tuning(plan.space, TrainJobConfig, lambda *a, **k: None, plan.options, extra_overrides=plan.extra)
    assert "\n" not in str(raised.value) and raised.value.__cause__ is error
