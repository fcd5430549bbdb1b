"""Ray Tune + Optuna over any Ray Train job that has `build_trainer(cfg, *, run_config=None) -> TorchTrainer`.

Each Tune trial runs `TrialDriver`: it builds the trial's config (base preset + overrides + sampled params),
then builds and fits the job's TorchTrainer (Ray Train V2), whose reports reach Tune through
`TuneReportCallback`. Search: Optuna TPE (seeded, conditional parameters); early stopping: ASHA.

Layout of an experiment (local folder or any pyarrow URI, e.g. s3://bucket/tune):

    <storage_path>/<name>/                Ray Tune experiment (re-running the same command resumes it)
        recognizer_tune.json              what was asked (space, overrides; resume_record.py): a mismatch on
                                          resume is an error
        trial_<id>/train/checkpoint_*/    the trial's Ray Train run and its checkpoints
        summary/                          results table, best config + checkpoint, plots (`results.py`)

This module is Ray glue: the caller (a `rayjobs/` script) has already called `ray.init`.
"""
from __future__ import annotations

import errno
import fnmatch
import itertools
import json
import os
import pickle
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

import pyarrow.fs as pafs
from pydantic import BaseModel, Field

from recognizer_core.config import ConfigError, SafeName, StrictModel
from recognizer_core.tune.records import FINAL_REPORT_KEY
from recognizer_core.tune.reports import validated_epochs
from recognizer_core.tune.resume_record import REQUEST_FILE, check_resumable, request_record
from recognizer_core.tune.search_space import SearchSpace, _label, field_of, get_dotted, is_bundle_name
from recognizer_core.storage import exists, filesystem, join_uri, to_uri, write_text

TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # written by Ray Train V2 in every run folder
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"  # Ray Tune's; Tuner.restore reads the newest (by name: its time)


class TuneOptions(StrictModel):
    """How to search: budget, scheduler, resources, where results go."""

    # SafeName, as run.name: the name becomes a folder or object key. Unchecked, "fight#2" wrote the request record
    # as s3 object runs/fight (pyarrow's URI parser drops '#...'), "../x" wrote beside the storage path, and a
    # non-ASCII name was no URI at all.
    name: SafeName = Field(description="experiment name: <storage_path>/<name>; the same name resumes it")
    storage_path: str = Field("work_dirs/tune", description="local folder, or s3:// / gs:// URI (needed on a "
                                                            "multi-node cluster)")
    metric: str | None = Field(None, description="metric to optimise (default: the space's)")
    mode: Literal["max", "min"] | None = Field(None, description="max or min (default: the space's)")
    num_samples: int = Field(20, ge=1, description="trials to run")
    max_concurrent_trials: int = Field(2, ge=1, description="trials running at once")
    seed: int = Field(0, description="seed of the Optuna TPE sampler")
    startup_trials: int = Field(8, ge=1, description="random trials before TPE starts modelling")
    scheduler: Literal["asha", "fifo"] = Field("asha", description="asha stops poor trials early; fifo "
                                                                   "runs every trial to the end")
    time_attr: str = Field("val_round", description="reported counter ASHA measures progress in: val_round "
                           "counts validations, so every rung compares measured values, never placeholders")
    max_t: int | None = Field(None, ge=1, description="ASHA: longest a trial runs, in validations (default: "
                                                      "the number of validations of the config's schedule)")
    grace_period: int | None = Field(None, ge=1, description="ASHA: validations a trial runs before it may be "
                                                             "stopped (default: max_t / 8, at least 1)")
    reduction_factor: float = Field(3.0, gt=1, description="ASHA: keep the top 1/reduction_factor per rung")
    driver_cpus: float = Field(0.05, gt=0, description="CPUs reserved by each trial's Train driver, which only "
                                                       "watches its workers (they reserve their own, scaling.*)")
    max_failures: int = Field(0, ge=-1, description="times a failed trial is retried (its Train run "
                                                    "continues from its latest checkpoint)")
    retry_errored: bool = Field(False, description="on resume, start errored trials again")
    epochs_field: str = Field("train.epochs", description="config field holding the number of epochs")
    folds: int = Field(1, ge=1, le=20, description="cross-validation: each trial trains this many models on "
                       "folds grouped by source video and reports their mean (1 = the dataset's val split)")
    objectives: list[str] = Field(default_factory=list, description="extra objectives to MINIMISE next to "
                                  "the metric (e.g. model/latency_ms): a multi-objective search")
    mo_sampler: Literal["nsga2", "tpe"] = Field("tpe", description="multi-objective sampler: Optuna "
                                                "NSGA-II (generations of max(4, min(50, num_samples // 4)) "
                                                "trials) or multi-objective TPE")
    progress_interval_s: float = Field(30.0, gt=0, description="seconds between [tune] progress lines")


