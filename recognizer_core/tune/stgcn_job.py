"""STGCN++ specifics of the tuning jobs: the dataset every trial reads, and the best model in mmaction2 format."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.storage import is_remote, join_uri, output_uri

JOB = "stgcn"
METRICS = ("val/acc_top1", "val/mean_class_accuracy", "train/loss")
_SCORE_ATTRIBUTES = ("val/acc_top1", "val/mean_class_accuracy")


def datasets_dir(experiment_uri: str) -> Path:
    """Where the experiment's prepared datasets (converted data, fold views) go: inside a local experiment; for
    one on object storage (written by Parquet's local store writer) the job's local outputs, per experiment."""
    if not is_remote(experiment_uri):
        return Path(join_uri(experiment_uri, "datasets"))
    return Path(output_uri("work_dirs/tune_datasets"))


def trial_overrides(extra: dict[str, Any], base: TrainJobConfig, experiment_uri: str, metric: str) -> dict:
    """Overrides every trial gets on top of the user's: one dataset prepared once (not per trial), and the
    trial's own best model (the mmaction2 .pth in its run folder) chosen by the metric being tuned."""
    from recognizer_core.train.stgcn.data import prepare_dataset

    extra = dict(extra)
    # Demo clips or a pkl are converted to Parquet here, once, so concurrent trials never race to write them.
    extra["data.path"] = str(prepare_dataset(base.data, datasets_dir(experiment_uri)))
    from recognizer_core.skeleton.store import SkeletonDataset
    from recognizer_core.train.stgcn.evaluate import label_names

    label_names(base, SkeletonDataset(extra["data.path"]))  # the preset's class order is the dataset's (or an error)
    for key in ("data.train_pkl", "data.val_pkl", "data.test_pkl"):  # now inside data.path
        extra[key] = None
    if metric in _SCORE_ATTRIBUTES:
        extra["checkpoint.score_attribute"] = metric
    return extra


def measure_model(cfg: TrainJobConfig, repeats: int = 20) -> dict[str, float]:
    """Inference cost of a trial's model on this worker's device: median ms per clip (one sample of
    clip_len frames, batch 1, eval mode, after warm-up) and millions of parameters. Runs as a Ray task with one
    training worker's resources (tuner.TrialDriver), so the device is the one the model would run on."""
    import statistics
    import time

    import torch

    from recognizer_core.models.recognizer import build_recognizer

    device = torch.device("cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    model = build_recognizer(cfg.model).to(device).eval()
    joints = int(model.backbone.graph.A.shape[-1]) if hasattr(model.backbone, "graph") else 17
    x = torch.randn(1, cfg.pipeline.num_person, cfg.pipeline.clip_len, joints, cfg.model.in_channels, device=device)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:  # warm-up runs excluded
                times.append(time.perf_counter() - t0)
    return {"model/latency_ms": 1000 * statistics.median(times),
            "model/params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def prepare_folds(dataset_path: str, base: TrainJobConfig, experiment_uri: str, k: int, seed: int) -> dict:
    """The fold view of the prepared dataset (folds.write_fold_store), next to it in the experiment."""
    from recognizer_core.tune.folds import write_fold_store

    name = f"folds_k{k}_seed{seed}"  # an s3:// experiment's fold view goes where its converted data goes
    out = datasets_dir(experiment_uri) / (name if not is_remote(experiment_uri) else
                                          f"{experiment_uri.rstrip('/').rsplit('/', 1)[-1]}_{name}")
    return write_fold_store(dataset_path, out, k, seed=seed, train_split=base.data.train_split,
                            val_split=base.data.val_split, test_split=base.data.test_split)


def retrain_and_test(best_config: Path, fold_store: str, out_dir: Path) -> dict:
    """The cross-validated winner, trained once on train+val (its full schedule, the last epoch kept: nothing
    is left to choose an epoch on) and scored once on the test split, which the search never saw."""
    import ray.train

    from recognizer_core.config import load_config
    from recognizer_core.train.stgcn.job import build_test_trainer, build_trainer
    from recognizer_core.tune.folds import TRAINVAL

    cfg = load_config(TrainJobConfig, best_config, [f"data.path={fold_store}", f"data.train_split={TRAINVAL}",
                                                    f"data.val_split={TRAINVAL}", "train.test_after_train=false",
                                                    f"run.storage_path={out_dir}"])
    run_config = ray.train.RunConfig(name="final_trainval", storage_path=str(out_dir),
                                     checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                                     logging_config=ray.train.LoggingConfig(log_level="WARNING"))
    result = build_trainer(cfg, run_config=run_config).fit()
    test_dir = out_dir / "final_test"
    build_test_trainer(cfg, result.checkpoint.path, test_dir, split="test").fit()
    import json

    metrics = json.loads((test_dir / "test_metrics.json").read_text())
    return {"epochs": cfg.train.epochs, "checkpoint": result.checkpoint.path, "test_split": "test",
            "acc_top1": metrics["acc_top1"], "mean_class_accuracy": metrics["mean_class_accuracy"],
            "num_samples": metrics.get("num_samples"), "metrics_file": str(test_dir / "test_metrics.json")}


def export_best(cfg: TrainJobConfig, checkpoint_dir: Path, out_dir: Path, *, trial_path: str = "") -> list[Path]:
    """The best trial's best model as ONE file: the `best_<metric>_epoch_<N>.pth` its own training run exported
    (copied from `<trial>/train/`), so the summary and the trial's run folder hold the same epoch. When the run
    folder is not reachable (remote storage), the best trial's checkpoint is exported by the one best-model
    export (`recognizer_core.export.mmaction`), named by its own epoch."""
    import shutil

    metric = cfg.checkpoint.score_attribute.split("/")[-1]
    for old in Path(out_dir).glob(f"best_{metric}_epoch_*.pth"):
        old.unlink()
    run_dir = Path(trial_path) / "train" if trial_path and not is_remote(trial_path) else None
    own = sorted(run_dir.glob(f"best_{metric}_epoch_*.pth")) if run_dir is not None and run_dir.is_dir() else []
    if len(own) == 1:
        return [Path(shutil.copy2(own[0], Path(out_dir) / own[0].name))]
    from recognizer_core.export.mmaction import export_from_checkpoint

    return [Path(export_from_checkpoint(cfg, Path(checkpoint_dir), str(out_dir),
                                        extra_meta={"source": "recognizer tune: best trial"}))]
