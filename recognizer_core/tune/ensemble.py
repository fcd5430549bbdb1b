"""Multi-stream ensembles (PYSKL / mmaction2's j + b + jm + bm): one model per input stream, their class
probabilities fused by a weighted sum, the weights chosen on the validation split only, the fusion scored on
the test split. Pure numpy here, plus `stream_scores` (one model's per-clip probabilities on a split, run
in-process with the training code's own data path and multi-clip test)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Sequence

import numpy as np

# the training job's own definitions (mmaction2's): one stream's numbers here equal its test_metrics.json
from recognizer_core.train.stgcn.metrics import mean_class_accuracy, top_k_accuracy

ENSEMBLE_FILE = "ensemble.json"


def fuse(scores: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of the streams' class probabilities (N, K) each."""
    return sum(w * s for w, s in zip(weights, scores))


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return top_k_accuracy(scores, labels, (1,))[0]


def simplex(n: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of n non-negative multiples of `step` summing to 1."""
    k = round(1 / step)
    return [tuple(c / k for c in combo) for combo in itertools.product(range(k + 1), repeat=n) if sum(combo) == k]


def choose_weights(val_scores: Sequence[np.ndarray], labels: np.ndarray, *, step: float = 0.1,
                   metric: str = "acc_top1") -> tuple[tuple[float, ...], float]:
    """The weights with the best validation `metric`; among equals the one closest to equal weights (the
    plain sum PYSKL uses), so a small validation set does not pick an arbitrary corner."""
    score = accuracy if metric == "acc_top1" else mean_class_accuracy
    n = len(val_scores)
    equal = np.full(n, 1 / n)
    best = None
    for w in simplex(n, step):
        value = score(fuse(val_scores, w), labels)
        key = (value, -float(np.abs(np.array(w) - equal).sum()))
        if best is None or key > best[0]:
            best = (key, w)
    return best[1], best[0][0]


def stream_scores(cfg, checkpoint: str | Path, dataset_path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(probabilities (N, K), labels (N,), clip ids) of one model on `split`, in the split's store order (the
    same for every stream of one dataset), with the config's multi-clip test. All-zero clips skipped by
    `data.skip_empty_clips` are not scored, and their ids are not in the list."""
    import tempfile

    import torch

    from recognizer_core.models.recognizer import build_recognizer
    from recognizer_core.train.stgcn.evaluate import _test_batches, evaluate, load_weights
    from recognizer_core.train.context import LocalContext

    model = build_recognizer(cfg.model)
    load_weights(model, checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        loader, ds, _ = _test_batches(cfg, str(dataset_path), split, LocalContext(tmp), required=True)
        report = evaluate(model, loader, torch.device("cpu"), amp="none", pipeline=cfg.pipeline)
    ids = ds.clip_ids(loader.dataset.clips.positions)   # one process: its shard is the whole split, in order
    return report["scores"], report["labels"], list(ids)


def ensemble_report(streams: dict[str, dict], out_dir: Path, *, metric: str = "acc_top1", step: float = 0.1) -> dict:
    """streams: {name: {"val": (scores, labels[, clip ids]), "test": the same or None, "model": path}} ->
    weights chosen on val; every stream and the fusion on val and test; ensemble.json written."""
    names = list(streams)
    val_labels = streams[names[0]]["val"][1]
    for split in ("val", "test"):   # fused scores must be of the same clips, row by row
        first = streams[names[0]].get(split)
        for n in names[1:]:
            other = streams[n].get(split)
            if first is None or other is None:
                continue
            same = np.array_equal(other[1], first[1]) and (len(first) < 3 or len(other) < 3
                                                           or list(other[2]) == list(first[2]))
            if not same:
                raise ValueError(f"stream {n!r}: {split} clips differ from stream {names[0]!r} (same dataset and "
                                 "data.skip_empty_clips needed)")
    weights, val_fused = choose_weights([streams[n]["val"][0] for n in names], val_labels, step=step, metric=metric)
    score = accuracy if metric == "acc_top1" else mean_class_accuracy
    out = {"metric": metric, "weights": dict(zip(names, weights)), "weights_chosen_on": "val",
           "val": {n: score(*streams[n]["val"][:2]) for n in names}, "test": {}}
    out["val"]["fused"] = val_fused
    out["val"]["fused_equal_weights"] = score(fuse([streams[n]["val"][0] for n in names], [1 / len(names)] * len(names)),
                                              val_labels)
    if all(streams[n].get("test") is not None for n in names):
        test_labels = streams[names[0]]["test"][1]
        out["test"] = {n: score(*streams[n]["test"][:2]) for n in names}
        out["test"]["fused"] = score(fuse([streams[n]["test"][0] for n in names], weights), test_labels)
        out["test"]["fused_equal_weights"] = score(
            fuse([streams[n]["test"][0] for n in names], [1 / len(names)] * len(names)), test_labels)
    out["models"] = {n: str(streams[n]["model"]) for n in names}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ENSEMBLE_FILE).write_text(json.dumps(out, indent=1))
    return out


def ensemble_from_runs(run_dirs: dict[str, str | Path], out_dir: Path, *, metric: str = "acc_top1",
                       dataset_path: str | Path | None = None) -> dict:
    """Training run folders (their config.yaml and best_*_epoch_N.pth), one per stream -> each stream's best
    model on val and test, fusion weights from val, `out_dir`/ensemble.json plus `<stream>.pth` copies
    (recognize and export_model load one stream's model, not the fusion). What `rayjobs/tune_streams.py` runs
    after training, and what `test_stgcn.py` can call with several runs."""
    import shutil

    from recognizer_core.config import load_config
    from recognizer_core.skeleton.store import SkeletonDataset
    from recognizer_core.train.stgcn.config import TrainJobConfig
    from recognizer_core.train.stgcn.dataset_source import datasets_dir, prepare_dataset

    streams = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, run in run_dirs.items():
        run = Path(run)
        cfg = load_config(TrainJobConfig, run / "config.yaml")
        best = sorted(run.glob("best_*_epoch_*.pth"))
        if len(best) != 1:
            raise FileNotFoundError(f"{run}: expected one best_*_epoch_N.pth, found {[b.name for b in best]}")
        # where training prepared it (job.dataset_for): a relative run.storage_path is under the storage root
        # ($RECOGNIZER_STORAGE, ~/recognizer_runs in a Ray package), not the working directory
        dataset = dataset_path or prepare_dataset(cfg.data, datasets_dir(cfg.run.storage_path))
        model = Path(shutil.copy2(best[0], out_dir / f"{name}.pth"))
        val = stream_scores(cfg, model, dataset, cfg.data.val_split)
        has_test = cfg.data.test_split in SkeletonDataset(dataset).splits()
        test = stream_scores(cfg, model, dataset, cfg.data.test_split) if has_test else None  # else val only
        streams[name] = {"val": val, "test": test, "model": model}
    return ensemble_report(streams, out_dir, metric=metric)
