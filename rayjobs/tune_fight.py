"""Tune STGCN++ fight detection with Ray Tune + Optuna (TPE) + ASHA over Ray Train trials.

    python rayjobs/tune_fight.py                                   # demo: synthetic data, 4 trials, minutes on 2 CPUs
    python rayjobs/tune_fight.py --data outputs/rwf2000_skeletons --num-samples 40 --max-concurrent-trials 4 \
        --gpus-per-worker 0.5                                      # real search, two trials per GPU
    ray job submit --working-dir . -- python rayjobs/tune_fight.py --data /shared/skeletons \
        --storage-path s3://bucket/tune                            # on a cluster; watch it on the Ray dashboard

Re-running the same command resumes the experiment (finished trials kept, unfinished ones continue from their
latest checkpoint). At the end, <storage>/<name>/summary/ holds results.parquet/.csv, best_config.yaml (a ready
training config for rayjobs/train_stgcn.py), best_checkpoint/ (+ mmaction2 .pth) and plots/*.png.
The search space is a YAML file (search_spaces/fight.yaml; format in search_spaces/README.md).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognizer_core.config import ConfigError  # noqa: E402
from recognizer_core.tune.cli import add_tune_args, finish, plan_from_args, print_plan  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_ray(args: argparse.Namespace) -> None:
    import ray

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, log_to_driver=True)
    else:
        # A local Ray with its dashboard (watch the trials there). Ray Train's placement-group cleaner finds the
        # cluster through the State API; with several Ray instances on one machine it cannot guess which one,
        # so the address is pinned for every process of this cluster (they inherit this environment).
        port = _free_port()
        os.environ.setdefault("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
        ctx = ray.init(num_cpus=args.num_cpus, include_dashboard=True, dashboard_port=port, log_to_driver=True)
    print(f"[tune] Ray dashboard: http://{ctx.dashboard_url}" if ctx.dashboard_url else "[tune] no Ray dashboard",
          flush=True)


def main(argv: list[str] | None = None, default_space: str = "search_spaces/fight.yaml") -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0].replace("fight detection", "(fight/falldown)"),
                                     epilog=__doc__.split("\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tune_args(parser, default_space)
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    if not Path(args.space).exists() and (repo / args.space).exists():
        args.space = str(repo / args.space)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from recognizer_core.train.config import TrainJobConfig
    from recognizer_core.tune import stgcn_job

    try:
        plan = plan_from_args(args, config_cls=TrainJobConfig, job=stgcn_job.JOB, metrics=stgcn_job.METRICS)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_plan(plan)

    from recognizer_core.storage import join_uri, to_uri
    from recognizer_core.tune.tuner import check_resumable, run_tuning

    try:
        experiment_uri = join_uri(to_uri(plan.options.storage_path), plan.options.name)
        base = plan.space.build_config(TrainJobConfig, {}, plan.extra)
        metric = plan.options.metric or plan.space.metric
        plan.extra = stgcn_job.trial_overrides(plan.extra, base, experiment_uri, metric)
        check_resumable(plan.space, TrainJobConfig, plan.options, extra_overrides=plan.extra)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    import ray

    from recognizer_core.train.stgcn.job import build_trainer

    if not ray.is_initialized():
        _init_ray(args)
    try:
        run = run_tuning(plan.space, TrainJobConfig, build_trainer, plan.options, extra_overrides=plan.extra)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = finish(run, plan, TrainJobConfig, export_best=stgcn_job.export_best)
    return 0 if "best_trial" in summary else 1


if __name__ == "__main__":
    sys.exit(main())
