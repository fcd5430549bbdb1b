"""A cross-validated search and a multi-objective search on the demo data, run as a user runs them
(`rayjobs/tune_fight.py --smoke ...` in a subprocess), with the smallest budgets. The command joins the session's
local Ray (RAY_ADDRESS, as `ray job submit` sets it) instead of starting and stopping a private one each time;
that a bare command starts a private Ray is test_cluster_runtime's and test_tuner's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recognizer_core.config import load_config
from recognizer_core.train.stgcn.config import TrainJobConfig

REPO = Path(__file__).resolve().parents[1]


def _run(ray_local, tmp_path: Path, *extra: str) -> str:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO),
           "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    cmd = [sys.executable, "rayjobs/tune_fight.py", "--smoke", "--storage-path", str(tmp_path),
           "--progress-interval", "10", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "[tune] running on the Ray cluster at" in log  # the session's Ray, not a private one
    return log


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_cross_validated_search_then_one_test_score(ray_local, tmp_path):
    # One trial (the preset, the space's start point): its 2 fold runs side by side, then the winner's retrain and
    # test. The preset-vs-winner paired test itself is test_tune_logic's (test_paired_test_over_folds).
    log = _run(ray_local, tmp_path, "--folds", "2", "--num-samples", "1")
    exp = tmp_path / "tune_fight_smoke_cv2"
    summary = json.loads((exp / "summary" / "summary.json").read_text())
    # The summary leads with the winner's single score on the test split the search never saw.
    assert list(summary)[0] == "final_test" and 0 <= summary["final_test"]["acc_top1"] <= 1
    assert summary["final_test"]["num_samples"] == 7 and (exp / "summary" / "final" / "final_test").is_dir()
    assert log.index("[tune] FINAL:") < log.index("[tune] best trial")
    # Every trial trained one model per fold (its own Train run) and reported their mean and spread.
    table = pd.read_parquet(exp / "summary" / "results.parquet")
    assert set(table["status"]) == {"ok"} and len(table) == 1
    for trial_id in table["trial_id"]:
        for fold in (0, 1):
            assert list((exp / f"trial_{trial_id}" / f"train_fold{fold}").glob("checkpoint_epoch_*")), (trial_id, fold)
    row = table.iloc[0]
    folds = [row["at best: val/acc_top1_fold0"], row["at best: val/acc_top1_fold1"]]
    assert row["best val/acc_top1"] == pytest.approx(sum(folds) / 2)
    assert row["at best: val/acc_top1_std"] == pytest.approx(abs(folds[0] - folds[1]) / 2 ** 0.5)
    preset = summary["preset"]
    assert "+-" in preset["cv"]["winner"] and "+-" in preset["cv"]["preset"] and preset["cv"]["verdict"]
    assert summary["compute"]["trial_epochs"] == 2 * table["last epoch"].sum()  # folds x epochs of each trial
    assert "[tune] progress" in log and "[tune] cross-validated (mean +- std over folds)" in log


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_multi_objective_search_pareto_front(ray_local, tmp_path):
    # 2 trials side by side (the front's logic on more points is test_tune_logic's pareto tests).
    log = _run(ray_local, tmp_path, "--objective", "latency", "--num-samples", "2", "--max-concurrent-trials", "2",
               "--scheduler", "fifo")
    out = tmp_path / "tune_fight_smoke_mo" / "summary"
    summary = json.loads((out / "summary.json").read_text())
    pareto = summary["pareto"]
    table = pd.read_csv(out / "pareto.csv")
    assert len(table) == 2 and (table["model/latency_ms"] > 0).all()
    front = table[table["on_front"]]
    # No front point is dominated by any trial (better or equal metric and lower latency).
    for _, p in front.iterrows():
        dominated = (table["val/acc_top1"] >= p["val/acc_top1"]) & (table["model/latency_ms"] <= p["model/latency_ms"]) \
            & ((table["val/acc_top1"] > p["val/acc_top1"]) | (table["model/latency_ms"] < p["model/latency_ms"]))
        assert not dominated.any(), p
        cfg = load_config(TrainJobConfig, out / "pareto" / p["trial_id"] / "best_config.yaml")
        assert cfg.train.epochs == 2
    assert set(front["trial_id"]) == set(pareto["configs"])
    pick = pareto["pick"]
    best = front["val/acc_top1"].max()
    within = front[front["val/acc_top1"] >= best - 0.01]
    assert pick["model/latency_ms"] == within["model/latency_ms"].min()
    assert "Pareto pick" in (out / "best_config.yaml").read_text().splitlines()[0]
    # One exported model, the pick's: its own run folder's best .pth, the same bytes.
    assert summary["best_trial"] == pick["trial_id"]
    (pth,) = out.glob("best_acc_top1_epoch_*.pth")
    own = tmp_path / "tune_fight_smoke_mo" / f"trial_{pick['trial_id']}" / "train" / pth.name
    assert pth.read_bytes() == own.read_bytes()
    assert (out / "plots" / "pareto.png").stat().st_size > 10_000
    assert "[tune] Pareto front (model/latency_ms)" in log
