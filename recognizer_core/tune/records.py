"""Plain data of a finished search: `TrialRecord`s, the one definition of a trial's best report, and the
short form of an error. No Ray and no plotting here, so `results.py` and `plots.py` both build on it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

CHECKPOINT_KEY = "checkpoint_path"  # added by ray.tune.integration.ray_train.TuneReportCallback
FINAL_REPORT_KEY = "tune/final_report"  # marks the repeat of a continued Train run's last metrics (tuner.py)
ERROR_HEAD_CHARS = 300


@dataclass
class TrialRecord:
    """One trial: its sampled params, every report (metrics dicts in order) and its error, if any."""

    trial_id: str
    params: dict[str, Any]
    reports: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    path: str = ""
    created: int | None = None  # Tune's creation number of the trial (`creation_index`), None when unknown


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def stopped_before_the_end(last_epoch: Any, own_epochs: int | None) -> bool:
    """A trial whose last reported epoch is short of its own epochs stopped early: results.csv's stopped_early and
    the search's "stopped early" line."""
    return own_epochs is not None and finite(last_epoch) and last_epoch < own_epochs


def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def best_report(rec: TrialRecord, metric: str, mode: str, *,
                checkpoint_exists: Callable[[str], bool] | None = None) -> dict | None:
    """The report with the best finite `metric`; on ties the EARLIEST, i.e. the first epoch that reached the
    best score. This is the training loop's own rule (mmengine's save_best: a later epoch replaces the best
    only when strictly better), so the epoch named here is the epoch of the trial's exported best model.
    A report without the metric (an epoch that was not validated) is never a candidate: missing is not 0.
    With `checkpoint_exists`: only among reports whose checkpoint is still there."""
    best = None
    for r in rec.reports:
        if not finite(r.get(metric)):
            continue
        if checkpoint_exists is not None and not (r.get(CHECKPOINT_KEY) and checkpoint_exists(r[CHECKPOINT_KEY])):
            continue
        if best is None or (r[metric] > best[metric] if mode == "max" else r[metric] < best[metric]):
            best = r
    return best


def creation_index(experiment_tag: Any) -> int | None:
    """The number Tune gave a trial when it created it: Tune's search generator names each new trial's
    `experiment_tag` "<counter>_<params>" and saves the counter with the experiment, so the number survives a
    resume. The order of Tune's trial list does not: a resumed experiment re-adds its restored trials most
    recent result first (TuneController._requeue_restored_trials). None when the tag has no number."""
    head = str(experiment_tag or "").split("_", 1)[0]
    return int(head) if head.isdigit() else None


def in_creation_order(items: Iterable[Any], created: Callable[[Any], int | None]) -> list[Any]:
    """`items` sorted by their creation number (`created(item)`); items without one keep their order, last."""
    return sorted(items, key=lambda item: (created(item) is None, created(item) or 0))


def pick_best_trial(values: Iterable[tuple[str, Any]], mode: str) -> tuple[str, float] | None:
    """The search's best trial from `(trial_id, the trial's best value)` pairs IN THE ORDER TUNE CREATED THE
    TRIALS (`in_creation_order`): the best finite value; on a tie the trial created first (the preset,
    evaluated first, keeps its place against a tied newcomer). The one rule of the live `[tune] progress` line
    (`progress.py`) and of the summary (`results.write_summary`), so both always name the same trial."""
    best = None
    for trial_id, value in values:
        if finite(value) and (best is None or (value > best[1] if mode == "max" else value < best[1])):
            best = (trial_id, float(value))
    return best


def error_head(error: BaseException | str | None) -> str | None:
    """`ExceptionType: first line(s) of its message`, at most ERROR_HEAD_CHARS. Ray wraps a trial's failure
    in layers (TuneError / RayTaskError / TrainingFailedError) whose text ends with worker-policy advice;
    what a user needs is the innermost exception's type and the start of its message."""
    if error is None:
        return None
    inner = error
    if isinstance(error, BaseException):
        seen = set()
        # RayTaskError(X).cause, TrainingFailedError's worker failures, raise ... from ...: walk to the root.
        while id(inner) not in seen:
            seen.add(id(inner))
            nxt = getattr(inner, "cause", None) or inner.__cause__
            failures = getattr(inner, "worker_failures", None)
            if isinstance(failures, dict) and failures:
                nxt = next(iter(failures.values()))
            if not isinstance(nxt, BaseException):
                break
            inner = nxt
    text = str(inner).strip()
    name = type(inner).__name__ if isinstance(inner, BaseException) else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # A remote traceback's text: the exception line is the last line that looks like "Name: message".
    exc_lines = [ln for ln in lines if _looks_like_exception_line(ln)]
    if exc_lines and any(ln.startswith("Traceback") for ln in lines):
        line = exc_lines[-1]
        head = line
        i = lines.index(line)
        for more in lines[i + 1:i + 3]:  # a multi-line message: keep its start
            head += " | " + more
    else:
        head = f"{name}: {lines[0]}" if name and lines else (name or (lines[0] if lines else ""))
        if len(lines) > 1:
            head += " | " + " | ".join(lines[1:3])
    return head[:ERROR_HEAD_CHARS] if len(head) <= ERROR_HEAD_CHARS else head[:ERROR_HEAD_CHARS - 3] + "..."


def _looks_like_exception_line(line: str) -> bool:
    name, sep, _ = line.partition(":")
    name = name.split(".")[-1].split("(")[0]
    return bool(sep) and name.isidentifier() and (name.endswith(("Error", "Exception", "Interrupt", "Exit"))
                                                  or name in ("OutOfMemoryError", "KeyError"))
