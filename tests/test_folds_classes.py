"""--folds K with a rare class in fewer source videos than K: a cv<k>_val was written without a clip of that class,
silently. Its mean class accuracy then averages the other classes alone (no false alarm scores 1.0, one false alarm
in 42 clips 0.488) and the mean over folds that TPE / ASHA rank by reversed the ranking of two detectors. The fold
view is now refused before Ray starts, in one line naming the class, its video count and the fix."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recognizer_core import ray_runtime
from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.store import write_dataset
from recognizer_core.tune.folds import write_fold_store

NAMES = ["Normal", "Falldown"]


def _dataset(path, falldown_videos: int = 2, normal_videos: int = 10) -> str:
    """Videos of 3 windows each, one class per video (as extraction's class folders give), train/val mixed; a
    few test clips of both classes."""
    clips = []
    kp, sc = np.ones((1, 4, 17, 2), np.float32), np.ones((1, 4, 17), np.float32)
    for v in range(normal_videos + falldown_videos):
        for w in range(3):
            clips.append(SkeletonClip(clip_id=f"v{v}_w{w}", keypoint=kp, keypoint_score=sc,
                                      label=int(v >= normal_videos), split="val" if v % 4 == 3 else "train",
                                      source_video=f"video{v}.mp4", img_shape=(64, 64), total_frames=4))
    clips += [SkeletonClip(clip_id=f"t{i}", keypoint=kp, keypoint_score=sc, label=i % 2, split="test",
                           source_video=f"test{i}.mp4", img_shape=(64, 64), total_frames=4) for i in range(4)]
    return str(write_dataset(clips, path, label_names=NAMES))


def test_more_folds_than_videos_of_a_class_is_refused_naming_the_class_and_the_fix(tmp_path):
    ds = _dataset(tmp_path / "ds")
    with pytest.raises(ValueError) as err:
        write_fold_store(ds, tmp_path / "folds3", 3, seed=0)
    line = str(err.value)
    assert "\n" not in line and "class 'Falldown'" in line and "2 source video(s)" in line, line
    assert "--folds 2 or fewer" in line and "add videos of class 'Falldown'" in line and "_val" in line, line
    assert not (tmp_path / "folds3").exists()  # refused before the view was written

    info = write_fold_store(ds, tmp_path / "folds2", 2, seed=0)  # as many folds as videos of the class: works
    split_labels = json.loads((tmp_path / "folds2" / "_dataset.json").read_text())["split_labels"]
    assert len(info["folds"]) == 2
    for f in range(2):
        assert set(split_labels[f"cv{f}_val"]) == {"0", "1"}, split_labels


def test_one_video_of_a_class_leaves_no_cross_validation_and_unnamed_classes_are_numbered():
    from recognizer_core.tune.folds import check_every_class_in_each_fold

    # one Falldown video: no --folds value keeps it in every val fold
    with pytest.raises(ValueError, match=r"class 'Falldown' has 1 source video\(s\).*tune without --folds"):
        check_every_class_in_each_fold(["a", "b", "c"], [0, 0, 1], [0, 1, 1], 2, NAMES, "ds")
    # enough videos of the class, but mostly another class's clips, placed by it into the same folds
    groups, labels = ["a", "a", "a", "b", "b", "b", "c", "c"], [0, 0, 1, 0, 0, 1, 0, 0]
    with pytest.raises(ValueError, match=r"class 1 has 2 source video\(s\), so cv1_val .*another --seed"):
        check_every_class_in_each_fold(groups, labels, [0, 0, 0, 0, 0, 0, 1, 1], 2, [], "ds")
    check_every_class_in_each_fold(groups, labels, [0, 0, 0, 1, 1, 1, 1, 1], 2, NAMES, "ds")  # both in each fold


class RayStarted(Exception):
    """Raised by the start_ray_or_exit stub: the job got as far as starting Ray."""


def test_tune_job_refuses_the_folds_in_one_line_before_ray(tmp_path, monkeypatch, capsys):
    from rayjobs import tune_fight  # tune_falldown.py is this main with search_spaces/falldown.yaml

    starts = []

    def stub(job, address=None, **kwargs):
        starts.append(job)
        raise RayStarted(job)
    monkeypatch.setattr(ray_runtime, "start_ray_or_exit", stub)
    monkeypatch.setenv("RECOGNIZER_CACHE", str(tmp_path / "cache"))
    ds = _dataset(tmp_path / "ds")
    argv = ["--data", ds, "--folds", "3", "--storage-path", str(tmp_path / "tune"), "--num-samples", "2"]
    assert tune_fight.main(argv, default_space="search_spaces/falldown.yaml") == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and "'Falldown'" in errors[0], errors
    assert "--folds 2 or fewer" in errors[0] and starts == []


def test_a_rare_class_only_in_mixed_videos_reaches_every_fold_when_enough_videos_hold_it():
    """Videos placed by their majority label: a rare class held only by a minority of 3 mixed videos' rows (fall
    videos mostly of Normal windows) fell into one or two of 3 folds for every seed, and the run was refused
    though one such video per fold gives every cv<k>_val the class. Folds that had every class stay as they were."""
    from recognizer_core.tune.folds import assign_folds, check_every_class_in_each_fold

    groups, labels = [], []
    for v in range(10):                  # long videos, Normal only
        groups += [f"long{v}"] * 10
        labels += [0] * 10
    for v in range(3):                   # short videos: two Normal windows, one Fall window
        groups += [f"short{v}"] * 3
        labels += [0, 0, 1]
    for seed in range(10):
        fold_of = assign_folds(groups, labels, 3, seed)
        check_every_class_in_each_fold(groups, labels, fold_of, 3, ["Normal", "Fall"], "data")
        assert sorted(f for f, lb in zip(fold_of, labels) if lb == 1) == [0, 1, 2]
        sizes = sorted(fold_of.count(f) for f in range(3))
        assert sizes[-1] - sizes[0] <= 10   # one long video apart at most: still balanced in size

    # one label per video, every class in each fold already: the placement is the majority-label greedy one
    groups = [f"v{i}" for i in range(12) for _ in range(2)]
    labels = [i % 2 for i in range(12) for _ in range(2)]
    fold_of = assign_folds(groups, labels, 3, seed=0)
    per_fold = [sorted(lb for f2, lb in zip(fold_of, labels) if f2 == f) for f in range(3)]
    assert per_fold == [[0, 0, 0, 0, 1, 1, 1, 1]] * 3
