"""STGCN++ specifics of the tuning jobs: the dataset every trial reads, and the best model in mmaction2 format."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from recognizer_core.config import ConfigError
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.storage import (DEFAULT_JOB_ROOT, STORAGE_ENV, is_remote, join_uri, output_uri,
                                     ray_package_root, to_uri)

JOB = "stgcn"
METRICS = ("val/acc_top1", "val/mean_class_accuracy", "train/loss")
_SCORE_ATTRIBUTES = ("val/acc_top1", "val/mean_class_accuracy")


def datasets_dir(experiment_uri: str) -> Path:
    """Where the experiment's prepared datasets (converted data, fold views) go: inside a local experiment; for
    one on object storage (written by Parquet's local store writer) the job's local outputs, per experiment."""
    if not is_remote(experiment_uri):
        return Path(join_uri(experiment_uri, "datasets"))
    return Path(output_uri("work_dirs/tune_datasets"))


def check_datasets_reachable(experiment_uri: str, base: TrainJobConfig, folds: int, address: str | None) -> None:
    """Before Ray: an experiment on object storage whose trials read files written under datasets_dir() (the
    --folds view, converted pkl or demo data: local files, as the fold view links Parquet parts and the
    converters rename a folder into place, neither of which an object store does) needs a local
    $RECOGNIZER_STORAGE: an s3:// one made datasets_dir() Path("s3://...") and wrote a folder "s3:" in the working
    directory; on a cluster it must be set at all, else the files land on the driver's node (the head's home),
    which trials on the GPU pods cannot read: every trial failed after the search had started. Raises
    ConfigError (one line)."""
    writes = ("the --folds view" if folds > 1 else None) or \
        (None if base.data.path else "the converted pkl data" if base.data.train_pkl else "the demo data")
    if not writes or not is_remote(experiment_uri):
        return
    env = os.environ.get(STORAGE_ENV)
    if env and is_remote(env):
        raise ConfigError(f"{STORAGE_ENV}={env}: with --storage-path {experiment_uri}, {writes} every trial reads "
                          f"is written as local files under {STORAGE_ENV}, which must therefore be a local "
                          "folder (on a cluster one every node mounts, e.g. /mnt/shared/runs); object storage "
                          "stays right for --storage-path")
    # a job started by `ray job submit` runs from its uploaded package (and has $RAY_ADDRESS set too)
    from recognizer_core.ray_runtime import joins_cluster

    cluster = joins_cluster(address) or ray_package_root(os.getcwd()) is not None
    if cluster and not env:
        # A one-machine `ray start --head` cannot be told from a cluster before Ray starts (nodes may join), so
        # the error names its workaround: ~/recognizer_runs is where such a job wrote these files before this
        # check (storage.DEFAULT_JOB_ROOT), so an experiment started then keeps the data path it recorded.
        runtime_env = json.dumps({"env_vars": {STORAGE_ENV: DEFAULT_JOB_ROOT}})
        raise ConfigError(f"--storage-path {experiment_uri}: {writes} every trial reads is written as local files "
                          f"(under {datasets_dir(experiment_uri)}, on this node only), which trials on other "
                          f"nodes cannot read: set {STORAGE_ENV} to a folder every node mounts (e.g. "
                          "/mnt/shared/runs, as cluster/kuberay sets it), or give --storage-path such a folder; "
                          f"on a one-machine Ray (`ray start --head`, no other node) set {STORAGE_ENV}="
                          f"{DEFAULT_JOB_ROOT}, a folder the only node reads (ray job submit --runtime-env-json "
                          f"'{runtime_env}'; the folder such a job used before, so an earlier experiment resumes "
                          "with the data path it recorded)")


def trial_overrides(extra: dict[str, Any], base: TrainJobConfig, experiment_uri: str, metric: str,
                    space: Any = None) -> dict:
    """Overrides every trial gets on top of the user's: one dataset prepared once (not per trial), and the
    trial's own best model (the mmaction2 .pth in its run folder) chosen by the metric being tuned. With the
    search `space` (a SearchSpace), its class-weight parameters are checked against the class order."""
    from recognizer_core.train.stgcn.data import prepare_dataset

    extra = dict(extra)
    # Demo clips or a pkl are converted to Parquet here, once, so concurrent trials never race to write them.
    # Absolute (to_uri, as job.dataset_for): a data.path found in the working directory came back as typed, and
    # best_config.yaml recorded it so; read from elsewhere (export, recognize: fps and window) it missed.
    extra["data.path"] = to_uri(prepare_dataset(base.data, datasets_dir(experiment_uri)))
    from recognizer_core.skeleton.store import SkeletonDataset
    from recognizer_core.train.stgcn.evaluate import label_names

    dataset = SkeletonDataset(extra["data.path"])
    names = label_names(base, dataset)  # the preset's order is the dataset's (or an error)
    if space is not None:
        check_class_weight_params(space, names, dataset)
    for key in ("data.train_pkl", "data.val_pkl", "data.test_pkl"):  # now inside data.path
        extra[key] = None
    if metric in _SCORE_ATTRIBUTES:
        extra["checkpoint.score_attribute"] = metric
    return extra


# a whole list or one element: train.class_weight, train.class_weight[1]
_CLASS_WEIGHT = re.compile(r"train\.class_weight(\[\d+\])?")


def check_class_weight_params(space: Any, names: list[str], dataset: Any = None) -> None:
    """The spaces tune `train.class_weight[i]` in the presets' class order, background first: class_weight[1] is
    the positive class's weight (Fight, Falldown). A dataset in extraction's default order (sorted folder names:
    Falldown, Normal) made the search tune Normal's weight while everything said Falldown's. Refused (ConfigError,
    one line) when the class named like background (recognize's rule, spec.resolve_background) is not class 0 and
    the space tunes any class weight: a parameter on the field (also a second distribution of it,
    `train.class_weight[1]@sgd`) or a choice's bundle that sets it. With the background first (or no class named
    like it) every class weight passes. `dataset` (a SkeletonDataset) names the rebuild's own folders."""
    from recognizer_core.recognize.spec import resolve_background
    from recognizer_core.train.stgcn.evaluate import rebuild_command
    from recognizer_core.tune.search_space import field_of

    try:
        background, _ = resolve_background(names, "auto", fallback=None)
    except ValueError:  # several background-like names in no clear order: nothing to tell the positive class by
        return
    if not background:  # None: no class named like background; 0: the order the spaces assume
        return
    keys = list(space.params) + [k for p in space.params.values() for bundle in (p.sets or {}).values() for k in bundle]
    tuned = [str(k) for k in keys if _CLASS_WEIGHT.fullmatch(field_of(str(k)))]
    if tuned:
        order = [names[background]] + [n for i, n in enumerate(names) if i != background]
        raise ConfigError(f"{space.source}: parameter {tuned[0]} tunes a class weight in the order the search "
                          f"spaces assume (background first, class_weight[1] the positive class's), but the class "
                          f"order is {names}, with the background class {names[background]!r} at index "
                          f"{background}: rebuild the dataset with the background class first from its poses "
                          f"({rebuild_command(order, dataset)}; no videos or pose model needed) and train with "
                          "the preset's data.label_names")


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


