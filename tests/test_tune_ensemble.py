"""Multi-stream fusion: weights chosen on validation only, the fused scores, and one stream's per-clip scores
computed in-process with the training code's data path (the same clip order for every stream)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recognizer_core.tune.ensemble import (accuracy, choose_weights, ensemble_report, fuse, simplex,
                                           stream_scores)


def _probs(pred: list[int], k: int = 2, conf: float = 0.8) -> np.ndarray:
    out = np.full((len(pred), k), (1 - conf) / (k - 1))
    out[np.arange(len(pred)), pred] = conf
    return out


def test_weights_from_validation_and_fused_scores(tmp_path):
    labels = np.array([0, 0, 1, 1, 0, 1])
    # Stream a is right on clips 0-3, stream b on 2-5; a confident wrong b on clip 0/1 must be outvoted.
    a = _probs([0, 0, 1, 1, 1, 0], conf=0.9)
    b = _probs([1, 1, 1, 1, 0, 1], conf=0.6)
    assert len(simplex(2, 0.1)) == 11 and all(abs(sum(w) - 1) < 1e-9 for w in simplex(4, 0.25))
    w, val = choose_weights([a, b], labels)
    assert val == accuracy(fuse([a, b], w), labels) >= max(accuracy(a, labels), accuracy(b, labels))
    # Among equally good weights the one nearest equal weights wins (no arbitrary corner on small val sets).
    same = _probs([0, 0, 1, 1, 0, 1])
    assert choose_weights([same, same], labels)[0] == (0.5, 0.5)
    report = ensemble_report({"a": {"val": (a, labels), "test": (a, labels), "model": "a.pth"},
                              "b": {"val": (b, labels), "test": (b, labels), "model": "b.pth"}}, tmp_path)
    saved = json.loads((tmp_path / "ensemble.json").read_text())
    assert saved["weights"] == {"a": w[0], "b": w[1]} and saved["weights_chosen_on"] == "val"
    assert report["test"]["fused"] == val and report["test"]["a"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="val clips differ"):
        ensemble_report({"a": {"val": (a, labels), "model": "a"}, "b": {"val": (b, labels[::-1]), "model": "b"}},
                        tmp_path)
    with pytest.raises(ValueError, match="test clips differ"):   # same labels, other clips
        ensemble_report({"a": {"val": (a, labels), "test": (a, labels, list("uvwxyz")), "model": "a"},
                         "b": {"val": (b, labels), "test": (b, labels, list("uvwxyq")), "model": "b"}}, tmp_path)


def test_mean_class_accuracy_is_the_training_jobs(tmp_path):
    """A class predicted but absent from the labels counts (as 0), as in mmaction2 and test_metrics.json; the
    ensemble's own definition left it out (0.75 here against the job's 0.5 for the same model)."""
    from recognizer_core.train.stgcn import metrics

    labels = np.array([0, 0, 1, 1])
    probs = _probs([0, 0, 2, 2], k=3)
    report = ensemble_report({"a": {"val": (probs, labels), "test": None, "model": "a"}}, tmp_path,
                             metric="mean_class_accuracy")
    assert report["val"]["a"] == metrics.mean_class_accuracy(probs, labels) == pytest.approx(1 / 3)


def test_stream_scores_in_process(tmp_path):
    import torch

    from recognizer_core.config import load_config
    from recognizer_core.models.recognizer import build_recognizer
    from recognizer_core.skeleton.demo_data import write_demo_dataset
    from recognizer_core.skeleton.store import SkeletonDataset
    from recognizer_core.train.stgcn.config import TrainJobConfig
    from recognizer_core.train.state import save_training_state

    data = write_demo_dataset("fight", tmp_path / "demo", num_clips=24, seed=0)
    index = data / "_index.parquet"
    ids_by_index = SkeletonDataset(data).index("val", columns=["clip_id"])["clip_id"].to_pylist()
    index.unlink()  # the demo data lists its split ranges: scores and clip ids come without the per-clip index
    scores = {}
    for feats in ("j", "b"):
        cfg = load_config(TrainJobConfig, None, [f"data.path={data}", f"pipeline.feats=[{feats}]",
                                                 "model.base_channels=16", "pipeline.clip_len=8"])
        torch.manual_seed(0)
        save_training_state(tmp_path / feats, model=build_recognizer(cfg.model), epoch=1)
        scores[feats] = stream_scores(cfg, tmp_path / feats, data, "val")
    (pj, yj, ij), (pb, yb, ib) = scores["j"], scores["b"]
    assert pj.shape == pb.shape == (len(ij), 2) and np.allclose(pj.sum(1), 1, atol=1e-5)
    assert ij == ib and np.array_equal(yj, yb) and not np.allclose(pj, pb)  # same clips, different streams
    assert ij == ids_by_index  # the split's store order, as the index path gave it
    # an all-zero clip is skipped (data.skip_empty_clips): it has no score, and its id is not listed either
    from recognizer_core.skeleton.demo_data import make_demo_clips
    from recognizer_core.skeleton.store import write_dataset

    clips = make_demo_clips("fight", 24, seed=0)
    val = [c for c in clips if c.split == "val"]
    val[1].keypoint[:] = 0
    val[1].keypoint_score[:] = 0
    zeroed = write_dataset(clips, tmp_path / "zeroed", label_names=("NonFight", "Fight"))
    probs, labels, ids = stream_scores(cfg, tmp_path / "b", zeroed, "val")
    assert ids == [c.clip_id for c in val if c is not val[1]] and len(probs) == len(labels) == len(ids)


def test_test_job_reports_each_stream_and_the_fusion_of_runs(tmp_path, capsys):
    """`test_stgcn.py --runs j=RUN b=RUN`: two run folders (config.yaml + exported best model) -> each stream and
    the fusion on val and test, in-process (no Ray), the same numbers as the streams' own scores."""
    import sys
    from pathlib import Path

    import ray
    import torch

    from recognizer_core.config import dump_config, load_config
    from recognizer_core.export.mmaction import export_best_model
    from recognizer_core.models.recognizer import build_recognizer
    from recognizer_core.skeleton.demo_data import write_demo_dataset
    from recognizer_core.train.stgcn.config import TrainJobConfig

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rayjobs.test_stgcn import main as test_main

    data = write_demo_dataset("fight", tmp_path / "demo", num_clips=24, seed=0)
    runs = {}
    for seed, feats in enumerate(("j", "b")):
        run = tmp_path / f"run_{feats}"
        cfg = load_config(TrainJobConfig, None, [f"data.path={data}", f"pipeline.feats=[{feats}]",
                                                 "model.base_channels=16", "pipeline.clip_len=8",
                                                 f"run.storage_path={tmp_path}", f"run.name=run_{feats}"])
        torch.manual_seed(seed)
        dump_config(cfg, run / "config.yaml")
        export_best_model(build_recognizer(cfg.model), str(run), cfg=cfg, epoch=3, label_names=None)
        runs[feats] = (run, cfg)
    out = tmp_path / "ens"
    ray_before = ray.is_initialized()
    assert test_main(["--runs", *(f"{s}={r}" for s, (r, _) in runs.items()), "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((out / "ensemble.json").read_text())
    assert line["weights"] == saved["weights"] and set(saved["weights"]) == {"j", "b"}
    for s, (run, cfg) in runs.items():
        for split in ("val", "test"):
            probs, labels, _ = stream_scores(cfg, out / f"{s}.pth", data, split)
            assert line[split][s] == saved[split][s] == accuracy(probs, labels)
        assert (out / f"{s}.pth").read_bytes() == (run / "best_acc_top1_epoch_3.pth").read_bytes()
    assert {"fused", "fused_equal_weights"} <= set(line["test"])
    assert ray.is_initialized() == ray_before  # this job started no Ray (the session's own may be up)
    # A malformed or missing run is one line naming it, exit status 2.
    assert test_main(["--runs", f"j={runs['j'][0]}", f"b={tmp_path / 'nowhere'}"]) == 2
    assert "nowhere/config.yaml not found" in capsys.readouterr().err
    assert test_main(["--runs", str(runs["j"][0])]) == 2
    assert "expected STREAM=RUN_DIR" in capsys.readouterr().err