@dataclass
class TuneRun:
    """What `run_tuning` leaves: the Ray ResultGrid plus where it lives."""

    result_grid: Any
    experiment_uri: str
    metric: str
    mode: str
    restored: bool


class TrialDriver:
    """One Tune trial = one Ray Train run with the trial's config (picklable: Tune ships it to the trial), or
    with `fold_overrides`, K runs side by side (one per fold) whose reports are averaged (`FoldAggregator`).
    `measure(cfg) -> {name: value}` (optional) runs once per trial as a Ray task with one worker's resources
    (e.g. inference latency), and its values join every report."""

    def __init__(self, space: SearchSpace, config_cls: type[BaseModel], build_trainer: Callable,
                 extra: dict[str, Any], experiment_uri: str, metric: str, mode: str,
                 fold_overrides: list[dict[str, Any]] | None = None, measure: Callable | None = None):
        self.space, self.config_cls, self.build_trainer = space, config_cls, build_trainer
        self.extra, self.experiment_uri, self.metric, self.mode = extra, experiment_uri, metric, mode
        self.fold_overrides, self.measure = fold_overrides or [], measure

    def __call__(self, params: dict[str, Any]) -> None:
        import ray.tune

        from recognizer_core.tune.trial_runs import ReportToTune, run_folds

        cfg = self.space.build_config(self.config_cls, params, self.extra)
        trial_dir = join_uri(self.experiment_uri, trial_dir_name(ray.tune.get_context().get_trial_id()))
        measured = self._measure(cfg)
        if not self.fold_overrides:
            self._fit(cfg, trial_dir, "train", ReportToTune(schedule_of(cfg, self.space.epochs_field), measured))
            return
        run_folds(self, params, trial_dir, measured)

    def _measure(self, cfg) -> dict:
        if self.measure is None:
            return {}
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        scaling = getattr(cfg, "scaling", None)
        gpus = float(getattr(scaling, "gpus_per_worker", 0)) if getattr(scaling, "use_gpu", False) else 0
        # Outside the trial's placement group (it holds only the driver's 0.05 CPU): one worker's resources.
        task = ray.remote(num_cpus=float(getattr(scaling, "cpus_per_worker", 1)), num_gpus=gpus)(self.measure)
        return ray.get(task.options(scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
                       .remote(cfg))

    def _fit(self, cfg, trial_dir: str, name: str, callback) -> Any:
        """Fit one Train run named `name` inside the trial folder; returns its Result (fit raises on failure)."""
        import ray.train
        import ray.tune
        from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

        from recognizer_core.tune.trial_runs import FoldReport, ReportToTune

        # The Train run is named after the trial, so a restarted trial (resume, retry) continues that run
        # from its latest checkpoint instead of starting over. Keeping 1 by score also keeps the latest.
        run_config = ray.train.RunConfig(
            name=name, storage_path=trial_dir, callbacks=[callback],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=self.metric, checkpoint_score_order=self.mode),
            # A lost worker is recovered inside the trial, from the latest checkpoint, as in a plain run.
            failure_config=ray.train.FailureConfig(max_failures=_train_max_failures(cfg)),
            # Ray Train's own INFO (worker group start, checkpoint paths; "Reporting training result ..." through
            # ray_run.RayTrainContext) would drown the search's [tune] lines; warnings and errors still show.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"))
        # A Train run that already exists is being continued (resume, retry). If it had finished its last
        # epoch before the driver died, it reports nothing new: hand Tune its final metrics (+ checkpoint).
        continued = exists(join_uri(run_config.storage_path, run_config.name, TRAIN_SNAPSHOT))
        result = self.build_trainer(cfg, run_config=run_config).fit()  # raises on failure (Ray 2.60)
        if continued and result.metrics and isinstance(callback, ReportToTune):
            ckpt = {CHECKPOINT_PATH_KEY: result.checkpoint.path} if result.checkpoint is not None else {}
            ray.tune.report({**callback.clean(result.metrics), **ckpt, FINAL_REPORT_KEY: 1})
        elif continued and result.metrics and isinstance(callback, FoldReport):
            # to the fold aggregator: a fold with no report at all left every merged epoch without the metric,
            # and the whole cross-validated trial ended as 'no_metric'
            callback.after_report(None, [result.metrics], None)
        return result


def schedule_of(cfg: BaseModel, epochs_field: str = "train.epochs") -> list[int] | None:
    """The epochs a run validates (train.val_interval / val_begin, always the last), or None if unknown."""
    data = cfg.model_dump()
    epochs = get_dotted(data, epochs_field, default=None)
    section = epochs_field.rsplit(".", 1)[0] if "." in epochs_field else ""
    interval = get_dotted(data, f"{section}.val_interval" if section else "val_interval", default=None)
    begin = get_dotted(data, f"{section}.val_begin" if section else "val_begin", default=1)
    if not isinstance(epochs, int) or not isinstance(interval, int):
        return None
    return validated_epochs(epochs, interval, int(begin or 1))


def longest_schedule(space: SearchSpace, config_cls: type[BaseModel], extra: dict[str, Any],
                     base_cfg: BaseModel) -> list[int] | None:
    """The validated epochs of the longest run any trial can have. A space that tunes the epochs (or the
    validation interval) gives trials longer than the base config; ASHA's max_t from the base alone stopped
    them before their last epochs. Tries each such parameter's range ends / choices (a few configs)."""
    section = space.epochs_field.rsplit(".", 1)[0] + "." if "." in space.epochs_field else ""
    fields = {space.epochs_field, f"{section}val_interval", f"{section}val_begin"}
    # A grid per field (a bundle: its own): `x` and `x@sgd` never meet in a trial (combined, the last one won).
    grids: dict[str, list[tuple[str, Any]]] = {}
    for name, p in space.params.items():
        if field_of(name) in fields or any(k in fields for bundle in (p.sets or {}).values() for k in bundle):
            key = name if is_bundle_name(name) else field_of(name)
            grids.setdefault(key, []).extend((name, _label(v)) for _, v in p.candidates())
    longest = schedule_of(base_cfg, space.epochs_field)
    for combo in itertools.product(*grids.values()) if grids else ():
        try:
            schedule = schedule_of(space.build_config(config_cls, dict(combo), extra), space.epochs_field)
        except (ConfigError, KeyError, ValueError):  # a combination the space's `when`s never make
            continue
        if schedule and (longest is None or len(schedule) > len(longest)):
            longest = schedule
    return longest


def run_trial(params: dict[str, Any], driver: TrialDriver) -> None:
    """The Tune function trainable (a plain function, as Tune expects) running one `TrialDriver`."""
    driver(params)


def _train_max_failures(cfg: BaseModel) -> int:
    run = getattr(cfg, "run", None)
    return int(getattr(run, "max_failures", 0))


def trial_dir_name(trial_id: str) -> str:
    return f"trial_{trial_id}"


def _trial_dirname(trial) -> str:
    return trial_dir_name(trial.trial_id)


def _searcher(space: SearchSpace, metric: str, mode: str, options: TuneOptions):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    metrics = [metric, *options.objectives]

    class _OptunaSearch(OptunaSearch):
        # Optuna records every result as an intermediate value; a report without the metric (e.g. a training
        # epoch between validations) has none to record. A multi-objective study takes no intermediates.
        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if metric in result and not options.objectives:
                super().on_trial_result(trial_id, result)

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "[I ...] A new study created" INFO lines
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if options.objectives and options.mo_sampler == "nsga2":
            sampler = optuna.samplers.NSGAIISampler(seed=options.seed,
                                                    population_size=nsga2_population(options.num_samples))
        else:
            # multivariate + group: TPE models parameters jointly, and conditional ones (SGD momentum,
            # milestones) only among the trials where they exist; it handles several objectives too.
            sampler = optuna.samplers.TPESampler(seed=options.seed, multivariate=True, group=True,
                                                 n_startup_trials=options.startup_trials)
    if options.objectives:  # the metric and each extra objective (minimised): a Pareto front
        return _OptunaSearch(space=space.suggest, metric=metrics, mode=[mode] + ["min"] * len(options.objectives),
                             sampler=sampler, points_to_evaluate=space.start_points() or None)
    return _OptunaSearch(space=space.suggest, metric=metric, mode=mode, sampler=sampler,
                         points_to_evaluate=space.start_points() or None)


def nsga2_population(num_samples: int) -> int:
    """NSGA-II's generation size for a search of `num_samples` trials. Its generation 0 is random sampling, so
    Optuna's default 50 made any search of <= 50 trials (the default 20) a random search; a quarter of the
    budget leaves about 3 generations to evolve. At least 4 (Optuna needs >= 2, the crossover's 2 parents),
    at most Optuna's 50."""
    return max(4, min(50, num_samples // 4))


def asha_or_fifo(options: TuneOptions, schedule: list[int] | None, max_epochs: int | None, metric: str,
                 mode: str):
    """The trial scheduler. ASHA's unit is a validation (val_round): rungs fall on validated epochs only, so
    every rung compares measured values. Without a known schedule (another job's config), epochs."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if options.scheduler != "asha":
        return FIFOScheduler()
    time_attr = "epoch" if schedule is None and options.time_attr == "val_round" else options.time_attr
    length = len(schedule) if time_attr == "val_round" and schedule else (int(max_epochs) if max_epochs else None)
    max_t = options.max_t or length
    if not max_t:
        raise ConfigError(f"ASHA needs --max-t: the config's {options.epochs_field} is not a number of epochs")
    grace = min(options.grace_period or max(1, max_t // 8), max_t)
    # ASHA stops a trial that reaches its max_t, killing its Train run while it shuts down. When max_t is the
    # whole schedule (the default), the trial should end by itself (workers and resources freed): ASHA gets
    # one more. A shorter --max-t N is a budget: the trial stops after N, as asked.
    ends_by_itself = length is not None and max_t >= length
    return ASHAScheduler(time_attr=time_attr, max_t=max_t + 1 if ends_by_itself else max_t, grace_period=grace,
                         reduction_factor=options.reduction_factor, metric=metric, mode=mode)


def run_tuning(space: SearchSpace, config_cls: type[BaseModel], build_trainer: Callable,
               options: TuneOptions, *, extra_overrides: dict[str, Any] | None = None,
               fold_overrides: list[dict[str, Any]] | None = None, measure: Callable | None = None) -> TuneRun:
    """Run (or resume) the search; returns the ResultGrid. Errored trials are in it, not raised.

    fold_overrides: one override dict per fold (`folds.fold_overrides`): each trial trains them all and reports
    their mean. measure(cfg) -> {name: value}: measured once per trial (e.g. latency, for `objectives`)."""
    from recognizer_core.tune.progress import SearchProgress
    from ray import tune

    # A trial whose run reported nothing (or not this metric) is shown as such in the results, instead of
    # Tune's strict check aborting the whole experiment.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Tune's new console engine prints its experiment table and TensorBoard hint even at verbose=0; the legacy
    # engine at verbose=0 prints nothing but warnings and errors. The [tune] lines (SearchProgress) are the console.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    extra = dict(extra_overrides or {})
    metric, mode = options.metric or space.metric, options.mode or space.mode
    # Every candidate trial config must at least start: check the base + overrides once, here, not per trial.
    base_cfg = space.fix_overrides(config_cls, extra)   # `when` conditions then see the demo / --set overrides
    storage = to_uri(options.storage_path)
    experiment_uri = join_uri(storage, options.name)
    driver = TrialDriver(space, config_cls, build_trainer, extra, experiment_uri, metric, mode,
                         fold_overrides=fold_overrides, measure=measure)
    schedule = longest_schedule(space, config_cls, extra, base_cfg)
    max_epochs = schedule[-1] if schedule else get_dotted(base_cfg.model_dump(), options.epochs_field, default=None)
    progress = SearchProgress(metric, mode, options.num_samples, options.max_concurrent_trials, max_epochs,
                              options.progress_interval_s, extra_shown=tuple(options.objectives),
                              early_stopping=options.scheduler == "asha", epochs_of=lambda params: get_dotted(
                                  space.config_dict(params, extra), options.epochs_field, None))
    trainable = tune.with_resources(tune.with_parameters(run_trial, driver=driver), {"cpu": options.driver_cpus})
    record = request_record(space, extra, config_cls, options)

    restored = tune.Tuner.can_restore(experiment_uri)
    if restored:
        check_resumable(space, config_cls, options, extra_overrides=extra)
        check_experiment_state(experiment_uri)
        print(f"[tune] resuming experiment {experiment_uri} (finished trials are kept, unfinished ones continue "
              "from their latest checkpoint)", flush=True)
        tuner = tune.Tuner.restore(experiment_uri, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=options.retry_errored)
    else:
        scheduler = asha_or_fifo(options, schedule, max_epochs, metric, mode)
        write_text(join_uri(experiment_uri, REQUEST_FILE), json.dumps(record, indent=1))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                # The searcher (single or multi-objective) and ASHA carry their own metric and mode.
                metric=None if options.objectives or options.scheduler == "asha" else metric,
                mode=None if options.objectives or options.scheduler == "asha" else mode,
                search_alg=_searcher(space, metric, mode, options),
                scheduler=scheduler, num_samples=options.num_samples,
                max_concurrent_trials=options.max_concurrent_trials,
                trial_name_creator=_trial_dirname, trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=options.name, storage_path=storage, verbose=0,
                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                callbacks=[progress]))
    # Ctrl-C must stop a search the way SIGTERM does (ray_runtime.install_stop_handlers: KeyboardInterrupt, the
    # "stopped ... re-run" line, exit 130). Tune's own SIGINT handler (tune.run, read at each fit) only set a flag:
    # fit returned normally and the job summarised, exported and (--folds) retrained the half-finished search.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        grid = tuner.fit()
    # the machine, not a trial: a full disk, or a file Ray wrote cut short (a 0-byte error.pkl: a bare EOFError)
    except (OSError, EOFError, pickle.UnpicklingError) as err:
        _raise_if_stopped()
        # a ConfigError: the tune jobs print it as one `error:` line and exit 2, as export does for a full disk
        raise ConfigError(search_failure(experiment_uri, err)) from err
    _raise_if_stopped()
    return TuneRun(result_grid=grid, experiment_uri=experiment_uri, metric=metric, mode=mode, restored=restored)


def check_experiment_state(experiment_uri: str) -> None:
    """Refuse to resume from an experiment state that does not load (cut short by a full disk): Ray then logged an
    error and started the search over, the finished trials gone from results that said "resumed": true."""
    fs, path = filesystem(experiment_uri)
    names = sorted(fnmatch.filter([i.base_name for i in fs.get_file_info(pafs.FileSelector(path))],
                                  EXPERIMENT_STATE_GLOB), reverse=True)
    problem = _state_problem(fs, f"{path}/{names[0]}") if names else None
    if problem is None:
        return
    older = next((name for name in names[1:] if _state_problem(fs, f"{path}/{name}") is None), None)
    way = f"move it out of the folder to resume from the older {older} (lacking what came since), or " if older else ""
    raise ConfigError(f"{join_uri(experiment_uri, names[0])}: Ray Tune's experiment state does not load ({problem}; "
                      "a disk that filled up while it was written leaves it cut short) and Ray would start the search "
                      f"over: {way}start a new --name (the trials' folders and checkpoints stay as they are)")


def _state_problem(fs, path: str) -> str | None:
    try:
        with fs.open_input_stream(path) as f:
            state = json.loads(f.read())
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"{type(err).__name__}: {err}"
    return None if isinstance(state, dict) and {"trial_data", "runner_data"} <= state.keys() else "no trial_data"


def search_failure(experiment_uri: str, err: BaseException) -> str:
    """The one line for a search the machine stopped: where, why, and how to continue."""
    not_space = isinstance(err, OSError) and err.errno not in (errno.ENOSPC, errno.EDQUOT)  # e.g. a permission
    cut = "" if isinstance(err, OSError) else " (a file Ray Tune wrote there is cut short, as a full disk leaves it)"
    return (f"{experiment_uri}: the search stopped: {type(err).__name__}: {err}{cut}; "
            f"{'fix that' if not_space else 'free space'}, then run the same command with --retry-errored to resume "
            "it (finished trials are kept; those that failed run again)")


def _raise_if_stopped() -> None:
    """A stop signal that reached the project's handler but whose KeyboardInterrupt something swallowed (Ray Train
    can swallow one) still stops the job here: a stopped search is no result to summarise or export."""
    from recognizer_core import ray_runtime

    stopped = ray_runtime.stop_requested()
    if stopped:
        raise KeyboardInterrupt(stopped)


def default_storage() -> str:
    """`RECOGNIZER_TUNE_STORAGE` if set (e.g. s3://bucket/tune on a cluster), else ./work_dirs/tune."""
    return os.environ.get("RECOGNIZER_TUNE_STORAGE", "work_dirs/tune")
