"""The tune jobs' stop, experiment-name, summary-publishing and resume-record rules, without Ray.

A stopped search is no result (Ctrl-C stops it the way SIGTERM does); --name is a safe folder name; the closing line
names what the summary folder holds; a re-published s3:// summary holds only the new winner; an experiment recorded
by an older version resumes when nothing but a later default differs, and is refused naming the version otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recognizer_core.config import ConfigError
from recognizer_core.storage import join_uri, write_text
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.tune import stgcn_job
from recognizer_core.tune.cli import add_tune_args, plan_from_args, print_summary, save_summary
from recognizer_core.tune.results import TrialRecord, publish_summary, write_summary
from recognizer_core.tune.resume_record import REQUEST_FILE, check_resumable, request_record
from tests.fakes.tuner_stand_in import stand_in_tuner

REPO = Path(__file__).resolve().parents[1]


def _plan(*argv: str, space: str = "search_spaces/fight.yaml"):
    parser = argparse.ArgumentParser()
    add_tune_args(parser, str(REPO / space))
    return plan_from_args(parser.parse_args(list(argv)), config_cls=TrainJobConfig, job=stgcn_job.JOB,
                          metrics=stgcn_job.METRICS)


# --- 1. Ctrl-C stops a search like SIGTERM -------------------------------------------------------------------
# tune_fight.main with Ray replaced: start_ray_or_exit only installs the project's stop handlers (as it does), and
# Tuner.fit does what tune.run does first (_setup_signal_catching), then the user presses Ctrl-C mid-search.
# Not under pytest, whose conftest refuses Ray's SIGINT handlers: the job's real handlers are what is tested.
CTRL_C_JOB = textwrap.dedent("""
    import signal, sys
    sys.path.insert(0, {repo!r})
    signal.signal(signal.SIGINT, signal.default_int_handler)   # as in an interactive shell
    import ray.tune
    from recognizer_core import ray_runtime
    from rayjobs import tune_fight
    from tests.fakes.tuner_stand_in import stand_in_tuner

    def fit():
        from ray.tune.tune import _setup_signal_catching
        _setup_signal_catching()
        signal.raise_signal(signal.SIGINT)
        return []   # what a search interrupted through Tune's own handler returned: a partial grid

    ray.tune.Tuner = stand_in_tuner(fit)
    ray.tune.with_parameters = lambda fn, **kwargs: fn
    ray_runtime.start_ray_or_exit = lambda *args, **kwargs: ray_runtime.install_stop_handlers()
    sys.exit(ray_runtime.run_job(tune_fight.main, sys.argv[1:]))   # as the script's __main__ does
""")


@pytest.mark.timeout(240)
def test_ctrl_c_during_a_search_stops_the_job_and_publishes_nothing(tmp_path):
    """Tune's SIGINT handler replaced the project's: Ctrl-C only set a flag, fit returned, and the job wrote the
    summary of the half-finished search, printed its 'best' and exited 0 (with --folds it then retrained)."""
    script = tmp_path / "job.py"
    script.write_text(CTRL_C_JOB.format(repo=str(REPO)))
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--storage-path", str(tmp_path / "tune"),
                           "--name", "exp"], capture_output=True, text=True, timeout=200, cwd=tmp_path)
    assert proc.returncode == 130, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "stopped (Ctrl-C); finished work is kept" in proc.stderr and "re-run the same command" in proc.stderr
    assert "[tune] best trial" not in proc.stdout and "[tune] results" not in proc.stdout
    assert not (tmp_path / "tune" / "exp" / "summary").exists()


def test_a_stop_that_something_swallowed_still_stops_the_job(tmp_path, monkeypatch):
    """A KeyboardInterrupt that never left fit (Ray Train can swallow one): the stop the handler recorded still
    ends the job before the summary; and Tune's SIGINT handler is off whatever the environment said."""
    import ray.tune

    from recognizer_core import ray_runtime
    from recognizer_core.tune.tuner import run_tuning

    plan = _plan("--smoke", "--storage-path", str(tmp_path), "--name", "exp")
    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "0")
    monkeypatch.setattr(ray_runtime, "_STOPPED_BY", [])
    seen = {}

    def fit():
        seen["env"] = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        ray_runtime._STOPPED_BY.append("SIGTERM")   # a stop whose KeyboardInterrupt fit swallowed
        return []

    monkeypatch.setattr(ray.tune, "Tuner", stand_in_tuner(fit))
    monkeypatch.setattr(ray.tune, "with_parameters", lambda fn, **kwargs: fn)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        run_tuning(plan.space, TrainJobConfig, lambda *a, **k: None, plan.options, extra_overrides=plan.extra)
    assert seen["env"] == "1"


