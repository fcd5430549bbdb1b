"""Multi-stream STGCN++ ensemble: one model per stream (j, b, jm, bm), fused with weights chosen on val.

Each stream's model trains side by side on Ray; their softmax scores are fused with weights chosen on the
validation split, and each stream and the fusion are scored on the test split (PYSKL / mmaction2's 4-stream
recipe, without doing it by hand).

examples:
  python rayjobs/tune_streams.py                                # demo: synthetic fight clips, 4 streams
  python rayjobs/tune_streams.py --config work_dirs/tune/tune_fight/summary/best_config.yaml \\
      --data outputs/fight_skeletons --streams j b jm bm        # the tuned recipe, once per stream
  python rayjobs/tune_streams.py --config configs/falldown_stable.yaml --data outputs/falls \\
      --metric mean_class_accuracy

Writes <storage>/<name>/ensemble/: ensemble.json (streams, weights, val and test scores of each stream and of
the fusion) and each stream's best model (<stream>.pth, mmaction2 format). recognize and export_model take one
stream's model; the fused ensemble is scored here and by test_stgcn.py --runs, not deployed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognizer_core.config import ConfigError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from recognizer_core.config import load_config
    from recognizer_core.config_args import describe_fields
    from recognizer_core.train.stgcn.config import TrainJobConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 1)[1] + "\n\nconfig fields (--set):\n"
                                     + "\n".join(describe_fields(TrainJobConfig)))
    parser.add_argument("--config", default=str(REPO / "configs" / "fight_demo.yaml"), help="training YAML every "
                        "stream starts from (a preset or a tuned best_config.yaml); default configs/fight_demo.yaml")
    parser.add_argument("--data", default=None, help="Parquet skeleton dataset (data.path); default: the config's")
    parser.add_argument("--streams", nargs="+", default=["j", "b", "jm", "bm"], choices=["j", "b", "jm", "bm"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--metric", choices=["acc_top1", "mean_class_accuracy"], default="acc_top1",
                        help="what the fusion weights maximise on the validation split")
    parser.add_argument("--name", default="streams", help="run names: <name>_<stream>; output <storage>/<name>")
    parser.add_argument("--storage-path", default="work_dirs/streams")
    parser.add_argument("--address", default=None)
    parser.add_argument("--num-cpus", type=int, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from recognizer_core.skeleton.clip import SkeletonDataError
    from recognizer_core.storage import is_remote, output_uri, to_uri
    from recognizer_core.train.stgcn.dataset_source import dataset_location

    if is_remote(args.storage_path):
        print(f"error: --storage-path {args.storage_path}: the fused ensemble is written to a local or shared (NFS) "
              "folder, not to object storage", file=sys.stderr)
        return 2
    from recognizer_core.config import check_safe_name

    try:   # one line naming the flag (it named run.name=<name>_j inside a two-line config error)
        check_safe_name(args.name)
    except ValueError as err:
        print(f"error: --name {args.name!r}: {err}", file=sys.stderr)
        return 2
    args.streams = list(dict.fromkeys(args.streams))  # a stream named twice would train one run twice at once
    storage = Path(output_uri(args.storage_path))  # never inside `ray job submit`'s package, which Ray deletes
    try:
        # absolute (the streams' config.yaml is read from other folders later); s3:// as is
        base = args.overrides + ([f"data.path={to_uri(dataset_location(args.data))}"] if args.data else [])
        cfgs = {s: load_config(TrainJobConfig, args.config, base + [
            f"pipeline.feats=[{s}]", f"run.name={args.name}_{s}", f"run.storage_path={storage}",
            "train.test_after_train=false"]) for s in args.streams}
        from recognizer_core.train.stgcn.job import build_trainer, prepare_run, run_folder

        # each stream's resume rules and its dataset checked before Ray starts (the validation is cached)
        datasets = {s: prepare_run(cfgs[s]) for s in args.streams}
    except (ConfigError, SkeletonDataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from recognizer_core.ray_runtime import start_ray_or_exit

    start_ray_or_exit("streams", args.address, num_cpus=args.num_cpus)
    # One TorchTrainer per stream, side by side (fit blocks, so each in a thread; Ray shares the CPUs/GPUs).
    errors: dict[str, BaseException] = {}

    def fit(s: str) -> None:
        try:
            build_trainer(cfgs[s], dataset_path=datasets[s]).fit()
        except BaseException as err:
            errors[s] = err

    # daemon threads: Ctrl-C / SIGTERM (a KeyboardInterrupt in this thread) ends the job instead of waiting for
    # every stream's training to finish
    threads = [threading.Thread(target=fit, args=(s,), name=f"stream_{s}", daemon=True) for s in args.streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s, err in errors.items():
        print(f"error: stream {s} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
              file=sys.stderr)
    if errors:
        return 1
    out = fuse_streams(cfgs, {s: run_folder(c) for s, c in cfgs.items()},
                       storage / args.name / "ensemble", args.metric, datasets=datasets)
    print(json.dumps({"streams": args.streams, "weights": out["weights"], "val": out["val"], "test": out["test"],
                      "ensemble": str(storage / args.name / "ensemble")}), flush=True)
    return 0


def fuse_streams(cfgs: dict, run_dirs: dict, out_dir: Path, metric: str, datasets: dict | None = None) -> dict:
    """Each stream's best model on val and test, the fusion weights from val, ensemble.json + the models.
    `datasets`: each stream's dataset as prepare_run resolved it (default: job.dataset_for, the same)."""
    from recognizer_core.config import dump_config
    from recognizer_core.train.stgcn.job import dataset_for
    from recognizer_core.tune.ensemble import ensemble_from_runs
    from recognizer_core.train.stgcn.job import recorded_config

    for s, cfg in cfgs.items():
        # as train_stgcn.py records it: data.path the resolved (absolute) dataset, so that recognize / export /
        # test_stgcn read the run from any directory (a relative one from --config was looked up again there)
        dataset = datasets[s] if datasets is not None else dataset_for(cfg)
        dump_config(recorded_config(cfg, dataset), Path(run_dirs[s]) / "config.yaml")
    report = ensemble_from_runs(run_dirs, out_dir, metric=metric)
    for split in ("val", "test"):
        if report[split]:
            print(f"[streams] {split} {metric}: " + "  ".join(f"{k} {v:.4f}" for k, v in report[split].items()),
                  flush=True)
    print(f"[streams] fusion weights (chosen on val): {report['weights']}", flush=True)
    return report


if __name__ == "__main__":
    from recognizer_core.ray_runtime import run_job

    sys.exit(run_job(main))