def final_dir(experiment_uri: str) -> str:
    """Where --folds retrains its winner: <experiment>/summary/final, on the experiment's own storage. Ray Train
    runs its controller on the driver's node and its workers on the GPU pods: a driver temp folder (where a
    remote experiment's summary is built) is refused by Ray's storage check ("A local path on the head node is
    not accessible by worker nodes") after the whole search, and a worker's test_metrics.json was not there."""
    return join_uri(experiment_uri, "summary", "final")


def clear_final_dir(out_uri: str) -> None:
    """Empty final_dir() (local or s3://) before a retrain. Its run name and storage are the same in every
    invocation, and Ray Train V2 resumes a run whose name and storage match: a re-run (a --retry-errored, a new
    winner) "resumed" the previous invocation's finished run, trained nothing and tested the old winner's weights
    as the new one's (and an old test_metrics.json would be read if the new test wrote none). A local
    experiment's folder is already gone (cli.finish wipes its summary/, which holds final/); nothing wiped it on
    object storage, where publish_summary's copy_tree deletes nothing. An interrupted retrain starts over."""
    from recognizer_core.tune.results import clear_dir

    clear_dir(out_uri)   # the one way this package empties a folder, local or remote


RETRAIN_RUN = "final_trainval"   # the retrain's run folder in final_dir()


