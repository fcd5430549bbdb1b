"""What the jobs' log lines say: the demo dataset a run uses (its final folder, not the temporary one it was
built in), the test stage at the training run's Ray log level, and a search naming the trials ASHA stopped."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from recognizer_core.train.stgcn.config import TrainJobConfig

REPO = Path(__file__).resolve().parents[1]


def test_the_demo_dataset_log_line_names_the_folder_the_run_trains_on(tmp_path, caplog):
    """prepare_dataset writes the demo data in a temporary folder and renames it into place: the one line that
    names the data named the temporary folder, gone by then."""
    from recognizer_core.train.stgcn.dataset_source import prepare_dataset

    cfg = TrainJobConfig.model_validate({"data": {"demo_num_clips": 8}}).data
    with caplog.at_level(logging.WARNING):
        used = prepare_dataset(cfg, tmp_path)
    named = [m[1] for r in caplog.records for m in [re.search(r"wrote SYNTHETIC demo dataset (\S+):",
                                                                r.getMessage())] if m]
    assert named == [str(used)]
    assert (Path(named[0]) / "_dataset.json").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert prepare_dataset(cfg, tmp_path) == used  # reused: nothing written, nothing announced
    assert "wrote SYNTHETIC demo dataset" not in caplog.text


@pytest.mark.parametrize("level", ["WARNING", "INFO"])
def test_the_test_trainer_runs_at_the_training_runs_ray_log_level(tmp_path, level):
    """The test stage (train_stgcn's test after training, test_stgcn) printed Ray Train's INFO lines ('Attempting to
    start training worker group...') that training keeps off: its RunConfig had no logging_config. (The Ray tests'
    runtime does not forward worker logs, so the RunConfig is what can be checked.)"""
    from recognizer_core.train.stgcn.job import build_test_trainer, default_run_config

    cfg = TrainJobConfig.model_validate({"run": {"ray_log_level": level, "storage_path": str(tmp_path)}})
    trainer = build_test_trainer(cfg, tmp_path / "model.pth", tmp_path / "test", "val",
                                 dataset_path=str(tmp_path / "data"))
    assert trainer.run_config.logging_config.log_level == default_run_config(cfg).logging_config.log_level == level


def test_a_trial_asha_stopped_is_logged_as_stopped_and_results_csv_agrees(capsys):
    """Tune calls on_trial_complete for a trial ASHA stopped as for one that ran all its epochs: the log said
    'finished' for both while results.csv said stopped_early=True."""
    from recognizer_core.tune.progress import SearchProgress
    from recognizer_core.tune.results import TrialRecord, results_table
    from recognizer_core.tune.search_space import load_search_space
    from recognizer_core.tune import stgcn_job

    reports = {"short": [{"epoch": 1, "val/acc_top1": 0.5}],
               "full": [{"epoch": e, "val/acc_top1": 0.5 + e / 100} for e in range(1, 11)]}
    trials = [SimpleNamespace(trial_id=t, status="RUNNING", last_result={}, config={}) for t in reports]
    progress = SearchProgress("val/acc_top1", "max", total=2, concurrency=2, max_epochs=10, interval_s=1e9,
                              epochs_of=lambda params: params.get("train.epochs", 10))
    for trial in trials:
        for r in reports[trial.trial_id]:
            progress.on_trial_result(0, trials, trial, r)
            trial.last_result = r  # as Tune records it
        trial.status = "TERMINATED"
        progress.on_trial_complete(0, trials, trial)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "epoch=" not in ln]
    assert lines == ["[tune] trial short stopped early after epoch 1/10", "[tune] trial full finished"]

    # A space that tunes the epochs: a trial that ran all 6 of its own finished, though the longest run has 10
    # (it was logged 'stopped by ASHA after epoch 6/10' while results.csv said stopped_early=False)
    own = SimpleNamespace(trial_id="own", status="TERMINATED", last_result={"epoch": 6}, config={"train.epochs": 6})
    progress.on_trial_complete(0, trials + [own], own)
    assert capsys.readouterr().out == "[tune] trial own finished\n"

    space = load_search_space(REPO / "search_spaces" / "fight.yaml", TrainJobConfig, job="stgcn",
                              metrics=stgcn_job.METRICS)
    params = space.start_points()[0]
    table = results_table([TrialRecord(t, params, reports[t]) for t in reports], space, "val/acc_top1", "max",
                          time_attr="epoch", max_t=10)
    assert dict(zip(table["trial_id"], table["stopped_early"])) == {"short": True, "full": False}

    # Without ASHA (FIFO) no scheduler stops a trial: a shorter one is not said to be stopped by one.
    fifo = SearchProgress("val/acc_top1", "max", total=1, concurrency=1, max_epochs=10, interval_s=1e9,
                          early_stopping=False)
    fifo.on_trial_complete(0, trials[:1], trials[0])
    assert capsys.readouterr().out == "[tune] trial short finished\n"
