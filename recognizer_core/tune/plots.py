"""PNG plots of a search, drawn from the trial records (so they can be redrawn from a finished or resumed
experiment): the metric per trial labelled by trial id (errored trials marked), learning curves per trial id,
parameter importances (only with enough completed trials, unconditional parameters only) and a parallel-
coordinate plot of the most important parameters."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

from recognizer_core.tune.records import TrialRecord, best_report, finite
from recognizer_core.tune.search_space import SearchSpace, optuna_distribution

# fANOVA on fewer completed trials ranks noise: below this, the importances plot is skipped (and said why).
MIN_TRIALS_FOR_IMPORTANCE = 8
TOP_PARAMS = 6  # parallel coordinates: one axis per parameter, so only the most important ones


def study_from_records(records: list[TrialRecord], space: SearchSpace, metric: str, mode: str,
                       time_attr: str = "epoch", params: list[str] | None = None):
    """An in-memory Optuna study with one COMPLETE trial per trial that reported a finite metric (its best
    value, every measured report as an intermediate value) and one FAIL trial per other trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for rec in records:
        keep = [k for k in rec.params if k in space.params and (params is None or k in params)]
        dists = {k: optuna_distribution(space.params[k]) for k in keep}
        best = best_report(rec, metric, mode)
        steps: dict[int, float] = {}
        for i, r in enumerate(rec.reports):
            if finite(r.get(metric)):
                step = r.get(time_attr, i)
                steps[int(step) if finite(step) else i] = float(r[metric])
        state = optuna.trial.TrialState.FAIL if best is None else optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            params={k: rec.params[k] for k in keep}, distributions=dists, state=state,
            value=None if best is None else float(best[metric]), intermediate_values=steps,
            user_attrs={"trial_id": rec.trial_id}))
    return study


def unconditional_params(records: list[TrialRecord], space: SearchSpace) -> list[str]:
    """Parameters without a `when`, present in every given trial and taking more than one value."""
    out = []
    for name, p in space.params.items():
        values = [str(r.params.get(name)) for r in records]
        if p.when is None and all(name in r.params for r in records) and len(set(values)) > 1:
            out.append(name)
    return out


