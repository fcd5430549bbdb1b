"""The console of a search: a steady `[tune] progress` line (done / running / pending, best so far, elapsed,
time left) every `interval_s` from the first minute, plus one line per measured report and per finished or
errored trial. A Ray Tune Callback, so it works the same in `ray job logs` and a terminal."""
from __future__ import annotations

import contextlib
import time
from typing import Callable

from ray.tune import Callback

from recognizer_core.tune.records import creation_index, finite, in_creation_order, pick_best_trial, \
    stopped_before_the_end
from recognizer_core.tune.reports import ROUND_KEY, estimate_left, progress_line


SHOWN = ("val/acc_top1", "val/mean_class_accuracy", "val/AP", "val/loss", "train/loss")


class SearchProgress(Callback):
    def __init__(self, metric: str, mode: str, total: int, concurrency: int, max_epochs: int | None,
                 interval_s: float = 30.0, extra_shown: tuple[str, ...] = (), early_stopping: bool = True,
                 epochs_of: Callable[[dict], int | None] | None = None):
        """`epochs_of(trial.config)`: a trial's own epochs (a space may tune them; `max_epochs` is the longest)."""
        self.metric, self.mode, self.total, self.concurrency = metric, mode, total, concurrency
        self.epochs_of = epochs_of
        self.max_epochs, self.interval_s, self.extra_shown = max_epochs, interval_s, extra_shown
        self.early_stopping = early_stopping
        self.start = time.time()
        self.last_print = -1e9
        self.best: tuple[str, float] | None = None
        self.trial_best: dict[str, float] = {}  # each trial's best measured value (errored trials dropped)
        self.epochs: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.finished_s: list[float] = []

    # Called on every step of Tune's event loop: print when the interval has passed.
    def on_step_begin(self, iteration, trials, **info):
        now = time.time()
        if now - self.last_print < self.interval_s:
            return
        self.last_print = now
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
            if t.status == "RUNNING":
                self.started.setdefault(t.trial_id, now)
        running = [t.trial_id for t in trials if t.status == "RUNNING"]
        pending = max(0, self.total - sum(counts.get(s, 0) for s in ("TERMINATED", "ERROR")) - len(running))
        elapsed = {t: now - self.started[t] for t in running if t in self.started}
        left = estimate_left(self.epochs, elapsed, self.finished_s, running, pending, self.max_epochs,
                             self.concurrency)
        print(progress_line(counts, self.total, self.best, self.metric, now - self.start, left, self.early_stopping),
              flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if finite(result.get("epoch")):
            self.epochs[trial.trial_id] = int(result["epoch"])
        value = result.get(self.metric)
        own = self.trial_best.get(trial.trial_id)
        if finite(value) and (own is None or (value > own if self.mode == "max" else value < own)):
            self.trial_best[trial.trial_id] = float(value)
            self._pick_best(trials)
        # Only measured values are printed: an epoch without validation shows no val/* at all.
        shown = {k: result[k] for k in (self.metric, *SHOWN, *self.extra_shown) if finite(result.get(k))}
        text = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
        validated = ROUND_KEY in result and any(k.startswith("val/") for k in shown)
        rnd = f" {ROUND_KEY}={result[ROUND_KEY]}" if validated else ""
        print(f"[tune] trial {trial.trial_id} epoch={result.get('epoch')} {text}{rnd}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished_s.append(time.time() - self.started.get(trial.trial_id, self.start))
        # Tune calls this for a trial that ran all its epochs and for one the scheduler stopped alike; the epochs
        # tell them apart, as results.csv's stopped_early does (last epoch short of the run's epochs).
        last = (getattr(trial, "last_result", None) or {}).get("epoch", self.epochs.get(trial.trial_id))
        own = self.max_epochs
        if self.epochs_of is not None:
            with contextlib.suppress(KeyError, ValueError, TypeError):   # params of another space version
                own = self.epochs_of(dict(getattr(trial, "config", None) or {}))
        # "stopped early": ASHA, or the run's own train.early_stopping (a trial's reports do not say which)
        if self.early_stopping and stopped_before_the_end(last, own):
            print(f"[tune] trial {trial.trial_id} stopped early after epoch {int(last)}/{own}", flush=True)
        else:
            print(f"[tune] trial {trial.trial_id} finished", flush=True)

    def _pick_best(self, trials) -> None:
        # The summary's rule (records.pick_best_trial): on a tie the trial created first is named here as in the
        # summary, whichever reported the value first. Tune's `trials` list is not in creation order on a resumed
        # experiment: the number in each trial's experiment_tag is.
        ordered = in_creation_order(trials, lambda t: creation_index(getattr(t, "experiment_tag", None)))
        self.best = pick_best_trial([(t.trial_id, self.trial_best[t.trial_id]) for t in ordered
                                     if t.trial_id in self.trial_best], self.mode)

    def on_trial_error(self, iteration, trials, trial, **info):
        # The summary never picks an errored trial: neither does the progress line from now on.
        if self.trial_best.pop(trial.trial_id, None) is not None:
            self._pick_best(trials)
        print(f"[tune] trial {trial.trial_id} ERRORED (reported in the results table; the search goes on)",
              flush=True)
