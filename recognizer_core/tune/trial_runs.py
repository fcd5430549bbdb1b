"""Ray glue inside a trial: the Train -> Tune report callback (val/* only where measured, `val_round`,
measured values) and the cross-validated trial (K fold runs side by side, their reports averaged)."""
from __future__ import annotations

import queue
import threading
from typing import Any

from ray.train.v2.api.callback import UserCallback
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from recognizer_core.tune.reports import FoldAggregator, clean_report


class ReportToTune(TuneReportCallback):
    """TuneReportCallback that reports val/* only at validated epochs, adds `val_round` (ASHA's unit) and the
    trial's measured values (e.g. latency)."""

    def __init__(self, schedule: list[int] | None, measured: dict[str, Any]):
        super().__init__()
        self.schedule, self.measured = schedule, measured

    def clean(self, metrics: dict) -> dict:
        return {**clean_report(metrics, self.schedule), **self.measured}

    def after_report(self, run_context, metrics, checkpoint):
        out = self.clean(metrics[0])
        if checkpoint:
            out[CHECKPOINT_PATH_KEY] = checkpoint.path
        self._training_actor_item_queue.put(out)


class FoldReport(UserCallback):
    """Sends fold `fold`'s cleaned reports to the trial (a Ray queue), where `FoldAggregator` averages them."""

    def __init__(self, reports, fold: int, schedule: list[int] | None, measured: dict[str, Any]):
        self.reports, self.fold, self.schedule, self.measured = reports, fold, schedule, measured

    def after_report(self, run_context, metrics, checkpoint):
        self.reports.put((self.fold, {**clean_report(metrics[0], self.schedule), **self.measured}))


def run_folds(driver, params: dict[str, Any], trial_dir: str, measured: dict[str, Any]) -> None:
    """K Train runs (`train_fold<k>` in the trial folder) side by side, each in a thread (TorchTrainer.fit
    blocks); every epoch all folds reach is reported to Tune once, averaged. A failed fold fails the trial."""
    import ray.tune
    from ray.util.queue import Empty, Queue

    from recognizer_core.tune.tuner import schedule_of

    k = len(driver.fold_overrides)
    cfgs = [driver.space.build_config(driver.config_cls, params, {**driver.extra, **o}) for o in driver.fold_overrides]
    schedule = schedule_of(cfgs[0], driver.space.epochs_field)
    reports = Queue(actor_options={"num_cpus": 0})
    agg = FoldAggregator(k, (driver.metric,))
    finished: queue.Queue = queue.Queue()
    errors: dict[int, BaseException] = {}

    def fit(f: int) -> None:
        try:
            driver._fit(cfgs[f], trial_dir, f"train_fold{f}", FoldReport(reports, f, schedule, measured))
        except BaseException as err:  # handed to the trial's thread, which raises it
            errors[f] = err
        finally:
            finished.put(f)

    threads = [threading.Thread(target=fit, args=(f,), daemon=True, name=f"fold{f}") for f in range(k)]
    for t in threads:
        t.start()
    done = 0
    while done < k:
        try:
            fold, rep = reports.get(timeout=0.5)
            for merged in agg.add(fold, rep):
                ray.tune.report(merged)
        except Empty:
            pass
        while not finished.empty():
            f = finished.get()
            done += 1
            if f in errors:
                raise RuntimeError(f"fold {f} of {k} failed: {type(errors[f]).__name__}: {errors[f]}") from errors[f]
            while True:  # a finished fold's reports are all queued already (put is synchronous): take them first
                try:
                    fold, rep = reports.get_nowait()
                except Empty:
                    break
                for merged in agg.add(fold, rep):
                    ray.tune.report(merged)
            for merged in agg.finish(f):
                ray.tune.report(merged)
