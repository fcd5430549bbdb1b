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
