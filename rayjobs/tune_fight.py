"""Tune STGCN++ fight detection with Ray Tune + Optuna (TPE) + ASHA over Ray Train trials.

examples:
  python rayjobs/tune_fight.py                                  # demo: synthetic data, 4 trials, minutes on 2 CPUs
  python rayjobs/tune_fight.py --data outputs/rwf2000_skeletons --num-samples 40 \\
      --max-concurrent-trials 4 --gpus-per-worker 0.5           # real search, two trials per GPU
  python rayjobs/tune_fight.py --data outputs/small_set --folds 5  # small data: 5-fold CV by source video,
                                                                # the winner retrained on train+val, tested once
  python rayjobs/tune_fight.py --data outputs/rwf2000_skeletons --objective latency
                                                                # accuracy vs measured latency: a Pareto front
  ray job submit --working-dir . -- python rayjobs/tune_fight.py --data /shared/skeletons \\
      --storage-path s3://bucket/tune                           # on a cluster; watch it on the Ray dashboard
  ray job submit --working-dir . --runtime-env-json '{"env_vars": {"RECOGNIZER_STORAGE": "/shared/runs"}}' \\
      -- python rayjobs/tune_fight.py --data /shared/skeletons --folds 5 --storage-path s3://bucket/tune
      # --folds (or pkl / demo data) with s3:// results on a cluster: the data every trial reads is written as
      # files under $RECOGNIZER_STORAGE, which must be a local folder every node mounts (cluster/kuberay's pods
      # set it; here the job's env sets it; a one-machine `ray start --head`: ~/recognizer_runs); unset on a
      # cluster, or an s3:// one, the job stops before Ray starts and says so

Re-running the same command resumes the experiment (finished trials kept, unfinished ones continue from their
latest checkpoint). At the end, <storage>/<name>/summary/ holds results.parquet/.csv, best_config.yaml (a ready
training config for rayjobs/train_stgcn.py), best_checkpoint/ (+ the best epoch's mmaction2 .pth), plots/*.png
and summary.json (the search's compute, the preset's score next to the winner's; with --folds the paired test
and the test score; with --objective the Pareto front, pareto.csv and pareto/<trial>/best_config.yaml). With
--folds the .pth is the winner retrained on train+val (its last epoch, the model tested; no best_checkpoint/).
export_model.py and recognize.py --model take the summary folder.
The search space is a YAML file (search_spaces/fight.yaml; format in search_spaces/README.md).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognizer_core.config import ConfigError  # noqa: E402
from recognizer_core.tune.cli import add_tune_args, finish, plan_from_args, print_plan  # noqa: E402


def main(argv: list[str] | None = None, default_space: str = "search_spaces/fight.yaml", doc: str = __doc__) -> int:
    from recognizer_core.train.stgcn.config import TrainJobConfig

    parser = argparse.ArgumentParser(description=doc.split("\n")[0], epilog=doc.split("\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tune_args(parser, default_space, TrainJobConfig)
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    if not Path(args.space).exists() and (repo / args.space).exists():
        args.space = str(repo / args.space)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from recognizer_core.tune import stgcn_job

    try:
        plan = plan_from_args(args, config_cls=TrainJobConfig, job=stgcn_job.JOB, metrics=stgcn_job.METRICS)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_plan(plan)

    from recognizer_core.storage import join_uri, to_uri
    from recognizer_core.train.cpu_malloc import require_tcmalloc
    from recognizer_core.tune.tuner import check_resumable, run_tuning

    folds = None
    try:
        experiment_uri = join_uri(to_uri(plan.options.storage_path), plan.options.name)
        base = plan.space.build_config(TrainJobConfig, {}, plan.extra)
        require_tcmalloc(base.scaling.cpu_malloc, base.scaling.tcmalloc_path)
        metric = plan.options.metric or plan.space.metric
        stgcn_job.check_datasets_reachable(experiment_uri, base, plan.options.folds, args.address)
        plan.extra = stgcn_job.trial_overrides(plan.extra, base, experiment_uri, metric, plan.space)
        check_resumable(plan.space, TrainJobConfig, plan.options, extra_overrides=plan.extra)
        from recognizer_core.train.stgcn.job import dataset_for, preflight

        # a bad dataset (NaN, labels, dtypes) is one line here, not the same error in every trial; the trials'
        # own check then finds this dataset version validated (cached). With folds, the trials' data is the fold
        # view's cv<k> splits (train+val pooled: the dataset needs no val split), checked once it exists.
        if plan.options.folds <= 1:
            trial_base = plan.space.build_config(TrainJobConfig, {}, plan.extra)
            preflight(trial_base, dataset_for(trial_base))
        if plan.options.folds > 1:
            from recognizer_core.tune.folds import fold_overrides

            folds = stgcn_job.prepare_folds(plan.extra["data.path"], base, experiment_uri, plan.options.folds,
                                            plan.options.seed)
            fold0 = plan.space.build_config(TrainJobConfig, {}, {**plan.extra, **fold_overrides(folds["path"], 1)[0]})
            preflight(fold0, folds["path"])
            print(f"[tune] {plan.options.folds}-fold cross-validation grouped by source video on train+val "
                  f"({folds['trainval']} clips; val folds {[f['val'] for f in folds['folds']]} clips); test split "
                  f"({folds['test']} clips) kept for the winner's single final score", flush=True)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from recognizer_core.ray_runtime import start_ray_or_exit
    from recognizer_core.train.stgcn.job import build_trainer

    start_ray_or_exit("tune", args.address, num_cpus=args.num_cpus)
    try:
        run = run_tuning(plan.space, TrainJobConfig, build_trainer, plan.options, extra_overrides=plan.extra,
                         fold_overrides=fold_overrides(folds["path"], plan.options.folds) if folds else None,
                         measure=stgcn_job.measure_model if plan.options.objectives else None)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = finish(run, plan, TrainJobConfig, export_best=stgcn_job.export_best, pick_within=args.pick_within,
                     quiet=bool(folds))
    if folds:
        final_test(summary, folds, run.experiment_uri)
    return 0 if "best_trial" in summary else 1


def final_test(summary: dict, folds: dict, experiment_uri: str) -> None:
    """Cross-validation's last step: the winner on train+val, scored once on the test split (summary leads)."""
    from recognizer_core.storage import is_remote, join_uri
    from recognizer_core.tune import stgcn_job
    from recognizer_core.tune.cli import print_summary, save_summary
    from recognizer_core.tune.results import scratch_dir

    # the summary is built locally (a temp folder for a remote experiment) and published; the final retrain
    # runs on Ray's workers, so it goes to the experiment's storage itself (stgcn_job.final_dir), cleared first
    # (a re-run's retrain would otherwise resume the previous invocation's finished run)
    local = scratch_dir(experiment_uri) if not is_remote(experiment_uri) else Path(summary["files"][0]).parent
    if "best_trial" not in summary or not folds["test"]:
        if "best_trial" in summary:  # (the retrain's model is the one tested: none is made without a test)
            summary["notes"].append("the dataset has no test split: no final score for the winner and no retrained "
                                    "model; train one from best_config.yaml with rayjobs/train_stgcn.py")
        save_summary(summary, local, experiment_uri)
        print_summary(summary, summary["metric"])
        return
    print("[tune] retraining the winner on train+val, then one test-split evaluation ...", flush=True)
    final = stgcn_job.retrain_and_test(local / "best_config.yaml", folds["path"], stgcn_job.final_dir(experiment_uri),
                                       model_dir=local)
    if "model" in final:  # written into the summary folder: export_model.py / recognize.py --model <summary>
        summary["files"].append(final["model"])
        published = join_uri(experiment_uri, "summary")
        final["model"] = join_uri(published, Path(final["model"]).name)
        summary["notes"].append(f"the model (export_model.py / recognize.py --model {published}): "
                                f"{Path(final['model']).name}, the winner retrained on train+val, its last epoch, "
                                "the one tested")
    else:
        summary["notes"].append(f"the retrained model could not be written to the summary ({final['model_error']}); "
                                f"its training checkpoint is {final['checkpoint']}")
    ordered = {"final_test": final, **summary}
    summary.clear()
    summary.update(ordered)
    # final/ (stgcn_job.final_dir) is in the published summary folder: the retrain just wrote it there
    save_summary(summary, local, experiment_uri, keep=("final",))
    print_summary(summary, summary["metric"])


if __name__ == "__main__":
    from recognizer_core.ray_runtime import run_job

    sys.exit(run_job(main))
