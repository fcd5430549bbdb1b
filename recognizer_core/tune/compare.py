"""Is the winner worth its compute? What a search cost (trial-epochs, CPU/GPU-hours, in preset runs), the
preset's score next to the winner's, and with cross-validation (`--folds K`) a paired test over the folds
that says whether the difference is more than the noise of a small validation set."""
from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from recognizer_core.tune.records import TrialRecord, best_report, finite, in_creation_order
from recognizer_core.tune.search_space import SearchSpace, get_dotted

FOLDS_KEY = "cv/folds"  # in every report of a cross-validated trial (tuner.FoldReporter)


def fold_key(metric: str, k: int) -> str:
    return f"{metric}_fold{k}"


def std_key(metric: str) -> str:
    return f"{metric}_std"


def fold_values(report: dict, metric: str) -> list[float] | None:
    """The per-fold values behind a cross-validated report's mean, or None for a plain trial."""
    k = report.get(FOLDS_KEY)
    if not finite(k) or k < 2:
        return None
    values = [report.get(fold_key(metric, i)) for i in range(int(k))]
    return [float(v) for v in values] if all(finite(v) for v in values) else None


def _trial_resources(space: SearchSpace, config_cls: type[BaseModel], params: dict, extra: dict) -> tuple[float, float]:
    try:
        data = space.config_dict(params, extra)
    except Exception:  # a trial whose params no longer map (e.g. a space edited after the run): count no CPUs
        return 0.0, 0.0
    workers = float(get_dotted(data, "scaling.num_workers", default=1) or 1)
    cpus = workers * float(get_dotted(data, "scaling.cpus_per_worker", default=1) or 1)
    gpus = workers * float(get_dotted(data, "scaling.gpus_per_worker", default=0) or 0) \
        if get_dotted(data, "scaling.use_gpu", default=False) else 0.0
    return cpus, gpus


def search_compute(records: list[TrialRecord], space: SearchSpace, config_cls: type[BaseModel],
                   extra: dict[str, Any]) -> dict:
    """Trial-epochs (a cross-validated trial counts each fold's), CPU- and GPU-hours reserved (wall time x
    resources of each trial's Train workers), and the same in runs of the preset (its full schedule)."""
    epochs_total, cpu_s, gpu_s, wall_s = 0.0, 0.0, 0.0, 0.0
    for rec in records:
        if not rec.reports:
            continue
        folds = max((r.get(FOLDS_KEY) or 1) for r in rec.reports)
        epochs = max((r.get("epoch") or 0) for r in rec.reports)
        seconds = max((r.get("time_total_s") or 0.0) for r in rec.reports)
        cpus, gpus = _trial_resources(space, config_cls, rec.params, extra)
        epochs_total += epochs * folds
        cpu_s += seconds * cpus * folds
        gpu_s += seconds * gpus * folds
        wall_s += seconds
    preset_epochs = get_dotted(space.config_dict({}, extra), space.epochs_field, default=None)
    out = {"trial_epochs": int(epochs_total), "cpu_hours": round(cpu_s / 3600, 4),
           "gpu_hours": round(gpu_s / 3600, 4), "trial_hours": round(wall_s / 3600, 4),
           "preset_run_epochs": preset_epochs}
    if finite(preset_epochs) and preset_epochs:
        out["preset_runs_equivalent"] = round(epochs_total / preset_epochs, 2)
    return out


def preset_trial(records: list[TrialRecord], space: SearchSpace) -> TrialRecord | None:
    """The trial that ran the space's first `start_with` point (the preset, evaluated first): the first created
    whose params agree with the point's. A point may leave params out (they are sampled), so only its own are
    compared."""
    points = space.start_points()
    if not points:
        return None
    want = {k: _norm(v) for k, v in points[0].items()}
    for rec in in_creation_order(records, lambda r: r.created):
        if all(k in rec.params and _norm(rec.params[k]) == v for k, v in want.items()):
            return rec
    return None


def _norm(v: Any) -> Any:
    return round(float(v), 12) if finite(v) else v


def paired_test(a: list[float], b: list[float], selected_from: int = 1) -> dict:
    """Paired t-test over folds (scipy.stats.ttest_rel): is mean(a - b) distinguishable from 0? `selected_from`:
    a was picked as the best of that many trials on these same folds, which makes p optimistic (with no trial
    truly better, p < 0.05 came out in 10% of searches of 10 trials and 17% of 30, not 5%): the verdict says so,
    and the final test split, which the search never saw, is the unbiased check."""
    from scipy import stats

    diff = [x - y for x, y in zip(a, b)]
    mean_diff = sum(diff) / len(diff)
    if all(abs(d - diff[0]) < 1e-12 for d in diff):  # constant differences: t is undefined
        p = 1.0 if abs(mean_diff) < 1e-12 else 0.0
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    verdict = "more than noise (p < 0.05)" if p < 0.05 else "within noise (p >= 0.05): not a proven improvement"
    if selected_from > 1:
        verdict += (f"; optimistic: the winner is the best of {selected_from} trials on these folds (see the "
                    "final test score)")
    return {"test": f"paired t-test over {len(diff)} folds (scipy.stats.ttest_rel)", "mean_difference": mean_diff,
            "p_value": p, "verdict": verdict, "selected_from": selected_from}


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def preset_comparison(records: list[TrialRecord], space: SearchSpace, metric: str, mode: str,
                      winner: TrialRecord, compute: dict) -> dict:
    """The preset's score next to the winner's, at the compute the search spent; with folds, mean +- std of
    both and a paired test over the folds."""
    preset = preset_trial(records, space)
    if preset is None:
        return {"note": "the space has no start_with point (the preset) or it did not run: no comparison"}
    pb, wb = best_report(preset, metric, mode), best_report(winner, metric, mode)
    out: dict[str, Any] = {"trial_id": preset.trial_id, "error": preset.error}
    if pb is None or wb is None:
        out["note"] = f"the preset trial has no finite {metric}"
        return out
    runs = compute.get("preset_runs_equivalent")
    out.update(value=pb[metric], epoch=pb.get("epoch"), winner_minus_preset=wb[metric] - pb[metric],
               same_budget=(f"the search spent {compute['trial_epochs']} trial-epochs = {runs} preset runs; the "
                            f"preset's trial scored {pb[metric]:.4f}, the winner's {wb[metric]:.4f}"
                            if runs is not None else None))
    pf, wf = fold_values(pb, metric), fold_values(wb, metric)
    if pf and wf and len(pf) == len(wf):
        (pm, ps), (wm, ws) = mean_std(pf), mean_std(wf)
        out["cv"] = {"preset": f"{pm:.4f} +- {ps:.4f}", "winner": f"{wm:.4f} +- {ws:.4f}",
                     "preset_folds": pf, "winner_folds": wf}
        # the winner was picked among the ranked trials only: an errored or unmeasured one was never a rival
        ranked = sum(1 for r in records if not r.error and best_report(r, metric, mode) is not None)
        out["cv"].update(paired_test(wf, pf, selected_from=ranked) if winner is not preset else
                         {"verdict": "the preset itself won: nothing to test"})
    return out