def retrain_and_test(best_config: Path, fold_store: str, out_uri: str, model_dir: Path | None = None) -> dict:
    """The cross-validated winner, trained once on train+val (its full schedule, the last epoch kept: nothing
    is left to choose an epoch on) and scored once on the test split, which the search never saw. `out_uri`:
    final_dir(), local or s3://; the test metrics are read back through the storage module. The tested model
    goes to `model_dir` (default: best_config's folder, the summary) as export / recognize find a Tune summary's
    model (final_model); its "model" (or "model_error") says where it is."""
    import json

    import ray.train

    from recognizer_core.config import load_config
    from recognizer_core.export.mmaction import remove_previous_best
    from recognizer_core.storage import read_text
    from recognizer_core.train.stgcn import job
    from recognizer_core.tune.folds import TRAINVAL

    # val = trainval is the training data: early stopping on it would cut the schedule on training accuracy
    sets = [f"data.path={fold_store}", f"data.train_split={TRAINVAL}", f"data.val_split={TRAINVAL}",
            "train.test_after_train=false", "train.early_stopping.enabled=false"]
    # run.storage_path takes local or NFS folders only (it also holds prepared datasets): the run folder of a
    # remote experiment is given to Ray by the RunConfig alone
    if not is_remote(out_uri):
        sets.append(f"run.storage_path={out_uri}")
    cfg = load_config(TrainJobConfig, best_config, sets)
    clear_final_dir(out_uri)
    run_config = ray.train.RunConfig(name=RETRAIN_RUN, storage_path=out_uri,
                                     checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                                     logging_config=ray.train.LoggingConfig(log_level="WARNING"))
    result = job.build_trainer(cfg, run_config=run_config).fit()
    # The loop exported a "best" epoch chosen on val = trainval, the training data, beside the run: not the
    # model (that is the last epoch, tested below), so it goes.
    remove_previous_best(join_uri(out_uri, RETRAIN_RUN), cfg.checkpoint.score_attribute, keep="")
    path = str(result.checkpoint.path)  # on object storage pyarrow's "bucket/key", without the scheme
    checkpoint = f"{out_uri.split('://', 1)[0]}://{path.lstrip('/')}" if is_remote(out_uri) else path
    test_uri = join_uri(out_uri, "final_test")
    # The Checkpoint itself goes to the test workers (each opens it, from s3:// too): build_test_trainer takes a
    # local path only (it resolves it with Path), which a remote checkpoint is not.
    job._test_trainer(cfg, result.checkpoint, test_uri, "test", required=True,
                      source=checkpoint).fit()
    metrics_file = join_uri(test_uri, "test_metrics.json")
    text = read_text(metrics_file)
    if text is None:
        raise FileNotFoundError(f"{metrics_file}: the final test wrote no metrics")
    metrics = json.loads(text)
    out = {"epochs": cfg.train.epochs, "checkpoint": checkpoint, "test_split": "test",
           "acc_top1": metrics["acc_top1"], "mean_class_accuracy": metrics["mean_class_accuracy"],
           "num_samples": metrics.get("num_samples"), "metrics_file": metrics_file}
    try:  # the score is taken: a failed export is said in the summary, not lost with it
        out["model"] = str(final_model(cfg, checkpoint, Path(model_dir or Path(best_config).parent)))
    except Exception as err:  # noqa: BLE001
        out["model_error"] = f"{type(err).__name__}: {err}"[:500]
    return out


def final_model(cfg: TrainJobConfig, checkpoint: str, model_dir: Path) -> Path:
    """The retrained model as a Tune summary's model: `best_<metric>_epoch_<last>.pth` in `model_dir` (beside
    best_config.yaml, whose data.path is the original dataset, absolute: recognize and export read its
    training split for fps and window, not the fold view derived from it), exported from the tested checkpoint
    (fetched first when remote), named by its own epoch, the last one. A model_dir's earlier such file is
    replaced (export_best_model)."""
    import tempfile

    from recognizer_core.export.mmaction import export_from_checkpoint
    from recognizer_core.tune.results import fetch_checkpoint

    meta = {"val_in_training": True,   # export_model warns when it calibrates on that split
            "source": "recognizer tune --folds: the winner retrained on train+val, last epoch, tested once on "
                      "the test split"}
    with tempfile.TemporaryDirectory(prefix="recognizer_final_") as tmp:
        local = fetch_checkpoint(checkpoint, Path(tmp) / "checkpoint") if is_remote(checkpoint) else checkpoint
        return Path(export_from_checkpoint(cfg, local, str(model_dir), extra_meta=meta))


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
