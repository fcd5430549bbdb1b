"""What a trial reports to Tune, as pure functions: validation metrics only where validation ran (never a
placeholder 0), the validation round ASHA measures rungs in, the fold average of a cross-validated trial, and
the one-line progress of a whole search."""
from __future__ import annotations

import math
from typing import Any

from recognizer_core.tune.compare import FOLDS_KEY, fold_key, std_key
from recognizer_core.tune.records import finite

ROUND_KEY = "val_round"  # number of validations so far: ASHA's time unit (validated epochs only)
VALIDATED_FLAG = "val/validated"  # 0 on epochs the loop did not validate (older loops report stale values then)


def validated_epochs(epochs: int, val_interval: int = 1, val_begin: int = 1) -> list[int]:
    """Epochs (1-based) the training loops validate: mmengine's rule, plus always the last epoch."""
    return [e for e in range(1, epochs + 1) if e >= val_begin and (e % val_interval == 0 or e == epochs)]


def round_of(epoch: int, schedule: list[int]) -> int:
    """How many validations have happened by the end of `epoch`."""
    return sum(1 for e in schedule if e <= epoch)


def clean_report(metrics: dict[str, Any], schedule: list[int] | None) -> dict[str, Any]:
    """A Train report as Tune should see it: `val/*` only at a validated epoch (a report carrying them at an
    epoch that did not validate, or flagged val/validated=0, has them removed), plus `val_round`."""
    out = dict(metrics)
    epoch = out.get("epoch")
    validated = out.get(VALIDATED_FLAG)
    if validated == 0 or (schedule is not None and finite(epoch) and int(epoch) not in schedule):
        out = {k: v for k, v in out.items() if not k.startswith("val/")}
    if schedule is not None and finite(epoch):
        out[ROUND_KEY] = round_of(int(epoch), schedule)
    return out


class FoldAggregator:
    """Collects the K fold runs' reports of one trial; once every fold has reported epoch e, returns the
    report of epoch e: each `val/*` metric's mean over the folds (what ASHA and TPE see), its std and each
    fold's value. A fold that has finished (e.g. stopped early) counts with its last validated values, but
    only at epochs after its own last report: a value never stands in for an earlier epoch.

    A trial continued after a restart has folds resuming from their own latest checkpoints, often an epoch or
    more apart (a fold that had finished only repeats its final metrics). An epoch before a fold's first
    report here is one that fold will never report again: it is skipped, not merged from later values, so
    every mean reported is one that happened."""

    def __init__(self, folds: int, metrics: tuple[str, ...]):
        self.folds, self.metrics = folds, metrics
        self.by_epoch: dict[int, dict[int, dict]] = {}
        self.last_val: dict[int, dict] = {}
        self.first_epoch: dict[int, int] = {}  # each fold's first / last epoch reported to this aggregator
        self.last_epoch: dict[int, int] = {}
        self.finished: set[int] = set()
        self.emitted = 0

    def add(self, fold: int, report: dict) -> list[dict]:
        epoch = int(report["epoch"])
        self.first_epoch.setdefault(fold, epoch)
        self.last_epoch[fold] = max(epoch, self.last_epoch.get(fold, epoch))
        if epoch > self.emitted:
            self.by_epoch.setdefault(epoch, {})[fold] = report
        if any(k.startswith("val/") for k in report):
            self.last_val[fold] = report
        return self._ready()

    def finish(self, fold: int) -> list[dict]:
        self.finished.add(fold)
        return self._ready()

    def _without(self, fold: int, epoch: int) -> str:
        """What epoch `epoch` can do without fold `fold`'s report: 'wait' for it, 'stand_in' (the finished
        fold's last values, from an earlier epoch), or 'skip' the epoch (the fold will never report it)."""
        if fold not in self.first_epoch:  # nothing from it yet: its first report may be this epoch
            return "stand_in" if fold in self.finished else "wait"
        if epoch < self.first_epoch[fold]:  # it resumed past this epoch
            return "skip"
        if epoch > self.last_epoch[fold]:
            return "stand_in" if fold in self.finished else "wait"
        return "skip"  # inside the epochs it reported, yet not reported: a gap, never filled in

    def _ready(self) -> list[dict]:
        out = []
        for epoch in sorted(self.by_epoch):
            have = self.by_epoch[epoch]
            verdicts = {self._without(f, epoch) for f in range(self.folds) if f not in have}
            if "wait" in verdicts:
                break
            if "skip" not in verdicts:
                out.append(self._merge(epoch, have))
            self.emitted = epoch
            del self.by_epoch[epoch]
        return out

    def _merge(self, epoch: int, have: dict[int, dict]) -> dict:
        # a fold missing here is a finished one past its last report (`_without`): its last values stand in
        reports = [have.get(f) or self.last_val.get(f) or {} for f in range(self.folds)]
        merged: dict[str, Any] = {"epoch": epoch, FOLDS_KEY: self.folds}
        if ROUND_KEY in reports[0]:
            merged[ROUND_KEY] = max(r.get(ROUND_KEY, 0) for r in reports)
        validated = any(k.startswith("val/") for r in have.values() for k in r)
        # model/*: the trial's measured values (latency, params; the same in every fold), which a multi-objective
        # search needs in each report.
        keys = {k for r in reports for k in r if k.startswith(("val/", "train/", "model/")) and finite(r.get(k))}
        for key in sorted(keys):
            if key.startswith("val/") and not validated:
                continue
            values = [r.get(key) for r in reports]
            if not all(finite(v) for v in values):
                continue
            mean = sum(values) / len(values)
            merged[key] = mean
            if key in self.metrics:
                merged[std_key(key)] = math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1))
                for f, v in enumerate(values):
                    merged[fold_key(key, f)] = v
        return merged


def progress_line(counts: dict[str, int], total: int, best: tuple[str, float] | None, metric: str,
                  elapsed_s: float, left_s: float | None, early_stopping: bool = True) -> str:
    """`[tune] progress 12:30 | trials 3 done, 2 running, 5 pending (1 errored) of 10 | best ... | left ~8 min`"""
    done = counts.get("TERMINATED", 0)
    parts = [f"trials {done} done, {counts.get('RUNNING', 0)} running, "
             f"{max(0, total - done - counts.get('RUNNING', 0) - counts.get('ERROR', 0))} pending"
             + (f" ({counts['ERROR']} errored)" if counts.get("ERROR") else "") + f" of {total}"]
    parts.append(f"best {metric} {best[1]:.4f} (trial {best[0]})" if best else f"best {metric}: none measured yet")
    note = " at most (ASHA stops some trials sooner)" if early_stopping else ""
    parts.append(f"left {_clock(left_s)}{note}" if left_s is not None else "left: estimating after the first epochs")
    return f"[tune] progress {_clock(elapsed_s)} | " + " | ".join(parts)


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def estimate_left(trial_epochs: dict[str, int], trial_elapsed: dict[str, float], finished_s: list[float],
                  running: list[str], pending: int, max_epochs: int | None, concurrency: int) -> float | None:
    """Seconds left if every remaining trial runs to the end: a finished trial's average duration (or, before
    any finished, the running trials' time per epoch x max_epochs), spread over the concurrent slots."""
    if finished_s:
        per_trial = sum(finished_s) / len(finished_s)
    else:
        rates = [trial_elapsed[t] / trial_epochs[t] for t in running if trial_epochs.get(t)]
        if not rates or not max_epochs:
            return None
        per_trial = max_epochs * sum(rates) / len(rates)
    work = pending * per_trial + sum(max(0.0, per_trial - trial_elapsed.get(t, 0.0)) for t in running)
    return work / max(1, concurrency)