# --- 3. --name is a safe folder name ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fight#2", "싸움 실험", "../escape", "a/b", ".hidden"])
def test_a_tune_name_that_is_no_safe_folder_name_is_refused_in_one_line(tmp_path, name):
    """Unchecked, 'fight#2' wrote the request record as s3 object runs/fight (resume never found it), '../escape'
    wrote outside the storage path and a non-ASCII name failed inside Ray with 'Cannot parse URI'."""
    with pytest.raises(ConfigError, match=r"^command line: --name: must be 1-128 letters, digits, '\.', '_' or "
                                          r"'-', starting with a letter or digit .*\(got " + re.escape(repr(name))):
        _plan("--storage-path", str(tmp_path), "--name", name)


def test_tune_streams_names_its_name_flag(tmp_path, capsys):
    """--name becomes run.name <name>_<stream>: the error named run.name=../x_j inside a two-line config error."""
    from rayjobs.tune_streams import main

    assert main(["--name", "../x", "--storage-path", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --name '../x': must be 1-128 letters")


def test_the_default_name_of_an_oddly_named_space_file_is_a_safe_one(tmp_path):
    space = tmp_path / "my space#1.yaml"
    space.write_text((REPO / "search_spaces" / "fight.yaml").read_text())
    plan = _plan("--storage-path", str(tmp_path), space=str(space))
    name = plan.options.name
    assert re.fullmatch(r"tune_my_space_1_[0-9a-f]{6}_demo", name), name
    # two files whose names differ only where they were replaced are two experiments (both were 'tune___')
    from recognizer_core.tune.cli import default_name
    assert default_name("싸움") != default_name("폭행") and default_name("fight v2") != default_name("fight+v2")
    assert default_name("fight") == "tune_fight"   # a safe stem keeps its name (existing experiments resume)


# --- 2. the closing line names what the summary holds ----------------------------------------------------------
def test_the_closing_line_names_only_what_the_summary_holds(tmp_path, capsys):
    """Every trial errored: no best config or checkpoint is written ('nothing to pick as best'), yet the line said
    'results, best config, best checkpoint and plots'."""
    from recognizer_core.tune.search_space import load_search_space

    space = load_search_space(REPO / "search_spaces" / "fight.yaml", TrainJobConfig, job="stgcn",
                              metrics=stgcn_job.METRICS)
    records = [TrialRecord("a1", {}, [], error="ValueError: bad"), TrialRecord("b2", {}, [], error="OSError: x")]
    summary = write_summary(records, space, TrainJobConfig, metric="val/acc_top1", mode="max", extra={},
                            out_dir=tmp_path, experiment_uri=str(tmp_path))
    summary["summary_dir"] = str(tmp_path)
    print_summary(summary, "val/acc_top1")
    out = capsys.readouterr().out
    assert f"[tune] results: {tmp_path}\n" in out and "best config" not in out
    full = {**summary, "best_trial": "a1", "best_value": 0.5, "best_checkpoint": {},
            "files": [str(tmp_path / "results.csv"), str(tmp_path / "best_config.yaml"), str(tmp_path / "plots/x.png")]}
    print_summary(full, "val/acc_top1")   # the README's line, when everything is there
    assert f"[tune] results, best config, best checkpoint and plots: {tmp_path}\n" in capsys.readouterr().out


def test_the_closing_line_of_a_search_without_trials_names_the_summary_alone(tmp_path, capsys):
    """A search that left no trial records: its summary holds no results file, and the closing line says so
    instead of ending the job with an IndexError after its summary was published."""
    from recognizer_core.tune.search_space import load_search_space

    space = load_search_space(REPO / "search_spaces" / "fight.yaml", TrainJobConfig, job="stgcn",
                              metrics=stgcn_job.METRICS)
    summary = write_summary([], space, TrainJobConfig, metric="val/acc_top1", mode="max", extra={},
                            out_dir=tmp_path, experiment_uri=str(tmp_path))
    assert summary["files"] == []
    print_summary({**summary, "summary_dir": str(tmp_path)}, "val/acc_top1")
    assert f"[tune] summary.json (no trial results): {tmp_path}\n" in capsys.readouterr().out


# --- 4. a re-published s3:// summary holds only the new winner ----------------------------------------------------
def _objects(s3) -> list[str]:   # pyarrow's create_dir also writes "folder/" marker objects: not files
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="bucket")["Contents"] if not o["Key"].endswith("/"))


