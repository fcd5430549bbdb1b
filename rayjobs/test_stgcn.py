"""Test an STGCN++ model with Ray Train workers (mmaction2's tools/test.py / dist_test.sh, on every GPU).

    python rayjobs/test_stgcn.py --config configs/fight_stable.yaml                     # the run's best model
    python rayjobs/test_stgcn.py --config configs/fight_stable.yaml \
        --checkpoint work_dirs/fight_stable/best_acc_top1_epoch_30.pth --set pipeline.test_num_clips=10

--checkpoint takes an mmaction2/PYSKL .pth, a Ray Train checkpoint folder, or a run folder (its exported best
model); default: the run folder run.storage_path/run.name. Multi-clip testing (pipeline.test_num_clips)
averages the softmax over clips, as mmaction2 does. Writes <split>_metrics.json and a confusion-matrix PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognizer_core.config import ConfigError, add_config_args, config_from_args  # noqa: E402
from recognizer_core.train.config import TrainJobConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(parser, TrainJobConfig, default_config="configs/fight_stable.yaml")
    parser.add_argument("--checkpoint", default=None, help="model to test (default: the run folder's best model)")
    parser.add_argument("--split", default=None, help="split to evaluate (default: data.test_split)")
    parser.add_argument("--out", default=None, help="output folder (default: <run folder>/test)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(TrainJobConfig, args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from recognizer_core.train.stgcn.job import default_run_config, run_dir_of

    run_dir = run_dir_of(default_run_config(cfg), cfg)
    checkpoint = Path(args.checkpoint) if args.checkpoint else run_dir
    if not checkpoint.exists():
        print(f"error: {checkpoint}: checkpoint not found (train first, or pass --checkpoint)", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else run_dir / "test"
    split = args.split or cfg.data.test_split

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from recognizer_core.train.stgcn.job import build_test_trainer

    if not ray.is_initialized():
        ray.init(address=args.address, log_to_driver=True)
    result = build_test_trainer(cfg, checkpoint, out_dir, split).fit()
    metrics_path = out_dir / f"{split}_metrics.json"
    if result.error or not metrics_path.exists():
        print(json.dumps({"error": repr(result.error) if result.error else f"{metrics_path} not written"}))
        return 1
    m = json.loads(metrics_path.read_text())
    print(json.dumps({"split": split, "checkpoint": m["checkpoint"], "acc_top1": m["acc_top1"],
                      "mean_class_accuracy": m["mean_class_accuracy"], "num_samples": m["num_samples"],
                      "test_num_clips": m["test_num_clips"], "metrics": str(metrics_path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
