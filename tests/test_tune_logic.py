"""The tuner's pure logic, each against the flaw it fixes: ASHA rungs on validations (no placeholder 0),
fold averaging, folds grouped by source video, the paired test, the Pareto front and pick, the error head,
the progress line (the tune jobs' --help: tests/test_help.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.store import SkeletonDataset, write_dataset
from recognizer_core.tune.compare import paired_test
from recognizer_core.tune.folds import assign_folds, fold_overrides, write_fold_store
from recognizer_core.tune.pareto import pareto_mask, pick
from recognizer_core.tune.records import TrialRecord, best_report, error_head
from recognizer_core.tune.reports import (FoldAggregator, clean_report, estimate_left, progress_line,
                                          validated_epochs)

REPO = Path(__file__).resolve().parents[1]


def test_reports_carry_val_metrics_only_when_measured_and_count_validations():
    schedule = validated_epochs(epochs=7, val_interval=2)
    assert schedule == [2, 4, 6, 7]  # every 2nd epoch and always the last
    # An older loop's report at epoch 1 carries the initial 0 (flagged not validated): it must not reach ASHA.
    stale = clean_report({"epoch": 1, "train/loss": 0.7, "val/acc_top1": 0.0, "val/validated": 0}, schedule)
    assert stale == {"epoch": 1, "train/loss": 0.7, "val_round": 0}
    # Even unflagged, a val/* value at an epoch the schedule did not validate is a placeholder.
    assert "val/acc_top1" not in clean_report({"epoch": 3, "val/acc_top1": 0.5}, schedule)
    ok = clean_report({"epoch": 4, "val/acc_top1": 0.8, "val/validated": 1}, schedule)
    assert ok["val/acc_top1"] == 0.8 and ok["val_round"] == 2
    # The table and the best epoch skip reports without the metric: missing is never 0.
    rec = TrialRecord("t", {}, [clean_report({"epoch": e, "val/acc_top1": v, "val/validated": int(e in schedule)},
                                             schedule) for e, v in [(1, 0.0), (2, 0.6), (3, 0.6), (4, 0.6)]])
    assert best_report(rec, "val/acc_top1", "max")["epoch"] == 2  # first epoch to reach the best
    assert best_report(rec, "val/acc_top1", "min")["epoch"] == 2  # epoch 1's 0.0 was never measured


def test_fold_aggregator_reports_each_epoch_once_all_folds_reached_it():
    agg = FoldAggregator(3, ("val/acc_top1",))
    assert agg.add(0, {"epoch": 1, "train/loss": 1.0, "val_round": 0, "model/latency_ms": 4.0}) == []
    assert agg.add(1, {"epoch": 1, "train/loss": 2.0, "val_round": 0, "model/latency_ms": 4.0}) == []
    (e1,) = agg.add(2, {"epoch": 1, "train/loss": 3.0, "val_round": 0, "model/latency_ms": 4.0})
    assert e1["train/loss"] == 2.0 and "val/acc_top1" not in e1 and e1["cv/folds"] == 3
    assert e1["model/latency_ms"] == 4.0  # a measured objective (--folds with --objective) is carried, not dropped
    for f, v in enumerate([0.5, 0.7, 0.9]):
        out = agg.add(f, {"epoch": 2, "val/acc_top1": v, "train/loss": 1.0, "val_round": 1})
    (e2,) = out
    assert e2["val/acc_top1"] == pytest.approx(0.7) and e2["val/acc_top1_std"] == pytest.approx(0.2)
    assert [e2[f"val/acc_top1_fold{f}"] for f in range(3)] == [0.5, 0.7, 0.9] and e2["val_round"] == 1
    # Fold 2 stops early after epoch 2: later epochs count its last validated values.
    assert agg.add(0, {"epoch": 3, "val/acc_top1": 0.6, "val_round": 2}) == []
    assert agg.add(1, {"epoch": 3, "val/acc_top1": 0.8, "val_round": 2}) == []
    (e3,) = agg.finish(2)
    assert e3["val/acc_top1"] == pytest.approx((0.6 + 0.8 + 0.9) / 3)


def test_folds_never_split_a_source_video_and_stay_balanced():
    groups = [f"v{i // 3}" for i in range(60)]  # 20 videos x 3 windows
    labels = [(i // 3) % 2 for i in range(60)]
    folds = assign_folds(groups, labels, 4, seed=1)
    for g in set(groups):
        assert len({f for f, gg in zip(folds, groups) if gg == g}) == 1
    sizes = [folds.count(f) for f in range(4)]
    assert max(sizes) - min(sizes) <= 3 and all(
        {lab for f2, lab in zip(folds, labels) if f2 == f} == {0, 1} for f in range(4))
    assert assign_folds(groups, labels, 4, seed=1) == folds  # deterministic
    with pytest.raises(ValueError, match="cannot make 4 folds"):
        assign_folds(["a", "a", "b"], [0, 1, 0], 4)


def test_fold_store_is_read_by_split_name(tmp_path):
    import numpy as np

    clips = []
    for i in range(24):
        split = "test" if i >= 20 else ("val" if i >= 16 else "train")
        clips.append(SkeletonClip(clip_id=f"c{i}", keypoint=np.ones((1, 4, 17, 2), np.float32),
                                  keypoint_score=np.ones((1, 4, 17), np.float32), label=i % 2, split=split,
                                  source_video=f"video{i // 4}", img_shape=(64, 64), total_frames=4))
    src = write_dataset(clips, tmp_path / "src", label_names=["a", "b"])
    info = write_fold_store(src, tmp_path / "folds", 2, seed=0)
    assert info["trainval"] == 20 and info["test"] == 4 and sum(f["val"] for f in info["folds"]) == 20
    ds = SkeletonDataset(info["path"])
    for f, o in enumerate(fold_overrides(info["path"], 2)):
        train = ds.index(o["data.train_split"], columns=["clip_id", "source_video"])
        val = ds.index(o["data.val_split"], columns=["clip_id", "source_video"])
        assert len(train) + len(val) == 20
        assert not set(train["source_video"].to_pylist()) & set(val["source_video"].to_pylist())
    assert sorted(ds.index("test", columns=["clip_id"])["clip_id"].to_pylist()) == ["c20", "c21", "c22", "c23"]
    assert len(SkeletonDataset(src).index("train")) == 16  # the source is untouched


def test_folds_of_an_experiment_on_object_storage_go_to_an_absolute_local_folder(tmp_path, monkeypatch):
    """--folds with --storage-path s3://...: Path('s3://b/...') made the relative folder 's3:/b/...' in the
    driver's working directory, a path no trial (in its own directory, or on another node) could find."""
    from recognizer_core.config import validate_config
    from recognizer_core.train.stgcn.config import TrainJobConfig
    from recognizer_core.tune.stgcn_job import prepare_folds

    import numpy as np

    clips = [SkeletonClip(clip_id=f"c{i}", keypoint=np.ones((1, 4, 17, 2), np.float32),
                          keypoint_score=np.ones((1, 4, 17), np.float32), label=i % 2,
                          split="val" if i >= 12 else "train", source_video=f"video{i // 2}", img_shape=(64, 64),
                          total_frames=4) for i in range(16)]
    src = write_dataset(clips, tmp_path / "src", label_names=["a", "b"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    base = validate_config(TrainJobConfig, {"data": {"path": str(src)}}, "test")
    info = prepare_folds(str(src), base, "s3://bucket/tune/fight_cv", 2, 0)
    assert Path(info["path"]).is_absolute() and "fight_cv_folds_k2_seed0" in info["path"]
    assert SkeletonDataset(info["path"]).splits() and not (tmp_path / "s3:").exists()


def test_paired_test_over_folds():
    noise = paired_test([0.80, 0.70, 0.90, 0.75], [0.78, 0.74, 0.86, 0.77])
    assert noise["p_value"] > 0.05 and noise["verdict"].startswith("within noise")
    clear = paired_test([0.90, 0.91, 0.93, 0.92, 0.90], [0.70, 0.72, 0.71, 0.69, 0.73])
    assert clear["p_value"] < 0.001 and clear["verdict"].startswith("more than noise")
    assert paired_test([0.5, 0.5], [0.5, 0.5])["p_value"] == 1.0
    # the winner was chosen on these folds among 12 trials: the p-value is optimistic, and the verdict says so
    chosen = paired_test([0.90, 0.91, 0.93, 0.92, 0.90], [0.70, 0.72, 0.71, 0.69, 0.73], selected_from=12)
    assert chosen["verdict"].startswith("more than noise") and "best of 12 trials" in chosen["verdict"]


def test_pareto_front_and_pick():
    rows = [{"trial_id": "a", "m": 0.90, "lat": 10.0}, {"trial_id": "b", "m": 0.895, "lat": 4.0},
            {"trial_id": "c", "m": 0.80, "lat": 5.0}, {"trial_id": "d", "m": 0.70, "lat": 1.0}]
    mask = pareto_mask(rows, "m", "max", ["lat"])
    assert mask == [True, True, False, True]  # c is dominated by b (more accurate and faster)
    front = [r for r, m in zip(rows, mask) if m]
    assert pick(front, "m", "max", "lat", within=0.01)["trial_id"] == "b"  # fastest within 1 point
    assert pick(front, "m", "max", "lat", within=0.0)["trial_id"] == "a"


def test_error_keeps_exception_type_and_head_of_message():
    oom = ("Traceback (most recent call last):\n  File \"x.py\", line 3, in f\n"
           "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.\n"
           "Memory on the node was 7.60GB / 8.00GB (0.95), which exceeds the threshold (0.95). " + "x" * 900 +
           "\nSet max_restarts and max_task_retries to enable retry when the task crashes due to OOM. "
           "To adjust the kill threshold, set the environment variable `RAY_memory_usage_threshold`.")
    head = error_head(oom)
    assert head.startswith("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low")
    assert len(head) <= 300 and "max_task_retries" not in head
    try:
        try:
            raise FileNotFoundError("no such dataset /data/x")
        except FileNotFoundError as inner:
            raise RuntimeError("worker group failed") from inner
    except RuntimeError as err:
        assert error_head(err) == "FileNotFoundError: no such dataset /data/x"


def test_progress_line_and_estimate():
    left = estimate_left({"t1": 2}, {"t1": 20.0}, [], ["t1"], pending=3, max_epochs=10, concurrency=2)
    assert left == pytest.approx((3 * 100 + 80) / 2)  # 10 s/epoch x 10 epochs per trial
    assert estimate_left({}, {}, [], [], pending=4, max_epochs=10, concurrency=2) is None
    line = progress_line({"TERMINATED": 1, "RUNNING": 2, "ERROR": 1}, 6, ("abc", 0.9123), "val/acc_top1", 75, left)
    assert line == ("[tune] progress 1:15 | trials 1 done, 2 running, 2 pending (1 errored) of 6 | best "
                    "val/acc_top1 0.9123 (trial abc) | left 3:10 at most (ASHA stops some trials sooner)")


def test_plots_do_not_import_results():
    # results.py imports plots.py; plots.py builds on records.py only (the old results <-> plots cycle).
    code = ("import sys, recognizer_core.tune.plots; "
            "assert 'recognizer_core.tune.results' not in sys.modules, 'cycle'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_measured_model_cost():
    from recognizer_core.config import load_config
    from recognizer_core.train.stgcn.config import TrainJobConfig
    from recognizer_core.tune.stgcn_job import measure_model

    preset = measure_model(load_config(TrainJobConfig, REPO / "configs" / "fight_demo.yaml"), repeats=3)
    light = measure_model(load_config(TrainJobConfig, REPO / "configs" / "fight_demo.yaml", [
        "model.base_channels=32", "model.num_stages=3", "model.inflate_stages=[]", "model.down_stages=[]"]),
        repeats=3)
    assert preset["model/params_m"] == pytest.approx(0.275452) and light["model/params_m"] == pytest.approx(0.017937)
    assert preset["model/latency_ms"] > 0 and light["model/latency_ms"] > 0


def _fold_reports(agg: FoldAggregator, events: list[tuple], sched: list[int]) -> list[dict]:
    """Feed ('add', fold, epoch, value) / ('finish', fold) events; returns every merged report."""
    out = []
    for ev in events:
        if ev[0] == "finish":
            out += agg.finish(ev[1])
        else:
            out += agg.add(ev[1], clean_report({"epoch": ev[2], "val/acc_top1": ev[3], "train/loss": 0.1}, sched))
    return out


def test_fold_means_after_a_resume_are_ones_that_happened():
    """A resumed cross-validated trial: its folds continue from their own latest checkpoints, an epoch or more
    apart. The aggregator filled a fold's missing earlier epochs with its final value (a later epoch's): epoch 6
    was reported as 0.77 where the folds' epoch-6 mean was 0.69, and a best of 0.85 that never happened."""
    m, sched = "val/acc_top1", validated_epochs(10, 1)
    # Case 1: fold 0 resumes after its epoch-6 checkpoint, fold 1 after epoch 5; both run to epoch 10.
    value = {0: {e: round(0.50 + 0.04 * e, 4) for e in range(1, 11)},
             1: {e: round(0.40 + 0.04 * e, 4) for e in range(1, 11)}}
    events = []
    for e in range(6, 11):
        events += ([("add", 0, e + 1, value[0][e + 1])] if e < 10 else []) + [("add", 1, e, value[1][e])]
    reps = _fold_reports(FoldAggregator(2, (m,)), events + [("finish", 0), ("finish", 1)], sched)
    assert [r["epoch"] for r in reps] == [7, 8, 9, 10]  # epoch 6: fold 0 will never report it again
    for r in reps:
        assert r[m] == pytest.approx((value[0][r["epoch"]] + value[1][r["epoch"]]) / 2)
        assert [r[f"{m}_fold{f}"] for f in (0, 1)] == [value[0][r["epoch"]], value[1][r["epoch"]]]
    # Case 2: fold 0 had finished all 10 epochs (its continued run repeats only its final metrics), fold 1
    # resumes after epoch 5. Only epoch 10 has real values from both folds.
    f0, f1 = {10: 0.90}, {6: 0.80, 7: 0.70, 8: 0.70, 9: 0.70, 10: 0.70}
    events = [("add", 0, 10, f0[10]), ("add", 1, 6, f1[6]), ("finish", 0)]
    events += [("add", 1, e, f1[e]) for e in range(7, 11)] + [("finish", 1)]
    reps = _fold_reports(FoldAggregator(2, (m,)), events, sched)
    assert [(r["epoch"], r[m]) for r in reps] == [(10, pytest.approx(0.80))]
    # A fold that finished early still stands in with its last values, but only for LATER epochs.
    events = [("add", 0, 1, 0.5), ("add", 1, 1, 0.7), ("add", 1, 2, 0.8), ("finish", 0), ("add", 1, 3, 0.9)]
    reps = _fold_reports(FoldAggregator(2, (m,)), events, sched)
    assert [(r["epoch"], r[m]) for r in reps] == [(1, pytest.approx(0.6)), (2, pytest.approx(0.65)),
                                                  (3, pytest.approx(0.7))]


def test_asha_max_t_is_the_number_of_validations_a_trial_runs():
    """`--max-t 5` ran 6 validations: ASHA got max_t + 1, meant only for the default (the whole schedule), where
    a trial should end by itself instead of being stopped at its last validation."""
    from types import SimpleNamespace

    from ray.tune.schedulers import FIFOScheduler

    from recognizer_core.tune.tuner import TuneOptions, asha_or_fifo

    def stopped_at(max_t, schedule=validated_epochs(15, 1)):
        asha = asha_or_fifo(TuneOptions(name="x", max_t=max_t), schedule, schedule[-1], "val/acc_top1", "max")
        trial = SimpleNamespace(trial_id="t1")
        asha.on_trial_add(None, trial)
        for r in range(1, len(schedule) + 1):  # a single trial: always the rung's best, only max_t stops it
            if asha.on_trial_result(None, trial, {"val_round": r, "val/acc_top1": 0.5 + r / 100}) != "CONTINUE":
                return r
        return None  # ran its whole schedule: it ends by itself

    assert stopped_at(5) == 5 and stopped_at(1) == 1
    assert stopped_at(None) is None and stopped_at(15) is None and stopped_at(40) is None
    assert isinstance(asha_or_fifo(TuneOptions(name="x", scheduler="fifo"), None, None, "m", "max"), FIFOScheduler)


def test_nsga2_evolves_within_the_search_budget():
    """NSGAIISampler's default population of 50 made its generation 0 (random sampling) the whole of any search
    of <= 50 trials: the default 20-trial --mo-sampler nsga2 search was a random search."""
    import optuna

    from recognizer_core.train.stgcn.config import TrainJobConfig
    from recognizer_core.tune.search_space import load_search_space
    from recognizer_core.tune.tuner import TuneOptions, _searcher

    space = load_search_space(REPO / "search_spaces" / "fight.yaml", TrainJobConfig, job="stgcn")
    options = TuneOptions(name="x", objectives=["model/latency_ms"], mo_sampler="nsga2", num_samples=20)
    sampler = _searcher(space, "val/acc_top1", "max", options)._sampler
    assert isinstance(sampler, optuna.samplers.NSGAIISampler)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for i in range(options.num_samples):
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, [(i * 7 % 11) / 11, (i * 5 % 13) / 13])
    generations = {t.system_attrs.get("NSGAIISampler:generation") for t in study.trials}
    assert max(g for g in generations if g is not None) >= 2  # 20 trials in generations of 5: 0..3


def test_paired_test_counts_only_the_ranked_trials():
    """"best of 3 trials" when only 2 had a metric: errored and unmeasured trials were never the winner's rivals."""
    from recognizer_core.train.stgcn.config import TrainJobConfig
    from recognizer_core.tune.compare import preset_comparison
    from recognizer_core.tune.search_space import load_search_space

    space = load_search_space(REPO / "search_spaces" / "fight.yaml", TrainJobConfig, job="stgcn")
    m = "val/acc_top1"

    def cv(folds):
        return {"epoch": 2, m: sum(folds) / len(folds), "cv/folds": len(folds),
                **{f"{m}_fold{k}": v for k, v in enumerate(folds)}}

    preset = TrialRecord("p", dict(space.start_points()[0]), [cv([0.60, 0.62, 0.58])])
    winner = TrialRecord("w", {"depth": "deep"}, [cv([0.70, 0.71, 0.69])])
    records = [preset, winner, TrialRecord("e", {}, [], error="RuntimeError: boom"),
               TrialRecord("n", {}, [{"epoch": 1, "train/loss": 0.5}])]
    out = preset_comparison(records, space, m, "max", winner, {"trial_epochs": 6})
    assert out["cv"]["selected_from"] == 2 and "best of 2 trials" in out["cv"]["verdict"]