def test_republishing_an_s3_summary_replaces_the_previous_winner(tmp_path, s3):
    """publish_summary's copy_tree deletes nothing: a resumed search with a new winner left both best_*.pth in
    summary/ (ensemble.py expects one). final/ (the --folds retrain, written there by the workers) survives the
    publish that follows it."""
    s3.create_bucket(Bucket="bucket")
    experiment = "s3://bucket/tune/exp"
    for epoch in (7, 19):
        local = tmp_path / f"scratch_{epoch}"   # results.scratch_dir: a fresh temp folder each time
        local.mkdir()
        (local / f"best_acc_top1_epoch_{epoch}.pth").write_bytes(b"x")
        save_summary({"epoch": epoch}, local, experiment)
    keys = _objects(s3)
    assert keys == ["tune/exp/summary/best_acc_top1_epoch_19.pth", "tune/exp/summary/summary.json"]
    write_text(join_uri(experiment, "summary", "final", "final_test", "test_metrics.json"), "{}")
    (tmp_path / "scratch_19" / "best_acc_top1_epoch_19.pth").unlink()
    (tmp_path / "scratch_19" / "best_acc_top1_epoch_20.pth").write_bytes(b"y")
    publish_summary(tmp_path / "scratch_19", experiment, keep=("final",))
    assert _objects(s3) == ["tune/exp/summary/best_acc_top1_epoch_20.pth",
                            "tune/exp/summary/final/final_test/test_metrics.json", "tune/exp/summary/summary.json"]


# --- 5. records of older versions ------------------------------------------------------------------------------
def _recorded(tmp_path, edit) -> tuple:
    plan = _plan("--storage-path", str(tmp_path), "--name", "exp")
    record = request_record(plan.space, plan.extra, TrainJobConfig, plan.options)
    edit(record)
    write_text(join_uri(plan.options.storage_path, "exp", REQUEST_FILE), json.dumps(record))
    return plan


def test_a_record_written_before_a_space_field_existed_resumes(tmp_path):
    """epochs_field (a SearchSpace field) and epochs_of / counted_after (Param fields) were added later with
    defaults; a record without them is the same search, not 'changed: space.epochs_field'."""
    def older(record):
        del record["space"]["epochs_field"]
        for p in record["space"]["params"].values():   # where they hold their default (older: absent)
            for key in ("epochs_of", "counted_after"):
                if p.get(key) is None:
                    p.pop(key, None)
    plan = _recorded(tmp_path, older)
    assert check_resumable(plan.space, TrainJobConfig, plan.options, extra_overrides=plan.extra)
    plan = _recorded(tmp_path, lambda r: r["space"].update(epochs_field="train.max_epochs"))
    with pytest.raises(ConfigError, match=r"different search \(changed: space\.epochs_field\)"):
        check_resumable(plan.space, TrainJobConfig, plan.options, extra_overrides=plan.extra)