def importances(records: list[TrialRecord], space: SearchSpace, metric: str, mode: str) -> dict[str, float]:
    import optuna

    names = unconditional_params(records, space)
    if not names:
        return {}
    study = study_from_records(records, space, metric, mode, params=names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(optuna.importance.get_param_importances(study, params=names, evaluator=None))


def write_plots(records: list[TrialRecord], space: SearchSpace, metric: str, mode: str, out_dir: Path,
                time_attr: str = "epoch") -> tuple[list, dict[str, str]]:
    """Write the PNGs; returns (written paths, {plot: why it was skipped})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    done = [r for r in records if not r.error and best_report(r, metric, mode) is not None]
    made: list[Path] = []
    skipped: dict[str, str] = {}

    def save(fig, name: str) -> None:
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append(path)

    if not done:
        why = f"needs 1 trial with a finite {metric}, have 0"
        return made, {n: why for n in ("optimization_history", "learning_curves", "param_importances",
                                       "parallel_coordinate")}
    save(_history(plt, records, metric, mode), "optimization_history")
    save(_curves(plt, records, metric, time_attr), "learning_curves")
    imp: dict[str, float] = {}
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        skipped["param_importances"] = (f"{len(done)} completed trials: importances need at least "
                                        f"{MIN_TRIALS_FOR_IMPORTANCE} to rank more than noise")
    else:
        try:
            imp = importances(done, space, metric, mode)
        except Exception as err:  # e.g. a single distinct value everywhere
            skipped["param_importances"] = f"{type(err).__name__}: {err}"
        if imp:
            fig, ax = plt.subplots(figsize=(8, 0.45 * len(imp) + 1.5))
            names = list(imp)[::-1]
            ax.barh(names, [imp[n] for n in names], color="tab:blue")
            ax.set_xlabel(f"fANOVA importance for {metric}")
            ax.set_title(f"{len(done)} completed trials; conditional parameters left out (not in every trial)",
                         fontsize=9)
            save(fig, "param_importances")
        elif "param_importances" not in skipped:
            skipped["param_importances"] = "no unconditional parameter varies across the completed trials"
    top = list(imp)[:TOP_PARAMS] or unconditional_params(done, space)[:TOP_PARAMS]
    if len(done) < 2 or not top:
        skipped["parallel_coordinate"] = f"needs 2 completed trials and a varying parameter, have {len(done)}"
    else:
        save(_parallel(plt, done, space, top, metric, mode), "parallel_coordinate")
    return made, skipped


def _history(plt, records: list[TrialRecord], metric: str, mode: str):
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(records) + 2), 4.5))
    best_so_far, xs, ys = None, [], []
    low = min((best_report(r, metric, mode) or {}).get(metric, math.inf) for r in records)
    for i, rec in enumerate(records):
        b = best_report(rec, metric, mode)
        if b is None or rec.error:
            y = b[metric] if b is not None else (low if math.isfinite(low) else 0)
            ax.scatter([i], [y], marker="x", color="red", s=60,
                       label="errored / no metric" if "errored / no metric" not in
                       ax.get_legend_handles_labels()[1] else None)
            continue
        v = b[metric]
        ax.scatter([i], [v], color="tab:blue")
        best_so_far = v if best_so_far is None else (max if mode == "max" else min)(best_so_far, v)
        xs.append(i)
        ys.append(best_so_far)
    ax.step(xs, ys, where="post", color="tab:orange", label="best so far")
    ax.set_xticks(range(len(records)))
    ax.set_xticklabels([r.trial_id for r in records], rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("trial id (in start order)")
    ax.set_ylabel(f"best {metric}")
    ax.legend(fontsize=8)
    return fig


def _curves(plt, records: list[TrialRecord], metric: str, time_attr: str):
    fig, ax = plt.subplots(figsize=(8, 5))
    for rec in records:
        pts = [(r.get(time_attr), r[metric]) for r in rec.reports if finite(r.get(metric)) and finite(r.get(time_attr))]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=rec.trial_id)
    errored = [r.trial_id for r in records if r.error]
    ax.set_xlabel(f"{time_attr} (validated only)")
    ax.set_ylabel(metric)
    if errored:
        ax.set_title(f"errored (no curve): {', '.join(errored)}", fontsize=9, color="red")
    ax.legend(fontsize=7, ncol=2, title="trial id")
    return fig


def _parallel(plt, records: list[TrialRecord], space: SearchSpace, names: list[str], metric: str, mode: str):
    """One vertical axis per parameter (normalised 0..1, choices spread evenly), a line per trial coloured by
    its metric, ticks only at each axis' own values (at most 6 labels, so they never overlap)."""
    import matplotlib

    values = [best_report(r, metric, mode)[metric] for r in records]
    lo, hi = min(values), max(values)
    fig, ax = plt.subplots(figsize=(1.8 * (len(names) + 1) + 2, 5.5))
    axes_pos = list(range(len(names) + 1))
    scaled: list[list[float]] = []
    for j, name in enumerate(names):
        p = space.params[name]
        raw = [r.params.get(name) for r in records]
        if p.type == "choice":
            cats = [str(c) for c in p.labels()]
            pos = [cats.index(str(v)) / max(1, len(cats) - 1) if str(v) in cats else math.nan for v in raw]
            ticks = list(zip([i / max(1, len(cats) - 1) for i in range(len(cats))], cats))
        else:
            log = p.type == "loguniform" or p.log
            f = (lambda x: math.log10(x)) if log else (lambda x: x)
            a, b = f(p.low), f(p.high)
            pos = [(f(v) - a) / (b - a) if finite(v) else math.nan for v in raw]
            ticks = [(t, f"{(10 ** (a + t * (b - a)) if log else a + t * (b - a)):.3g}") for t in (0, 0.5, 1)]
        scaled.append(pos)
        for t, label in ticks[:6]:
            ax.text(j + 0.03, t, label, fontsize=7, va="center")
    scaled.append([(v - lo) / (hi - lo) if hi > lo else 0.5 for v in values])
    cmap = matplotlib.colormaps["viridis"]
    for i, rec in enumerate(records):
        ax.plot(axes_pos, [col[i] for col in scaled], color=cmap(scaled[-1][i]), alpha=0.8)
    label_y = -1.0
    for i in sorted(range(len(records)), key=lambda i: scaled[-1][i]):  # ids at the metric axis, never overlapping
        label_y = max(scaled[-1][i], label_y + 0.04)
        ax.text(axes_pos[-1] + 0.05, label_y, records[i].trial_id, fontsize=7, va="center")
    for x in axes_pos:
        ax.axvline(x, color="grey", lw=0.8)
    ax.text(axes_pos[-1] - 0.3, 1.04, f"{hi:.3g}", fontsize=7)
    ax.text(axes_pos[-1] - 0.3, -0.06, f"{lo:.3g}", fontsize=7)
    ax.set_xticks(axes_pos)
    ax.set_xticklabels(names + [metric], rotation=20, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.1, max(1.1, label_y + 0.05))
    ax.set_title(f"top {len(names)} parameters (by importance when ranked), completed trials by id", fontsize=9)
    return fig
