r"""Test an STGCN++ model with Ray Train workers (mmaction2's tools/test.py / dist_test.sh, on every GPU).

    python rayjobs/test_stgcn.py --config configs/fight_stable.yaml                     # the run's best model
    python rayjobs/test_stgcn.py --config configs/fight_stable.yaml \
        --checkpoint work_dirs/fight_stable/best_acc_top1_epoch_30.pth --set pipeline.test_num_clips=10

--checkpoint takes an mmaction2/PYSKL .pth, a Ray Train checkpoint folder, or a run folder (its exported best
model); default: the run folder run.storage_path/run.name. Multi-clip testing (pipeline.test_num_clips)
averages the softmax over clips, as mmaction2 does. Writes <split>_metrics.json and a confusion-matrix PNG.
Before Ray starts the model is loaded once on the driver: an unreadable file, other weights than the config's
model, or other classes than the config's / dataset's names (a fight model with falldown_stable.yaml, where the
checkpoint records its classes) is refused in one line.

A multi-stream ensemble (PYSKL's j + b + jm + bm): one training run per stream, each with its config.yaml and
exported best model; every stream and their fusion (weights chosen on the val split) are scored on val and test,
in this process (no Ray), into <out>/ensemble.json plus each stream's model (default out: <first run>/../ensemble):

    python rayjobs/test_stgcn.py --runs j=work_dirs/fight_j b=work_dirs/fight_b --metric mean_class_accuracy
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognizer_core.config import ConfigError, load_config  # noqa: E402
from recognizer_core.config_args import add_config_args, config_from_args  # noqa: E402
from recognizer_core.skeleton.store import SkeletonDataset  # noqa: E402
from recognizer_core.storage import input_path, output_uri  # noqa: E402
from recognizer_core.train.stgcn.config import TrainJobConfig  # noqa: E402

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "fight_stable.yaml")


def newest_run(storage: Path) -> Path | None:
    """The most recently finished (or checkpointed) training run under `storage`: a folder with a summary.json or
    an exported best model."""
    marks = list(storage.glob("*/summary.json")) + list(storage.glob("*/best_*_epoch_*.pth")) if storage.is_dir() \
        else []
    return max(marks, key=lambda p: p.stat().st_mtime).parent if marks else None


def _pick_run(cfg: TrainJobConfig, args) -> tuple[TrainJobConfig, Path]:
    """The model to test: --checkpoint (a path; a relative one missing here is looked for in the config's run
    folder, then under the jobs' output root, storage.output_uri); else the config's run folder; with no
    --config (and no run.name / run.storage_path set), the newest training run under run.storage_path, with the
    config it was trained with and the --set overrides on top (its own config's scaling.use_gpu=false, say,
    still tests that run, not the preset's)."""
    from recognizer_core.train.stgcn.job import run_folder

    run_dir = Path(run_folder(cfg))
    if args.checkpoint:
        given = Path(args.checkpoint)
        if given.exists() or given.is_absolute():
            return cfg, given
        # a relative path missing here: a file name in the run folder, else where the jobs write relative outputs
        # (storage.output_uri: $RECOGNIZER_STORAGE on a cluster, where train_stgcn put the run; under `ray job
        # submit` the working directory is the uploaded package), as data.path is found (dataset_location)
        in_run = run_dir / given
        return cfg, in_run if in_run.exists() else Path(input_path(args.checkpoint))
    names_a_run = any(o.split("=", 1)[0].strip() in ("run.name", "run.storage_path") for o in args.overrides)
    if args.config != DEFAULT_CONFIG or names_a_run:
        return cfg, run_dir
    newest = newest_run(Path(output_uri(cfg.run.storage_path)))   # where train_stgcn put its runs
    if newest is None:
        return cfg, run_dir
    if (newest / "config.yaml").is_file():
        cfg = load_config(TrainJobConfig, newest / "config.yaml", list(args.overrides))
    print(f"[test_stgcn] no --config: testing the newest training run, {newest}", flush=True)
    return cfg, newest


def checkpoint_classes(path: str | Path) -> list[str] | None:
    """The class names a checkpoint file carries: an exported .pth's meta.dataset_meta.classes (mmaction2's
    place), a Ray checkpoint's training_state.pt extra.label_names; None where it has none."""
    from recognizer_core.models.checkpoint import read_checkpoint

    obj = read_checkpoint(path)
    if not isinstance(obj, dict):
        return None
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
    names = dataset_meta.get("classes") or extra.get("label_names")
    return [str(n) for n in names] if isinstance(names, (list, tuple)) and names else None


def check_checkpoint(cfg: TrainJobConfig, checkpoint: Path, dataset: SkeletonDataset) -> None:
    """On the driver, before Ray: the model loads into cfg.model, strictly (a corrupt file or other shapes failed
    in every worker, a traceback each), and the classes it was trained on are the ones this test reports under
    (data.label_names, else the dataset's names). A fight model tested with falldown_stable.yaml was scored under
    the falldown names without a word. Raises CheckpointError / ConfigError / FileNotFoundError."""
    from recognizer_core.models.checkpoint import CheckpointError
    from recognizer_core.models.recognizer import build_recognizer
    from recognizer_core.train.stgcn.evaluate import label_names, load_weights

    try:
        loaded = load_weights(build_recognizer(cfg.model), checkpoint)  # the file the workers load, found the same way
    except CheckpointError as err:
        if "cannot read checkpoint" not in str(err):  # keys or shapes that differ: the listing stays as it is
            raise
        # torch's weights-only refusal of a corrupt file runs over several lines: one line, nothing dropped
        raise CheckpointError(" ".join(line.strip() for line in str(err).splitlines() if line.strip())) from None
    expected = label_names(cfg, dataset)
    stored = dataset.label_names
    named = bool(cfg.data.label_names) or (len(stored) == cfg.model.num_classes and all(stored))
    classes = checkpoint_classes(loaded)
    if named and classes is not None and classes != expected:
        where = "data.label_names" if cfg.data.label_names else f"the dataset {dataset.path}"
        raise ConfigError(f"{loaded}: the model was trained on classes {classes} but {where} names them {expected}: "
                          "test it with the config it was trained with (config.yaml in its run folder) on data of "
                          "those classes")


def parse_runs(items: list[str]) -> dict[str, Path]:
    """["j=work_dirs/a", "b=work_dirs/b"] -> {"j": Path, "b": Path}; each must be a run folder with config.yaml."""
    runs: dict[str, Path] = {}
    for item in items:
        stream, sep, run = item.partition("=")
        if not sep or not stream or not run:
            raise ConfigError(f"--runs {item!r}: expected STREAM=RUN_DIR, e.g. j=work_dirs/fight_j")
        if stream in runs:
            raise ConfigError(f"--runs: stream {stream!r} given twice")
        if not (Path(run) / "config.yaml").is_file():
            raise ConfigError(f"--runs {item!r}: {Path(run) / 'config.yaml'} not found (a training run folder "
                              "holds the config it was trained with)")
        runs[stream] = Path(run)
    return runs


def test_ensemble(items: list[str], out: str | None, metric: str) -> int:
    """Each stream's best model and the weighted fusion on val and test (in-process): one JSON line."""
    from recognizer_core.tune.ensemble import ensemble_from_runs

    try:
        runs = parse_runs(items)
        out_dir = Path(output_uri(out)) if out else next(iter(runs.values())).resolve().parent / "ensemble"
        report = ensemble_from_runs(runs, out_dir, metric=metric)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split in ("val", "test"):
        if report[split]:
            print(f"[test_stgcn] {split} {metric}: " + "  ".join(f"{k} {v:.4f}" for k, v in report[split].items()),
                  flush=True)
    print(json.dumps({"streams": list(runs), "metric": metric, "weights": report["weights"], "val": report["val"],
                      "test": report["test"], "ensemble": str(out_dir)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser, TrainJobConfig, default_config=DEFAULT_CONFIG)
    parser.add_argument("--checkpoint", default=None, help="model to test (default: the run folder's best model; "
                                                           "with no arguments, the newest training run's)")
    parser.add_argument("--split", default=None, help="split to evaluate (default: data.test_split)")
    parser.add_argument("--out", default=None, help="output folder (default: <run folder>/test)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("--runs", nargs="+", default=None, metavar="STREAM=RUN_DIR",
                        help="several training runs, one per stream: test each and their fusion (an ensemble); "
                             "each run's own config.yaml is used, --config/--set/--checkpoint/--split are ignored")
    parser.add_argument("--metric", choices=["acc_top1", "mean_class_accuracy"], default="acc_top1",
                        help="with --runs: what the fusion weights maximise on the val split")
    args = parser.parse_args(argv)
    if args.runs:
        return test_ensemble(args.runs, args.out, args.metric)
    try:
        cfg, checkpoint = _pick_run(config_from_args(TrainJobConfig, args), args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not checkpoint.exists():
        print(f"error: {checkpoint}: checkpoint not found (train first, or pass --checkpoint)", file=sys.stderr)
        return 2
    out_dir = Path(output_uri(args.out)) if args.out else \
        (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "test"
    split = args.split or cfg.data.test_split
    # The split, the model and the GPUs are checked before any Ray start-up: a typo, a corrupt file or another
    # task's model fails in one line here, not in every worker.
    from recognizer_core.train.ray_run import check_local_gpus
    from recognizer_core.train.stgcn.job import build_test_trainer, dataset_for

    try:
        dataset = dataset_for(cfg)
        store = SkeletonDataset(dataset)
        splits = store.splits()
    except (ValueError, OSError) as err:  # ConfigError, SkeletonDataError, unreadable files
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not splits.get(split):
        print(f"error: {dataset}: no clips in split {split!r} (splits: {', '.join(sorted(splits)) or 'none'}); "
              "choose one with --split", file=sys.stderr)
        return 2
    try:
        check_checkpoint(cfg, checkpoint, store)
        check_local_gpus(cfg.scaling, args.address)
    except (ValueError, OSError) as err:  # CheckpointError, ConfigError, unreadable files
        print(f"error: {err}", file=sys.stderr)
        return 2

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from recognizer_core.ray_runtime import start_ray_or_exit

    start_ray_or_exit("test", args.address)
    metrics_path = out_dir / f"{split}_metrics.json"
    try:
        trainer = build_test_trainer(cfg, checkpoint, out_dir, split, dataset_path=dataset)
    except (ValueError, OSError) as err:  # a ConfigError: what the started Ray lacks (scaling_config)
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:  # Ray Train V2 raises what failed the run
        trainer.fit()
    except Exception as err:  # noqa: BLE001 - every failure ends in the one JSON line, exit status 1
        print(json.dumps({"error": f"{type(err).__name__}: {err}"[:2000]}))
        return 1
    if not metrics_path.exists():
        print(json.dumps({"error": f"{metrics_path} not written"}))
        return 1
    m = json.loads(metrics_path.read_text())
    print(json.dumps({"split": split, "checkpoint": m["checkpoint"], "acc_top1": m["acc_top1"],
                      "mean_class_accuracy": m["mean_class_accuracy"], "num_samples": m["num_samples"],
                      "test_num_clips": m["test_num_clips"], "metrics": str(metrics_path)}))
    return 0


if __name__ == "__main__":
    from recognizer_core.ray_runtime import run_job

    sys.exit(run_job(main))