def test_a_record_of_a_moved_config_class_names_the_version_not_a_change_of_space(tmp_path):
    plan = _recorded(tmp_path, lambda r: r.update(config_class="recognizer_core.train.config.TrainJobConfig"))
    with pytest.raises(ConfigError) as err:
        check_resumable(plan.space, TrainJobConfig, plan.options, extra_overrides=plan.extra)
    said = str(err.value)
    assert "was started by an older (or other) recognizer version" in said and "start a new --name" in said
    assert "recognizer_core.train.config.TrainJobConfig" in said and "original space" not in said


def test_a_record_of_the_data_path_as_typed_resumes_with_it_resolved(tmp_path, monkeypatch):
    """Trials record data.path resolved (absolute) since 2026-12-05; an experiment recorded with it as typed
    (`--set data.path=ds`, relative to the driver's folder) was refused as 'changed: override data.path' when the
    same command ran again. Another folder is still another search."""
    monkeypatch.chdir(tmp_path)
    plan = _plan("--storage-path", str(tmp_path), "--name", "exp")
    record = request_record(plan.space, {**plan.extra, "data.path": "ds"}, TrainJobConfig, plan.options)
    write_text(join_uri(plan.options.storage_path, "exp", REQUEST_FILE), json.dumps(record))
    assert check_resumable(plan.space, TrainJobConfig, plan.options,
                           extra_overrides={**plan.extra, "data.path": str(tmp_path / "ds")})
    with pytest.raises(ConfigError, match=r"changed: override data\.path"):
        check_resumable(plan.space, TrainJobConfig, plan.options,
                        extra_overrides={**plan.extra, "data.path": str(tmp_path / "other")})


def test_a_set_that_every_trial_replaces_is_refused_also_under_a_fixed_when_or_numeric_labels(tmp_path):
    """Two ways 'every trial sets it' was missed: a `when` on a field no parameter sets (the docs' 'fix it in a copy
    of the space': schedule.type removed, --set schedule.type=cosine, then every trial samples the warm-up), and a
    field set by a numeric choice's `sets` under one label and by a parameter under the other ('16' vs 16)."""
    from recognizer_core.tune.search_space import SearchSpaceError, load_search_space

    base = f"base_config: {REPO / 'configs/fight_stable.yaml'}"
    src = (REPO / "search_spaces/fight.yaml").read_text().replace("base_config: configs/fight_stable.yaml", base)
    src = src.replace("  schedule.type: {type: choice, values: [multistep, cosine]}\n", "")
    src = re.sub(r"    schedule.type: multistep\n    schedule.milestones: \[15, 25\]\n    schedule.gamma: 0.5\n", "",
                 src)
    (tmp_path / "cosine.yaml").write_text(src)
    cosine = load_search_space(tmp_path / "cosine.yaml", TrainJobConfig)
    with pytest.raises(SearchSpaceError, match=r"--set schedule.warmup_epochs \(param schedule.warmup_epochs\) is "
                                               r"searched"):
        cosine.check_user_overrides({"schedule.type": "cosine", "schedule.warmup_epochs": 2})
    # with the fixed schedule another type, no trial samples the warm-up: the --set holds, nothing to say
    assert cosine.check_user_overrides({"schedule.type": "multistep", "schedule.warmup_epochs": 2}) == []
    (tmp_path / "numeric.yaml").write_text(f"""job: stgcn
{base}
metric: val/acc_top1
params:
  train.batch_size: {{type: choice, values: [16, 32], sets: {{16: {{optim.base_batch_size: 16}}, 32: {{}}}}}}
  optim.base_batch_size: {{type: choice, values: [32, 64], when: {{train.batch_size: 32}}}}
""")
    numeric = load_search_space(tmp_path / "numeric.yaml", TrainJobConfig)
    with pytest.raises(SearchSpaceError, match=r"--set optim.base_batch_size \(params train.batch_size: 16, "
                                               r"optim.base_batch_size\) is searched"):
        numeric.check_user_overrides({"optim.base_batch_size": 8})
