"""The tuner: results/best-config/checkpoint/plots from trial records, and a real search that is killed and
resumed (`python rayjobs/tune_fight.py --smoke`, a local Ray in a subprocess, as a user runs it)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from recognizer_core.config import load_config
from recognizer_core.export.mmaction import export_from_checkpoint
from recognizer_core.models.checkpoint import load_mmaction_checkpoint
from recognizer_core.models.recognizer import build_recognizer
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.state import save_training_state
from recognizer_core.tune import stgcn_job
from recognizer_core.tune.results import TrialRecord, write_summary
from recognizer_core.tune.search_space import load_search_space

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _space():
    return load_search_space(REPO / "search_spaces" / "fight.yaml", TrainJobConfig, job="stgcn",
                             metrics=stgcn_job.METRICS)


def _checkpoint(space, params, root: Path, epoch: int) -> str:
    cfg = space.build_config(TrainJobConfig, params, space.demo)
    torch.manual_seed(epoch)
    model = build_recognizer(cfg.model)
    d = root / f"checkpoint_epoch_{epoch:04d}"
    save_training_state(d, model=model, epoch=epoch, extra={"label_names": ["NonFight", "Fight"]})
    return str(d)


def test_summary_from_records(tmp_path):
    space = _space()
    small = {"depth": "shallow", "model.base_channels": 32, "model.dropout": 0.2, "optim.weight_decay": 1e-3,
             "train.class_weight[1]": 1.5, "optim.type": "sgd", "optim.lr": 1e-4, "optim.momentum": 0.9,
             "optim.nesterov": True, "schedule.type": "multistep", "schedule.milestones": "[10, 20]",
             "schedule.gamma": 0.1, "train.batch_size": 16, "pipeline.feats": '["j"]'}
    other = {**small, "model.base_channels": 48, "optim.type": "adamw", "schedule.type": "cosine",
             "schedule.eta_min": 1e-6, "depth": "stable"}
    for k in ("optim.momentum", "optim.nesterov", "schedule.milestones", "schedule.gamma"):
        other.pop(k)
    a, b = tmp_path / "a", tmp_path / "b"
    # Trial a: 0.75 at epochs 2 and 3 (a tie). Best = the first epoch to reach it (2), the training loop's rule:
    # its run folder holds best_acc_top1_epoch_2.pth. Ray Train kept the latest of equal scores (epoch 3).
    ckpt3 = _checkpoint(space, small, a / "train", 3)
    own = a / "train" / "best_acc_top1_epoch_2.pth"
    export_from_checkpoint(space.build_config(TrainJobConfig, small, space.demo), Path(ckpt3), str(a / "train"))
    (a / "train" / "best_acc_top1_epoch_3.pth").rename(own)
    rec_a = TrialRecord("a", small, [
        {"epoch": 1, "val/acc_top1": 0.5, "train/loss": 0.9},
        {"epoch": 2, "val/acc_top1": 0.75, "train/loss": 0.7, "checkpoint_path": str(a / "checkpoint_epoch_0002")},
        {"epoch": 3, "val/acc_top1": 0.75, "train/loss": 0.6, "checkpoint_path": ckpt3}], path=str(a))
    # Trial b: stopped early by ASHA after epoch 1.
    rec_b = TrialRecord("b", other, [{"epoch": 1, "val/acc_top1": 0.6, "checkpoint_path": _checkpoint(space, other, b, 1)}])
    rec_c = TrialRecord("c", other, [], error="RuntimeError: CUDA out of memory")
    out = tmp_path / "summary"
    summary = write_summary([rec_b, rec_c, rec_a], space, TrainJobConfig, metric="val/acc_top1", mode="max",
                            extra=space.demo, out_dir=out, experiment_uri=str(tmp_path), max_t=3,
                            export_best=stgcn_job.export_best)
    assert summary["best_trial"] == "a" and summary["best_value"] == 0.75 and summary["best_at"] == {"epoch": 2}
    assert summary["status_counts"] == {"ok": 2, "error": 1}
    assert summary["errors"] == {"c": "RuntimeError: CUDA out of memory"}
    assert summary["best_checkpoint"]["source"].endswith("checkpoint_epoch_0003")

    table = pd.read_parquet(out / "results.parquet")
    assert list(table["trial_id"]) == ["a", "b", "c"]  # best first, the errored trial last
    assert list(table["status"]) == ["ok", "ok", "error"]
    assert list(table["stopped_early"]) == [False, True, False]
    assert table.loc[0, "epoch at best"] == 2 and table.loc[0, "at best: train/loss"] == 0.7
    assert table.loc[0, "param: optim.momentum"] == 0.9 and pd.isna(table.loc[1, "param: optim.momentum"])
    assert pd.read_csv(out / "results.csv")["trial_id"].tolist() == ["a", "b", "c"]

    # The best config is a complete training YAML that loads as is: preset + demo overrides + trial params.
    best = load_config(TrainJobConfig, out / "best_config.yaml")
    assert best == space.build_config(TrainJobConfig, small, space.demo).model_copy(
        update={"run": best.run}) and best.run.name == "fight_stable_tuned"
    assert (best.model.num_stages, best.model.base_channels, best.optim.type) == (3, 32, "sgd")
    # Milestones are epochs of the 30-epoch preset, scaled to the demo's 10 epochs.
    assert best.schedule.milestones == [3, 7] and best.train.class_weight == [1.2, 1.5]

    # One best model: the summary's .pth is the trial's own export of epoch 2, byte for byte.
    assert (out / "best_checkpoint" / "training_state.pt").is_file()
    pth = out / "best_acc_top1_epoch_2.pth"
    assert summary["best_checkpoint"]["exported"] == [str(pth)]
    assert pth.read_bytes() == own.read_bytes() and not (out / "best_acc_top1_epoch_3.pth").exists()
    load_mmaction_checkpoint(build_recognizer(best.model), pth)
    assert any("the first to reach 0.7500" in n for n in summary["notes"])
    # Compute of the search and the preset next to the winner (the preset did not run here).
    assert summary["compute"]["trial_epochs"] == 4 and summary["compute"]["preset_run_epochs"] == 10
    assert summary["compute"]["preset_runs_equivalent"] == 0.4

    for name in ("optimization_history", "parallel_coordinate", "learning_curves"):
        png = (out / "plots" / f"{name}.png").read_bytes()
        assert png.startswith(PNG) and len(png) > 10_000, name
    # 2 completed trials: importances would rank noise, so they are skipped with the reason.
    assert "at least 8" in summary["plots_skipped"]["param_importances"]
    assert json.loads((out / "summary.json").read_text())["best_trial"] == "a"


def test_a_space_that_tunes_the_epochs_lets_its_longest_trials_finish(tmp_path):
    """ASHA's max_t came from the base config's schedule (fight_stable: 30 epochs, 15 validations): a trial given
    40 epochs was stopped at its 16th validation, and a 10-epoch trial that finished was marked stopped early."""
    from recognizer_core.tune.results import results_table
    from recognizer_core.tune.tuner import longest_schedule, schedule_of

    path = tmp_path / "epochs.yaml"
    path.write_text(f"job: stgcn\nbase_config: {REPO / 'configs' / 'fight_stable.yaml'}\nmetric: val/acc_top1\n"
                    "params:\n  train.epochs: {type: int, low: 10, high: 40, step: 10}\n"
                    # the preset's milestones, kept inside each trial's epochs (unsampled: the base's, scaled)
                    "  schedule.milestones: {type: choice, values: [[15, 25]], epochs_of: 30, "
                    "counted_after: schedule.warmup_epochs}\n"
                    "  model.dropout: {type: uniform, low: 0.1, high: 0.7}\n")
    space = load_search_space(path, TrainJobConfig, job="stgcn", metrics=stgcn_job.METRICS)
    base = space.build_config(TrainJobConfig, {}, {})
    longest = longest_schedule(space, TrainJobConfig, {}, base)
    assert len(schedule_of(base)) == 15 and longest[-1] == 40 and len(longest) == 20
    done = TrialRecord("t10", {"train.epochs": 10, "model.dropout": 0.3},
                       [{"epoch": e, "val/acc_top1": 0.6} for e in range(2, 11, 2)])
    cut = TrialRecord("t40", {"train.epochs": 40, "model.dropout": 0.3},
                      [{"epoch": e, "val/acc_top1": 0.6} for e in range(2, 21, 2)])
    own = lambda rec: space.config_dict(rec.params)["train"]["epochs"]  # noqa: E731 - as tune's finish() does
    table = results_table([done, cut], space, "val/acc_top1", "max", "epoch", own).set_index("trial_id")
    assert not table.loc["t10", "stopped_early"] and table.loc["t40", "stopped_early"]


def test_summary_with_no_successful_trial(tmp_path):
    space = _space()
    recs = [TrialRecord("x", {}, [], error="ValueError: bad"), TrialRecord("y", {}, [{"epoch": 1}])]
    summary = write_summary(recs, space, TrainJobConfig, metric="val/acc_top1", mode="max", extra={},
                            out_dir=tmp_path, experiment_uri=str(tmp_path))
    assert "best_trial" not in summary and not (tmp_path / "best_config.yaml").exists()
    assert summary["status_counts"] == {"error": 1, "no_metric": 1}
    assert set(summary["plots_skipped"]) == {"optimization_history", "param_importances", "parallel_coordinate",
                                             "learning_curves"}


def test_on_a_tie_the_progress_line_and_the_summary_name_the_same_trial(tmp_path, capsys):
    """One rule (records.pick_best_trial): the best value, on a tie the trial Tune created first, never an
    errored one. Trials a, b, c were created in that order; b reaches 0.8 before a does, c leads and then errors."""
    from types import SimpleNamespace

    from recognizer_core.tune.progress import SearchProgress

    space = _space()
    params = space.start_points()[0]
    trials = [SimpleNamespace(trial_id=t, status="RUNNING") for t in ("a", "b", "c")]  # Tune's list: creation order
    reports = {"a": [], "b": [], "c": []}
    progress = SearchProgress("val/acc_top1", "max", total=3, concurrency=3, max_epochs=2, interval_s=0.0)
    for trial_id, epoch, value in (("b", 1, 0.8), ("a", 1, 0.6), ("c", 1, 0.9), ("a", 2, 0.8), ("b", 2, 0.7)):
        reports[trial_id].append({"epoch": epoch, "val/acc_top1": value})
        progress.on_trial_result(0, trials, trials["abc".index(trial_id)], reports[trial_id][-1])
    assert progress.best == ("c", 0.9)
    trials[2].status = "ERROR"
    progress.on_trial_error(0, trials, trials[2])
    capsys.readouterr()
    progress.on_step_begin(0, trials)
    assert "best val/acc_top1 0.8000 (trial a)" in capsys.readouterr().out  # not b, which got there first
    records = [TrialRecord("a", params, reports["a"]), TrialRecord("b", params, reports["b"]),
               TrialRecord("c", params, reports["c"], error="RuntimeError: lost")]
    summary = write_summary(records, space, TrainJobConfig, metric="val/acc_top1", mode="max", extra=space.demo,
                            out_dir=tmp_path, experiment_uri=str(tmp_path), plots=False)
    assert (summary["best_trial"], summary["best_value"]) == progress.best == ("a", 0.8)
    assert summary["best_at"] == {"epoch": 2}


def test_on_a_tie_in_a_resumed_experiment_the_trial_created_first_still_wins(tmp_path, capsys):
    """A resumed experiment hands its restored trials back most recent result first, not in creation order
    (Ray's TuneController._requeue_restored_trials), and its ResultGrid follows that list. The tie rule must
    use the number Tune gave each trial when it created it. Real Tune trials from Tune's SearchGenerator
    (no Ray runtime needed): a (the preset), b, c created in that order; a and b tie at 0.8, a reached it
    last, so a resumed Tune lists b first."""
    import pandas as pd
    from ray.tune import Result
    from ray.tune.experiment import Experiment
    from ray.tune.search import SearchGenerator, Searcher

    from recognizer_core.tune.progress import SearchProgress
    from recognizer_core.tune.results import records_from_grid

    class Points(Searcher):  # hands out the three configs in order, as a search's start_with points
        def __init__(self, points):
            super().__init__(metric="val/acc_top1", mode="max")
            self.points = list(points)

        def suggest(self, trial_id):
            return self.points.pop(0) if self.points else Searcher.FINISHED

    space = _space()
    params = space.start_points()[0]
    generator = SearchGenerator(Points([{**params, "model.dropout": d} for d in (0.2, 0.3, 0.4)]))
    generator.add_configurations([Experiment("tie", run=run_trial_stub, num_samples=3,
                                             storage_path=str(tmp_path))])
    a, b, c = (generator.next_trial() for _ in range(3))
    reports = {a: [{"epoch": 1, "val/acc_top1": 0.5}, {"epoch": 2, "val/acc_top1": 0.8}],
               b: [{"epoch": 1, "val/acc_top1": 0.8}, {"epoch": 2, "val/acc_top1": 0.7}],
               c: [{"epoch": 1, "val/acc_top1": 0.6}, {"epoch": 2, "val/acc_top1": 0.6}]}
    for trial in (b, c, a):  # Tune records each result on the trial (and tags it with the experiment_tag)
        for r in reports[trial]:
            trial.update_last_result({**r, "trial_id": trial.trial_id, "config": trial.config})
    restored = [b, c, a]  # as a resumed Tune lists them
    progress = SearchProgress("val/acc_top1", "max", total=3, concurrency=3, max_epochs=2, interval_s=0.0)
    for trial in restored:
        for r in reports[trial]:
            progress.on_trial_result(0, restored, trial, r)
    assert progress.best == (a.trial_id, 0.8)
    progress.on_step_begin(0, restored)
    assert f"best val/acc_top1 0.8000 (trial {a.trial_id})" in capsys.readouterr().out
    # The ResultGrid of the resumed experiment, built as Ray builds it (ResultGrid._trial_to_result), in its order.
    grid = [Result(metrics=t.last_result.copy(), checkpoint=None, error=None, path=str(tmp_path / t.trial_id),
                   metrics_dataframe=pd.DataFrame(reports[t])) for t in restored]
    records = records_from_grid(grid)
    assert [r.trial_id for r in records] == [a.trial_id, b.trial_id, c.trial_id]
    summary = write_summary(records[::-1], space, TrainJobConfig, metric="val/acc_top1", mode="max",
                            extra=space.demo, out_dir=tmp_path / "summary", experiment_uri=str(tmp_path),
                            plots=False)
    assert (summary["best_trial"], summary["best_value"]) == progress.best
    table = pd.read_parquet(tmp_path / "summary" / "results.parquet")
    assert list(table["trial_id"]) == [a.trial_id, b.trial_id, c.trial_id]  # the best first, on a tie a


def run_trial_stub(config):  # the trainable the SearchGenerator's trials name; never run here
    pass


def _start(cmd: list[str], log: Path, ray_address: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(REPO), "RAY_ADDRESS": ray_address}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for(proc: subprocess.Popen, log: Path, text: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {text!r}:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} after {timeout}s:\n{log.read_text()[-4000:]}")


def _kill_group(proc: subprocess.Popen) -> None:
    # The driver (its own session; the Ray it joined is not in it); our own processes only.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_resume_after_killing_the_driver(ray_local, tmp_path, capsys):
    # One trial: killed with the driver after its first epoch, continued from its checkpoint by the re-run. Both
    # runs join the session's Ray (RAY_ADDRESS, as on a cluster, where the driver dies and Ray stays up) instead
    # of starting a private one each: Ray ends the dead driver's trial, and the experiment on storage is resumed.
    cmd = [sys.executable, "rayjobs/tune_fight.py", "--smoke", "--num-samples", "1", "--storage-path", str(tmp_path),
           "--name", "resume"]
    address = ray_local.get_runtime_context().gcs_address
    first = tmp_path / "first.log"
    proc = _start(cmd, first, address)
    try:
        _wait_for(proc, first, "epoch=1 val/acc_top1=", timeout=240)
    finally:
        _kill_group(proc)  # SIGKILL: no chance to save anything more
    killed_trial = [ln for ln in first.read_text().splitlines() if "epoch=1 val/acc_top1=" in ln][0].split()[2]
    assert "[tune] best trial" not in first.read_text()

    second = tmp_path / "second.log"
    proc = _start(cmd, second, address)
    try:
        assert proc.wait(timeout=360) == 0, second.read_text()[-4000:]
    finally:
        _kill_group(proc)
    log = second.read_text()
    assert "[tune] resuming experiment" in log and "[tune] running on the Ray cluster at" in log
    # The interrupted trial continued its Train run from its latest checkpoint instead of starting over (epoch 1,
    # or 2 when the kill came after the last checkpoint but before Tune saw it: then the run only reports).
    assert re.search(r"resumed from checkpoint at epoch [12]\b", log), log[-4000:]
    summary_dir = tmp_path / "resume" / "summary"
    table = pd.read_parquet(summary_dir / "results.parquet")
    assert len(table) == 1 and set(table["status"]) == {"ok"}, table
    assert table.set_index("trial_id").loc[killed_trial, "last epoch"] == 2  # finished, not restarted
    summary = json.loads((summary_dir / "summary.json").read_text())
    assert summary["resumed"] is True and summary["trials"] == 1 and summary["best_trial"] == killed_trial
    best = load_config(TrainJobConfig, summary_dir / "best_config.yaml")
    pth = next(summary_dir.glob("best_acc_top1_epoch_*.pth"))
    load_mmaction_checkpoint(build_recognizer(best.model), pth)
    assert (summary_dir / "plots" / "optimization_history.png").is_file()
    assert "needs 2 completed trials" in summary["plots_skipped"]["parallel_coordinate"]

    # Re-running with a different search into the same experiment is refused before Ray starts (in this process:
    # nothing here starts Ray, so no third interpreter is needed).
    sys.path.insert(0, str(REPO))
    from rayjobs.tune_fight import main

    capsys.readouterr()
    assert main(cmd[2:] + ["--set", "train.epochs=3"]) == 2
    assert "different search (changed: override train.epochs)" in capsys.readouterr().err


def _plan(*argv: str, space: str = "search_spaces/fight.yaml"):
    import argparse

    from recognizer_core.tune.cli import add_tune_args, plan_from_args

    parser = argparse.ArgumentParser()
    add_tune_args(parser, str(REPO / space))
    return plan_from_args(parser.parse_args(list(argv)), config_cls=TrainJobConfig, job=stgcn_job.JOB,
                          metrics=stgcn_job.METRICS)


def test_command_line_plans(tmp_path):
    from recognizer_core.config import ConfigError

    demo = _plan("--storage-path", str(tmp_path))
    assert demo.demo and demo.options.name == "tune_fight_demo" and demo.options.num_samples == 4
    assert demo.extra["train.epochs"] == _space().demo["train.epochs"]
    assert demo.extra["scaling.cpus_per_worker"] == 0.5
    # The command line wins over the demo and smoke budgets; resources map to the trial's scaling section.
    smoke = _plan("--smoke", "--set", "train.epochs=4", "--num-samples", "3", "--gpus-per-worker", "0.5",
                  "--cpus-per-worker", "2", space="search_spaces/falldown.yaml")
    assert smoke.options.name == "tune_falldown_smoke" and smoke.options.num_samples == 3
    assert smoke.options.max_concurrent_trials == 2 and smoke.space.metric == "val/mean_class_accuracy"
    assert smoke.extra["train.epochs"] == 4 and smoke.extra["scaling.use_gpu"] is True
    assert smoke.extra["scaling.gpus_per_worker"] == 0.5 and smoke.extra["scaling.cpus_per_worker"] == 2
    data = tmp_path / "skeletons"
    data.mkdir()
    real = _plan("--data", str(data), "--num-samples", "40")
    assert not real.demo and real.extra == {"data.path": str(data)} and real.options.name == "tune_fight"
    assert real.options.num_samples == 40 and real.options.max_concurrent_trials == 2
    with pytest.raises(ConfigError, match="no such file or folder"):
        _plan("--data", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"model\.dropuot: unknown field"):
        _plan("--set", "model.dropuot=0.2")
    with pytest.raises(ConfigError, match="'val/AP' is not reported by the stgcn trainer"):
        _plan("--metric", "val/AP")
    # one line naming the flag (it printed pydantic's block naming TuneOptions' field and its docs URL)
    with pytest.raises(ConfigError, match=r"^command line: --num-samples: Input should be greater than or equal "
                                          r"to 1 \(got 0\)$"):
        _plan("--num-samples", "0")
    with pytest.raises(ConfigError, match=r"^command line: --progress-interval: Input should be greater than 0"):
        _plan("--progress-interval", "0")   # the field is progress_interval_s; the flag has no _s
    for flag in ("--gpus-per-worker", "--pick-within"):   # -1 GPUs ran on CPUs
        with pytest.raises(ConfigError, match=f"^{flag} must be >= 0, got -1.0$"):
            _plan(flag, "-1")
    with pytest.raises(ConfigError, match="'model.drop out': 'drop out' is not a field name"):
        _plan("--set", "model.drop out=0.2")
    # another metric without a mode: the space's 'max' would have maximised a loss
    with pytest.raises(ConfigError, match="not the space's metric .* say --mode max or --mode min"):
        _plan("--metric", "train/loss")
    assert _plan("--metric", "train/loss", "--mode", "min").options.mode == "min"


def test_resuming_with_another_metric_mode_or_folds_is_refused(tmp_path):
    """Those options were said to be 'ignored' on resume, but the summary ranked by the new mode (naming the worst
    trial best) and --folds/--seed built other folds for the unfinished trials."""
    from recognizer_core.config import ConfigError
    from recognizer_core.storage import join_uri, write_text
    from recognizer_core.tune.tuner import REQUEST_FILE, check_resumable, request_record

    first = _plan("--storage-path", str(tmp_path), "--name", "exp", "--folds", "3")  # a name: --folds sets none
    write_text(join_uri(first.options.storage_path, first.options.name, REQUEST_FILE),
               json.dumps(request_record(first.space, first.extra, TrainJobConfig, first.options)))
    same = _plan("--storage-path", str(tmp_path), "--name", "exp", "--folds", "3", "--mode", "max",
                 "--num-samples", "9")
    assert check_resumable(same.space, TrainJobConfig, same.options, extra_overrides=same.extra)
    for argv, said in [(["--mode", "min"], "mode 'max' (now mode 'min')"), (["--folds", "5"], "folds 3 (now folds 5)"),
                       (["--seed", "1"], "seed 0 (now seed 1)")]:
        plan = _plan("--storage-path", str(tmp_path), "--name", "exp", "--folds", "3", *argv)
        with pytest.raises(ConfigError, match=re.escape(said)):
            check_resumable(plan.space, TrainJobConfig, plan.options, extra_overrides=plan.extra)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_errored_trial_is_reported_and_the_search_goes_on(tmp_path, ray_local):
    """One trial's dataset is missing: that trial errors, the other finishes, the search returns normally."""
    import yaml

    from recognizer_core.skeleton.demo_data import write_demo_dataset
    from recognizer_core.train.stgcn.job import build_trainer
    from recognizer_core.tune.results import records_from_grid
    from recognizer_core.tune.tuner import TuneOptions, run_tuning

    good = str(write_demo_dataset("fight", tmp_path / "demo", num_clips=24, seed=0))
    bad = str(tmp_path / "no_such_dataset")
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump({
        "job": "stgcn", "base_config": str(REPO / "configs" / "fight_stable.yaml"), "metric": "val/acc_top1",
        "params": {"data.path": {"type": "choice", "values": [good, bad]}},
        "start_with": [{"data.path": good}, {"data.path": bad}]}))
    space = load_search_space(space_file, TrainJobConfig, job="stgcn", metrics=stgcn_job.METRICS)
    fast = _space().demo | {"train.epochs": 1}
    options = TuneOptions(name="errors", storage_path=str(tmp_path / "exp"), num_samples=2,
                          max_concurrent_trials=2, scheduler="fifo")
    run = run_tuning(space, TrainJobConfig, build_trainer, options, extra_overrides=fast)
    records = {r.params["data.path"]: r for r in records_from_grid(run.result_grid)}
    assert set(records) == {good, bad}
    assert records[good].error is None and records[good].reports[-1]["epoch"] == 1
    assert records[bad].error is not None and "no_such_dataset" in records[bad].error, records[bad].error
    summary = write_summary(list(records.values()), space, TrainJobConfig, metric="val/acc_top1", mode="max",
                            extra=fast, out_dir=tmp_path / "summary", experiment_uri=run.experiment_uri)
    assert summary["status_counts"] == {"ok": 1, "error": 1}
    assert summary["best_params"] == {"data.path": good}


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_fold_run_finished_before_the_driver_died_reports_its_final_metrics(ray_local, tmp_path):
    """Resuming a cross-validated trial whose fold had finished its Train run: the run continues with nothing
    left to train and reports nothing. Until 2026-12-05 only a plain trial's callback got the final metrics
    again, so that fold left every merged epoch without the metric and the trial ended as 'no_metric'."""
    from ray.util.queue import Queue

    from recognizer_core.train.stgcn.job import build_trainer
    from recognizer_core.tune.trial_runs import FoldReport
    from recognizer_core.tune.tuner import TrialDriver, schedule_of

    space = _space()
    extra = {**space.demo, "train.epochs": 1, "data.demo_num_clips": 40, "scaling.num_workers": 1,
             "scaling.cpus_per_worker": 0.5, "model.num_stages": 2, "model.base_channels": 8,
             "model.inflate_stages": [2], "model.down_stages": [2], "data.loader_workers": 0}
    cfg = space.build_config(TrainJobConfig, {}, extra)
    driver = TrialDriver(space, TrainJobConfig, build_trainer, extra, str(tmp_path), "val/acc_top1", "max")

    def fit_fold() -> list[dict]:
        reports = Queue(actor_options={"num_cpus": 0})
        driver._fit(cfg, str(tmp_path / "trial_x"), "train_fold0", FoldReport(reports, 0, schedule_of(cfg), {}))
        got = []
        while not reports.empty():
            got.append(reports.get()[1])
        return got

    first = fit_fold()
    assert [r["epoch"] for r in first] == [1] and 0 <= first[0]["val/acc_top1"] <= 1
    again = fit_fold()   # the driver died after the fold's last epoch; the resumed trial fits the run again
    assert [(r["epoch"], r["val/acc_top1"]) for r in again] == [(1, first[0]["val/acc_top1"])]
