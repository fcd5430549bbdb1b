r"""Train STGCN++ with Ray Train (DDP on every GPU of the cluster, or CPU workers), then test the best model.

    python rayjobs/train_stgcn.py --config configs/fight_stable.yaml                  # demo data, runs anywhere
    python rayjobs/train_stgcn.py --config configs/fight_stable.yaml \
        --set data.path=outputs/rwf2000_skeletons --set scaling.num_workers=4 --set scaling.use_gpu=true
    ray job submit --working-dir . -- python rayjobs/train_stgcn.py --config configs/falldown_stable.yaml

The run folder is run.storage_path/run.name: Ray Train checkpoints (best by val/acc_top1 + latest, at most
checkpoint.num_to_keep), logs/tensorboard, best_acc_top1_epoch_N.pth (mmaction2 format), curves.png,
confusion matrices, summary.json, test_metrics.json, and config.yaml: the config with data.path the resolved
dataset it trained on (recorded_config), so that recognize and export find it from any directory. Re-running
the same command continues the run from its latest checkpoint; a lost worker is recovered by Ray Train
(run.max_failures). The dataset is prepared and validated before Ray starts, and GPUs that a private local Ray
(no --address / RAY_ADDRESS) cannot have are refused then too: each is one `error:` line, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognizer_core.config import ConfigError, dump_config  # noqa: E402
from recognizer_core.config_args import add_config_args, config_from_args  # noqa: E402
from recognizer_core.storage import join_uri, read_text  # noqa: E402
from recognizer_core.train.cpu_malloc import require_tcmalloc  # noqa: E402
from recognizer_core.train.stgcn.config import TrainJobConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser, TrainJobConfig, default_config="configs/fight_stable.yaml")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(TrainJobConfig, args)
        require_tcmalloc(cfg.scaling.cpu_malloc, cfg.scaling.tcmalloc_path)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from recognizer_core.ray_runtime import start_ray_or_exit
    from recognizer_core.train.ray_run import check_local_gpus
    from recognizer_core.train.stgcn.job import build_trainer, prepare_run, recorded_config, run_folder, test_best

    try:  # everything that needs no Ray, before Ray starts: a bad dataset or GPU request is one line, at once
        check_local_gpus(cfg.scaling, args.address)
        dataset_path = prepare_run(cfg)
    except (ValueError, OSError) as err:  # ConfigError, SkeletonDataError, unreadable files
        print(f"error: {err}", file=sys.stderr)
        return 2
    start_ray_or_exit("train", args.address)
    try:
        trainer = build_trainer(cfg, dataset_path=dataset_path)
    except (ValueError, OSError) as err:  # a ConfigError: what the started Ray lacks (scaling_config)
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = run_folder(cfg)
    # through the storage layer: on object storage a Path of the run URI wrote a local "s3:/.../config.yaml"
    dump_config(recorded_config(cfg, dataset_path), join_uri(run_dir, "config.yaml"))
    try:  # Ray Train V2 raises what failed the run (after run.max_failures retries); there is no result.error
        result = trainer.fit()
        if cfg.train.test_after_train:
            test_best(cfg, result, run_dir)
    except Exception as err:  # noqa: BLE001 - every failure ends in the one JSON line, exit status 1
        print(json.dumps({"run_dir": str(run_dir), "error": f"{type(err).__name__}: {err}"[:2000]}))
        return 1

    summary = json.loads(read_text(join_uri(run_dir, "summary.json")) or "{}")
    test = json.loads(read_text(join_uri(run_dir, f"{cfg.data.test_split}_metrics.json")) or "null")
    best = summary.get("best", {})
    out = {
        "run_dir": str(run_dir), "epochs_run": summary.get("epochs_run"),
        "stopped_early": summary.get("stopped_early"),
        "best_epoch": best.get("epoch"), f"best_{cfg.checkpoint.score_attribute}": best.get("score"),
        "best_model_mmaction2": join_uri(run_dir, best["file"]) if best.get("file") else None,
        # the checkpoint's path is inside its filesystem (no s3:// scheme): named from the run folder instead
        "latest_checkpoint": join_uri(run_dir, posixpath.basename(result.checkpoint.path.rstrip("/")))
        if result.checkpoint else None,
        "test_acc_top1": test["acc_top1"] if test else None,
        "test_mean_class_accuracy": test["mean_class_accuracy"] if test else None,
        "error": None,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    from recognizer_core.ray_runtime import run_job

    sys.exit(run_job(main))
