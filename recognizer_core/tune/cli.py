"""Command line of the tuning jobs (`rayjobs/tune_*.py`): one parser, demo/smoke budgets, the final report.

No Ray here: the script parses with `add_tune_args` + `plan_from_args`, starts Ray, calls
`tuner.run_tuning`, then `finish`. What differs between the tuned jobs (which fields name real data, what the
demo trains on, options a job cannot honour) is a `JobCli`; its defaults are STGCN++'s.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ValidationError

from recognizer_core.config import ConfigError, _parse_for, _target_annotation, read_yaml
from recognizer_core.storage import output_uri
from recognizer_core.tune.search_space import SearchSpace, get_dotted, load_search_space
from recognizer_core.tune.tuner import TuneOptions, default_storage

# Budgets used when the command is run without data: they must finish in minutes on 2 CPUs.
DEMO_BUDGET = {"num_samples": 4, "max_concurrent_trials": 2}
OBJECTIVE_METRICS = {"latency": "model/latency_ms", "params": "model/params_m"}
SMOKE_BUDGET = {"num_samples": 2, "max_concurrent_trials": 2}
# The smoke run (CI) keeps the demo overrides but not their data size: 48 clips x 2 epochs is enough to run
# every step of the machinery; learning is what the demo shows.
SMOKE_OVERRIDES = {"train.epochs": 2, "data.demo_num_clips": 48}
# The script that tunes each space's `job:`: a space handed to another job's script is refused with its name
# (tune_fight.py read the DINO space against the STGCN++ config and listed 16 unrelated problems).
TUNE_SCRIPTS = {"stgcn": "rayjobs/tune_fight.py or rayjobs/tune_falldown.py", "dino_pose": "rayjobs/tune_dino_pose.py"}
# Options only the STGCN++ scripts implement (skeleton datasets, folds of them, its latency measure): another
# job hides them from --help and refuses them by name (`JobCli.refused`).
STGCN_ONLY_OPTIONS = ("data", "folds", "objectives", "mo_sampler", "pick_within")
DemoFn = Callable[[SearchSpace, argparse.Namespace], tuple[dict[str, Any], str]]


@dataclass(frozen=True)
class JobCli:
    """What the shared command line needs to know of the job it tunes; the defaults are STGCN++'s."""

    data_fields: tuple[str, ...] = ("data.path", "data.train_pkl")  # any of them set: real data, else the demo
    # (space, args) -> (the demo's overrides, the DEMO line); None: the space's `demo:` section on demo clips
    demo: DemoFn | None = None
    smoke_overrides: dict[str, Any] = field(default_factory=lambda: dict(SMOKE_OVERRIDES))  # on top of the demo
    refused: dict[str, str] = field(default_factory=dict)  # argparse dest -> the one-line refusal


STGCN_CLI = JobCli()


@dataclass
class TunePlan:
    space: SearchSpace
    options: TuneOptions
    extra: dict[str, Any] = field(default_factory=dict)
    demo: bool = False
    notes: list[str] = field(default_factory=list)


