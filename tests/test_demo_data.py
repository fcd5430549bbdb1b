"""The synthetic demo data: deterministic, valid, varied, labelled as synthetic, and learnable only from motion."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from recognizer_core.skeleton.demo_data import DEMO_LABEL_NAMES, IMG_SHAPES, make_demo_clips, write_demo_dataset
from recognizer_core.skeleton.store import SkeletonDataset


@pytest.fixture(scope="module", params=["fight", "falldown"])
def demo(request):
    return request.param, make_demo_clips(request.param, 240, seed=1)


def test_clips_are_valid_varied_and_marked_synthetic(demo):
    task, clips = demo
    names = DEMO_LABEL_NAMES[task]
    for i, c in enumerate(clips):
        c.validate("demo", num_classes=2, num_joints=17)
        assert c.label == i % 2 and c.label_name == names[c.label]
        assert c.source_video == f"synthetic://{task}/{i:06d}" and c.extra == {"synthetic": True}
        assert c.img_shape in IMG_SHAPES and c.fps == 30.0 and 40 <= c.total_frames <= 150
        assert 1 <= c.num_person <= 5
        missing = c.keypoint_score == 0
        assert (c.keypoint[missing] == 0).all()  # missing joints: score 0 and coordinates 0
        vis = c.keypoint[~missing]
        assert (vis[:, 0] >= 0).all() and (vis[:, 0] < c.img_shape[1]).all() and (vis[:, 1] < c.img_shape[0]).all()
    persons = {c.num_person for c in clips}
    assert persons >= ({2, 3, 4} if task == "fight" else {1, 2, 3})
    assert len({c.total_frames for c in clips}) > 50
    assert 0.005 < np.mean([(c.keypoint_score == 0).mean() for c in clips]) < 0.3
    splits = [c.split for c in clips]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (168, 36, 36)


def test_deterministic_by_seed():
    a = make_demo_clips("fight", 6, seed=3)
    b = make_demo_clips("fight", 10, seed=3)[:6]  # clip i does not depend on how many are made
    c = make_demo_clips("fight", 6, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.keypoint, y.keypoint)
        np.testing.assert_array_equal(x.keypoint_score, y.keypoint_score)
    assert not all(x.keypoint.shape == z.keypoint.shape and np.allclose(x.keypoint, z.keypoint) for x, z in zip(a, c))
    with pytest.raises(ValueError, match="task must be one of"):
        make_demo_clips("dance", 2)


def test_write_demo_dataset(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="recognizer_core.skeleton.demo_data"):
        path = write_demo_dataset("falldown", tmp_path / "demo", num_clips=20, seed=0)
    assert "SYNTHETIC" in caplog.text
    ds = SkeletonDataset(path)
    assert len(ds) == 20 and ds.label_names == ["Normal", "Falldown"]
    assert ds.metadata["synthetic"] is True and ds.metadata["task"] == "falldown"
    assert ds.splits() == {"train": 14, "val": 3, "test": 3}
    first = ds.read([0])[0]  # rows are grouped by split: row 0 is the first clip of the first split by name
    made = {c.clip_id: c for c in make_demo_clips("falldown", 20, seed=0)}
    np.testing.assert_array_equal(first.keypoint, made[first.clip_id].keypoint)
    assert [len(r) for f in ds.info["files"] for r in f["split_rows"].values()] == [1, 1, 1]
    write_demo_dataset("falldown", path, num_clips=4, seed=0)  # regenerating replaces it
    assert len(SkeletonDataset(path)) == 4


# ---- learnability: motion statistics separate the classes, one static frame much less so

def _normalised(c, persons=2):
    """The first persons at the clip's own frame rate, centred on person 0 and scaled by its standing height."""
    kp = np.zeros((persons, c.total_frames, 17, 2), np.float32)
    sc = np.zeros((persons, c.total_frames, 17), np.float32)
    m = min(persons, c.num_person)
    kp[:m], sc[:m] = c.keypoint[:m], c.keypoint_score[:m]
    vis = sc[0] > 0
    rows = vis.any(1)
    ys = np.where(vis, kp[0, ..., 1], np.nan)[rows]
    height = np.percentile(np.nanmax(ys, 1) - np.nanmin(ys, 1), 90) if rows.any() else 1.0
    kp = (kp - kp[0][vis].mean(0)) / max(height, 1.0)
    return np.where(sc[..., None] > 0, kp, 0), sc


def _features(clips, rng, window=5):
    """Motion: joint speeds (mean, max) and the fastest rise/drop of each person's centre over `window`
    frames. Static: the normalised pose and scores of one random frame."""
    motion, static = [], []
    for c in clips:
        kp, sc = _normalised(c)
        valid = (sc[:, 1:] > 0) & (sc[:, :-1] > 0)
        speed = np.linalg.norm(np.diff(kp, axis=1), axis=-1) * valid  # (M, T-1, V)
        vis = sc > 0
        cy = (kp[..., 1] * vis).sum(-1) / np.maximum(vis.sum(-1), 1)  # (M, T) centre height
        ok = vis.any(-1)
        dy = np.where(ok[:, window:] & ok[:, :-window], cy[:, window:] - cy[:, :-window], 0)
        motion.append(np.concatenate([speed.mean(1).ravel(), speed.max(1).ravel(), dy.max(1), dy.min(1)]))
        t = rng.integers(kp.shape[1])
        static.append(np.concatenate([kp[:, t].ravel(), sc[:, t].ravel()]))
    return np.array(motion, np.float32), np.array(static, np.float32)


def _linear_accuracy(x, y, train, ridge=1.0):
    """Held-out accuracy of a ridge-regression linear classifier (closed form: deterministic and instant)."""
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    z = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], axis=1).astype(np.float64)
    target = 2.0 * y[train] - 1
    w = np.linalg.solve(z[train].T @ z[train] + ridge * np.eye(z.shape[1]), z[train].T @ target)
    return float(((z[~train] @ w > 0) == y[~train]).mean())


def test_classes_differ_in_motion_not_in_one_frame(demo):
    task, clips = demo
    motion, static = _features(clips, np.random.default_rng(0))
    y = np.array([c.label for c in clips])
    train = np.array([c.split == "train" for c in clips])
    acc_motion = _linear_accuracy(motion, y, train)
    acc_static = _linear_accuracy(static, y, train)
    assert acc_motion >= 0.9, (task, acc_motion)
    assert acc_static <= acc_motion - 0.1, (task, acc_static, acc_motion)