def add_tune_args(parser: argparse.ArgumentParser, default_space: str,
                  config_cls: type[BaseModel] | None = None, *, hidden: Iterable[str] = ()) -> None:
    """The tune jobs' options; with `config_cls`, --help also lists every config field --set accepts. `hidden`:
    options (argparse dests) left out of --help, still parsed so that the job can refuse them by name."""
    if config_cls is not None:
        from recognizer_core.config_args import describe_fields

        parser.formatter_class = argparse.RawDescriptionHelpFormatter  # examples come out as written
        parser.epilog = ((parser.epilog or "") + "\n\nconfig fields every trial accepts with --set (search-space "
                         "params use the same names):\n" + "\n".join(describe_fields(config_cls)))
    g = parser.add_argument_group("search")
    g.add_argument("--space", default=default_space, help=f"search-space YAML (default {default_space})")
    g.add_argument("--data", default=None, help="dataset for every trial: a Parquet skeleton dataset folder or "
                   "URI (data.path), or an mmaction2 .pkl (data.train_pkl). Without it: synthetic demo data "
                   "and the space's demo budget")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="config override applied to every trial, repeatable (e.g. --set train.epochs=20)")
    g.add_argument("--name", default=None, help="experiment name; re-running with the same name resumes it")
    g.add_argument("--storage-path", default=None, help="local folder or s3:// / gs:// URI (default "
                   "$RECOGNIZER_TUNE_STORAGE or ./work_dirs/tune); shared storage is needed on a multi-node cluster")
    g.add_argument("--num-samples", type=int, default=None, help="number of trials (default 20; demo 4)")
    g.add_argument("--max-concurrent-trials", type=int, default=None, help="trials at once (default 2)")
    g.add_argument("--seed", type=int, default=None, help="Optuna TPE seed (default 0)")
    g.add_argument("--metric", default=None, help="metric to optimise (default: the space's)")
    g.add_argument("--mode", choices=["max", "min"], default=None)
    g.add_argument("--scheduler", choices=["asha", "fifo"], default=None, help="asha (default) or fifo")
    g.add_argument("--grace-period", type=int, default=None, help="ASHA: validations before a trial may be stopped "
                   "(default: max-t / 8)")
    g.add_argument("--reduction-factor", type=float, default=None, help="ASHA reduction factor (default 3)")
    g.add_argument("--max-t", type=int, default=None, help="ASHA: most validations a trial runs (default: the "
                   "longest schedule the space gives)")
    g.add_argument("--max-failures", type=int, default=None, help="retries of a failed trial (default 0)")
    g.add_argument("--retry-errored", action="store_true", help="on resume, run errored trials again")
    g.add_argument("--folds", type=int, default=None, help="cross-validation: each trial trains K models on folds "
                   "of train+val grouped by source video and reports their mean (ASHA and TPE use it); the winner "
                   "is then retrained on train+val and tested once on the test split")
    g.add_argument("--objective", dest="objectives", action="append", default=[], choices=["latency", "params"],
                   help="also MINIMISE this (repeatable): latency = measured inference ms per clip on a trial "
                   "worker's device, params = millions of parameters; a multi-objective search with a Pareto front")
    g.add_argument("--mo-sampler", choices=["tpe", "nsga2"], default=None, help="multi-objective sampler "
                   "(default tpe; nsga2 = Optuna's NSGA-II)")
    g.add_argument("--pick-within", type=float, default=0.01, help="multi-objective: best_config.yaml is the "
                   "fastest Pareto point within this much of the best metric (default 0.01 = 1 point)")
    g.add_argument("--progress-interval", type=float, default=None, help="seconds between [tune] progress lines "
                   "(default 30; demo 15)")
    r = parser.add_argument_group("resources per trial")
    r.add_argument("--workers-per-trial", type=int, default=None, help="Ray Train workers per trial")
    r.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per worker (fractions allowed)")
    r.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per worker, fractions allowed with one worker per trial (0.5 = two trials share a "
                   "GPU); > 0 turns on GPU")
    r.add_argument("--driver-cpus", type=float, default=None, help="CPUs reserved per trial driver (default 0.05)")
    c = parser.add_argument_group("Ray")
    c.add_argument("--address", default=None, help="Ray cluster (default: $RAY_ADDRESS, as set by `ray job "
                   "submit`, else a local Ray started here)")
    c.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (no cluster)")
    c.add_argument("--smoke", action="store_true", help="smallest end-to-end run (CI): demo data, 2 trials x "
                   "2 epochs")
    hidden = set(hidden)
    for action in parser._actions:  # argparse has no public way to hide an option once added
        if action.dest in hidden:
            action.help = argparse.SUPPRESS


def default_name(stem: str, suffix: str = "") -> str:
    """The experiment name of a space file without --name: `tune_<stem><suffix>`, made a SafeName. Where that
    changes the stem, a hash of it keeps two files apart (싸움.yaml and 폭행.yaml were both `tune___`)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem)
    if safe != stem:
        safe += "_" + hashlib.sha1(stem.encode()).hexdigest()[:6]
    return f"tune_{safe}"[:128 - len(suffix)] + suffix


def _overrides_dict(items: Iterable[str], config_cls: type[BaseModel] | None = None) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like section.field=value")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = _parse_for(value, _target_annotation(config_cls, key.strip()))  # text as written
        except KeyError as err:
            raise ConfigError(f"--set: {err.args[0]}") from None
    return out


def _refuse(args: argparse.Namespace, refused: dict[str, str]) -> None:
    for dest, why in refused.items():
        value = getattr(args, dest, None)
        if value not in (None, [], False) and not (dest == "folds" and value == 1):  # --folds 1 = no folds
            raise ConfigError(why)


def _check_job(space_path: str, job: str) -> None:
    """A space written for another job names the script that tunes it (before its base preset is read against
    this job's config, which lists every field of the other job as a problem)."""
    try:
        declared = read_yaml(space_path).get("job")
    except ConfigError:
        return  # load_search_space says what is wrong with the file
    if isinstance(declared, str) and declared != job:
        where = TUNE_SCRIPTS.get(declared, f"the {declared} tune script")
        raise ConfigError(f"{space_path}: this space is for the {declared!r} job (its `job:`), this script tunes "
                          f"{job!r}: run {where} --space {space_path}")


def plan_from_args(args: argparse.Namespace, *, config_cls: type[BaseModel], job: str,
                   metrics: Iterable[str], cli: JobCli = STGCN_CLI) -> TunePlan:
    """Parse and validate everything before Ray starts: a bad space or override fails here, fast."""
    _refuse(args, cli.refused)
    _check_job(args.space, job)
    space = load_search_space(args.space, config_cls, job=job, metrics=metrics)
    extra = _overrides_dict(args.overrides, config_cls)
    for note in space.check_user_overrides(extra):   # before --data and the demo budget add theirs
        print(f"[tune] note: {note}", flush=True)
    if args.data:
        key = "data.train_pkl" if args.data.endswith(".pkl") else "data.path"
        local = "://" not in args.data
        extra[key] = str(Path(args.data).expanduser().resolve()) if local else args.data
        if local and not Path(extra[key]).exists() and not Path(args.data).is_absolute() \
                and Path(output_uri(args.data)).exists():   # where build_dataset wrote a relative --output
            extra[key] = output_uri(args.data)
        if local and not Path(extra[key]).exists():
            raise ConfigError(f"--data {args.data}: no such file or folder")
    data_given = any(extra.get(k) or get_dotted(space.base, k, None) for k in cli.data_fields)
    demo = not data_given
    notes = []
    budget: dict[str, Any] = {}
    user = extra  # the command line wins over the demo and smoke budgets
    if demo:
        if cli.demo is None:
            demo_overrides, note = space.demo, (
                f"no --data given, so every trial trains on synthetic demo clips with the demo overrides of "
                f"{args.space} ({', '.join(f'{k}={v}' for k, v in space.demo.items())})")
        else:
            demo_overrides, note = cli.demo(space, args)
        extra = {**demo_overrides, **user}
        budget = dict(DEMO_BUDGET)
        notes.append(f"DEMO: {note}")
    if args.smoke:
        extra = {**extra, **cli.smoke_overrides, **user}
        budget = dict(SMOKE_BUDGET)
        notes.append("SMOKE: the smallest end-to-end search (CI): " + ", ".join(
            f"{k}={v}" for k, v in {**SMOKE_BUDGET, **cli.smoke_overrides}.items()))
    if args.workers_per_trial is not None:
        extra["scaling.num_workers"] = args.workers_per_trial
    if args.cpus_per_worker is not None:
        extra["scaling.cpus_per_worker"] = args.cpus_per_worker
    for flag, value in (("--gpus-per-worker", args.gpus_per_worker),
                        ("--pick-within", getattr(args, "pick_within", None))):
        if value is not None and not value >= 0:   # NaN too
            raise ConfigError(f"{flag} must be >= 0, got {value}")
    if args.gpus_per_worker is not None:
        extra["scaling.use_gpu"] = args.gpus_per_worker > 0
        if args.gpus_per_worker > 0:
            extra["scaling.gpus_per_worker"] = args.gpus_per_worker
    given = {"num_samples": args.num_samples, "max_concurrent_trials": args.max_concurrent_trials,
             "seed": args.seed, "metric": args.metric, "mode": args.mode, "scheduler": args.scheduler,
             "grace_period": args.grace_period, "reduction_factor": args.reduction_factor, "max_t": args.max_t,
             "max_failures": args.max_failures, "driver_cpus": args.driver_cpus, "folds": args.folds,
             "mo_sampler": args.mo_sampler, "progress_interval_s": args.progress_interval}
    if args.objectives:
        given["objectives"] = [OBJECTIVE_METRICS[o] for o in dict.fromkeys(args.objectives)]
    if demo or args.smoke:
        budget.setdefault("progress_interval_s", 15.0)
    suffix = "_smoke" if args.smoke else ("_demo" if demo else "")
    suffix += f"_cv{args.folds}" if args.folds and args.folds > 1 else ""
    suffix += "_mo" if args.objectives else ""
    name = args.name or default_name(Path(args.space).stem, suffix)
    try:
        options = TuneOptions(name=name, storage_path=output_uri(args.storage_path or default_storage()),
                              retry_errored=args.retry_errored,
                              **{**budget, **{k: v for k, v in given.items() if v is not None}})
    except ValidationError as err:   # one line naming the flags, not TuneOptions' fields
        flag = {"progress_interval_s": "--progress-interval", "objectives": "--objective"}
        raise ConfigError("command line: " + "; ".join(
            f"{flag.get(str(e['loc'][0]), '--' + str(e['loc'][0]).replace('_', '-')) if e['loc'] else '?'}: "
            f"{e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})" for e in err.errors())) from None
    metric = options.metric or space.metric
    if metrics and metric not in metrics:
        raise ConfigError(f"--metric {metric!r} is not reported by the {job} trainer (one of {list(metrics)})")
    if metric != space.metric and options.mode is None:  # the space's mode is for its own metric
        raise ConfigError(f"--metric {metric!r} is not the space's metric ({space.metric!r}, {space.mode}): say "
                          "--mode max or --mode min")
    # The trial configs themselves are validated now, not in the first trial.
    space.build_config(config_cls, {}, extra)
    return TunePlan(space=space, options=options, extra=extra, demo=demo, notes=notes)


def describe(space: SearchSpace) -> str:
    """One line per parameter, for logs and --help."""
    lines = []
    for name, p in space.params.items():
        if p.type == "choice":
            dist = f"choice {p.labels()}"
        else:
            scale = " (log)" if p.type == "loguniform" or p.log else ""
            step = f" step {p.step:g}" if p.step else ""
            dist = f"{p.type} [{p.low:g}, {p.high:g}]{step}{scale}"
        cond = f"  when {p.when}" if p.when else ""
        cond += f"  (epochs of a {p.epochs_of}-epoch run, scaled to the trial's)" if p.epochs_of else ""
        lines.append(f"  {name}: {dist}{cond}")
    return "\n".join(lines)


def print_plan(plan: TunePlan) -> None:
    o = plan.options
    for note in plan.notes:
        print(f"[tune] {note}", flush=True)
    print(f"[tune] space {plan.space.source}: optimise {o.metric or plan.space.metric} ({o.mode or plan.space.mode}) "
          f"over\n{describe(plan.space)}", flush=True)
    print(f"[tune] {o.num_samples} trials, {o.max_concurrent_trials} at a time, scheduler {o.scheduler}, "
          f"seed {o.seed}; experiment {o.storage_path}/{o.name}", flush=True)
    if plan.extra:
        print("[tune] every trial also sets: " + ", ".join(f"{k}={v}" for k, v in plan.extra.items()), flush=True)


def finish(run, plan: TunePlan, config_cls: type[BaseModel], *,
           export_best: Callable[..., list[Path]] | None = None, pick_within: float = 0.01,
           quiet: bool = False) -> dict:
    """Write the summary (table, best config + checkpoint, plots; the Pareto front of a multi-objective
    search) next to the experiment; print what it says, the honest comparison first."""
    from recognizer_core.tune.results import records_from_grid, scratch_dir, write_summary
    from recognizer_core.storage import join_uri

    records = records_from_grid(run.result_grid)
    def max_t(rec) -> int | None:  # each trial's own epochs: a space may tune them
        try:
            return get_dotted(plan.space.config_dict(rec.params, plan.extra), plan.options.epochs_field, None)
        except (KeyError, ValueError):  # params of another space version: not judged
            return None
    local = scratch_dir(run.experiment_uri)
    shutil.rmtree(local, ignore_errors=True)  # a re-run rewrites the whole summary (no stale best model)
    chosen = None
    if plan.options.objectives:  # the exported best (config, checkpoint, .pth) is the Pareto pick
        from recognizer_core.tune.pareto import pareto_pick

        chosen = pareto_pick(records, run.metric, run.mode, plan.options.objectives, pick_within)
    summary = write_summary(records, plan.space, config_cls, metric=run.metric, mode=run.mode, extra=plan.extra,
                            out_dir=local, experiment_uri=run.experiment_uri, time_attr="epoch",
                            max_t=max_t, export_best=export_best, best_trial=chosen)
    if plan.options.objectives:
        from recognizer_core.tune.pareto import write_pareto

        summary["pareto"] = write_pareto(records, plan.space, config_cls, metric=run.metric, mode=run.mode,
                                         objectives=plan.options.objectives, extra=plan.extra, out_dir=local,
                                         within=pick_within)
    summary["resumed"] = run.restored
    summary["summary_dir"] = join_uri(run.experiment_uri, "summary")
    save_summary(summary, local, run.experiment_uri)
    if not quiet:  # (quiet: the caller adds the cross-validated winner's test score, then prints)
        print_summary(summary, run.metric)
    return summary


def save_summary(summary: dict, local: Path, experiment_uri: str, *, keep: Iterable[str] = ()) -> None:
    """summary.json into `local`, then `local` published as the experiment's summary/ (replacing what it held
    but `keep`, results.publish_summary)."""
    from recognizer_core.tune.results import publish_summary

    (local / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    publish_summary(local, experiment_uri, keep=keep)


def summary_contents(summary: dict) -> str:
    """What the summary folder holds, for its closing line: a search whose trials all errored has a results table
    but no best config or checkpoint, and the line named them all the same."""
    names = [Path(f).name for f in summary.get("files") or []]
    parents = {Path(f).parent.name for f in summary.get("files") or []}
    held = [what for what, there in (
        ("results", any(n.startswith("results.") for n in names)), ("best config", "best_trial" in summary),
        ("best checkpoint", "best_checkpoint" in summary), ("plots", "plots" in parents),
        ("the winner retrained on train+val", "final_test" in summary)) if there]
    if not held:
        return "summary.json (no trial results)"
    return held[0] if len(held) == 1 else ", ".join(held[:-1]) + " and " + held[-1]


def print_summary(summary: dict, metric: str) -> None:
    if "final_test" in summary:
        t = summary["final_test"]
        print(f"[tune] FINAL: the winner retrained on train+val scores on the test split (never seen by the "
              f"search): acc_top1 {t['acc_top1']:.4f}, mean_class_accuracy {t['mean_class_accuracy']:.4f} "
              f"({t.get('num_samples')} clips)", flush=True)
    for trial_id, error in summary["errors"].items():
        print(f"[tune] trial {trial_id} errored: {error}", file=sys.stderr, flush=True)
    for note in summary["notes"]:
        print(f"[tune] note: {note}", flush=True)
    c = summary.get("compute") or {}
    if c:
        print(f"[tune] compute: {c['trial_epochs']} trial-epochs (= {c.get('preset_runs_equivalent')} runs of the "
              f"preset's {c.get('preset_run_epochs')} epochs), {c['cpu_hours']:.3f} CPU-hours, "
              f"{c['gpu_hours']:.3f} GPU-hours reserved", flush=True)
    if "best_trial" in summary:
        what = "exported trial (the Pareto pick)" if summary.get("pareto") else "best trial"
        print(f"[tune] {what} {summary['best_trial']}: {metric} = {summary['best_value']:.4f}", flush=True)
    preset = summary.get("preset") or {}
    if "value" in preset:
        print(f"[tune] preset (trial {preset['trial_id']}): {metric} = {preset['value']:.4f}; winner - preset = "
              f"{preset['winner_minus_preset']:+.4f}. {preset.get('same_budget') or ''}", flush=True)
    if "cv" in preset:
        cv = preset["cv"]
        test = f"{cv['test']}: p = {cv['p_value']:.3g}, " if "p_value" in cv else ""
        print(f"[tune] cross-validated (mean +- std over folds): winner {cv['winner']} vs preset {cv['preset']}; "
              f"{test}{cv['verdict']}", flush=True)
    if "pick" in (summary.get("pareto") or {}):
        pa = summary["pareto"]
        print(f"[tune] Pareto front ({', '.join(pa['objectives'])}): " + "; ".join(
            f"{r['trial_id']} {metric}={r[metric]:.4f} " + " ".join(f"{o}={r[o]:.4g}" for o in pa["objectives"])
            for r in pa["front"]) + f". best_config.yaml = trial {pa['pick']['trial_id']} (the lowest "
            f"{pa['objectives'][0]} within {pa['within']:g} of the best)", flush=True)
    print(f"[tune] {summary_contents(summary)}: {summary['summary_dir']}", flush=True)
    from recognizer_core.ray_runtime import flush_worker_output

    flush_worker_output()  # the JSON line is the job's last: nothing from Ray's workers may follow it
    print(json.dumps({k: summary.get(k) for k in ("experiment", "summary_dir", "metric", "best_trial", "best_value",
                                                  "trials", "status_counts", "resumed")}, default=str), flush=True)
