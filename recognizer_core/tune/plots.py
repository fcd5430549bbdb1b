"""PNG plots of a search, drawn from the trial records (so they can be redrawn from a finished or resumed
experiment): the metric per trial labelled by trial id (errored trials marked), learning curves per trial id,
parameter importances (only with enough completed trials, unconditional parameters only) and a parallel-
coordinate plot of the most important parameters. Large searches keep readable plots: past LEGEND_TRIALS curves
only the best BEST_NAMED trials get a colour and a legend entry, the parallel plot names only the best
BEST_NAMED trials, and the history's width and tick labels are capped (HISTORY_MAX_WIDTH_IN, HISTORY_MAX_TICKS)."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

from recognizer_core.tune.records import TrialRecord, best_report, finite, in_creation_order
from recognizer_core.tune.search_space import SearchSpace, optuna_distribution

# fANOVA on fewer completed trials ranks noise: below this, the importances plot is skipped (and said why).
MIN_TRIALS_FOR_IMPORTANCE = 8
TOP_PARAMS = 6  # parallel coordinates: one axis per parameter, so only the most important ones
# What gets a name is capped: a 500-trial search drew a 500-entry legend (4,300 px tall, colours repeating every
# 10 lines), a 21,572 px wide history and trial ids stacked 0.04 apart that stretched the parallel plot's y axis
# 20-fold (every line squashed into its bottom 5%). Searches as small as these caps look as they always did.
LEGEND_TRIALS = 20  # learning curves: one coloured, named curve per trial up to this many curves
BEST_NAMED = 10  # above it, and in the parallel plot above this many trials: only the best ones are named
HISTORY_MAX_WIDTH_IN = 16.0  # optimization history: 0.5 inch per trial up to this width ...
HISTORY_MAX_TICKS = 40  # ... and at most this many trial-id tick labels (every k-th trial past it)
ERRORED_IDS_SHOWN = 8  # errored trial ids listed in the curves' title; more are counted, not listed


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
    from recognizer_core.fonts import font_for, fonts_for

    # metric, parameter names, choices and trial ids in a font with their glyphs (Korean ones were boxes in
    # matplotlib's DejaVu Sans); fonts_for adds it as the fallback, so ASCII text looks as it always did
    texts = [metric, *space.params, *(r.trial_id for r in records),
             *(str(c) for p in space.params.values() if p.type == "choice" for c in p.labels())]
    with fonts_for(font_for(texts)):
        return _write_plots(records, space, metric, mode, out_dir, time_attr)


def _write_plots(records: list[TrialRecord], space: SearchSpace, metric: str, mode: str, out_dir: Path,
                 time_attr: str) -> tuple[list, dict[str, str]]:
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
    save(_curves(plt, records, metric, time_attr, mode), "learning_curves")
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


def _best_first(records: list[TrialRecord], metric: str, mode: str) -> list[TrialRecord]:
    """Non-errored trials with a finite metric, best value first; on a tie the trial created first (the
    summary's rule, records.pick_best_trial)."""
    scored = [(best_report(r, metric, mode), r) for r in in_creation_order(records, lambda r: r.created)]
    ranked = [(b[metric], k, r) for k, (b, r) in enumerate(scored) if b is not None and not r.error]
    ranked.sort(key=lambda t: (-t[0] if mode == "max" else t[0], t[1]))
    return [r for _, _, r in ranked]


def _history(plt, records: list[TrialRecord], metric: str, mode: str):
    n = len(records)
    fig, ax = plt.subplots(figsize=(min(HISTORY_MAX_WIDTH_IN, max(7.0, 0.5 * n + 2)), 4.5))
    small = n <= 100  # matplotlib's default markers until they would overlap at the capped width
    best_so_far, xs, ys, ok, bad = None, [], [], [], []
    low = min((best_report(r, metric, mode) or {}).get(metric, math.inf) for r in records)
    for i, rec in enumerate(records):
        b = best_report(rec, metric, mode)
        if b is None or rec.error:
            bad.append((i, b[metric] if b is not None else (low if math.isfinite(low) else 0)))
            continue
        v = b[metric]
        ok.append((i, v))
        best_so_far = v if best_so_far is None else (max if mode == "max" else min)(best_so_far, v)
        xs.append(i)
        ys.append(best_so_far)
    if ok:
        ax.scatter(*zip(*ok), color="tab:blue", s=None if small else 12)
    if bad:
        ax.scatter(*zip(*bad), marker="x", color="red", s=60 if small else 24, label="errored / no metric")
    ax.step(xs, ys, where="post", color="tab:orange", label="best so far")
    step = math.ceil(n / HISTORY_MAX_TICKS)  # rotated ids need ~0.3 inch each: thin them past the cap
    shown = list(range(0, n, step))
    ax.set_xticks(shown)
    ax.set_xticklabels([records[i].trial_id for i in shown], rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("trial id (in start order)" + (f"; the id of one trial in {step} shown" if step > 1 else ""))
    ax.set_ylabel(f"best {metric}")
    ax.legend(fontsize=8)
    return fig


def _curves(plt, records: list[TrialRecord], metric: str, time_attr: str, mode: str):
    fig, ax = plt.subplots(figsize=(8, 5))
    curves = {}  # id(record) -> its validated points, in the records' order
    for rec in records:
        pts = [(r.get(time_attr), r[metric]) for r in rec.reports if finite(r.get(metric)) and finite(r.get(time_attr))]
        if pts:
            curves[id(rec)] = (rec, pts)
    many = len(curves) > LEGEND_TRIALS
    if many:  # the best few named and in colour, every other curve thin and grey behind them
        named = [r for r in _best_first(records, metric, mode) if id(r) in curves][:BEST_NAMED]
        keep = {id(r) for r in named}
        for key, (rec, pts) in curves.items():
            if key not in keep:
                ax.plot(*zip(*pts), color="0.6", lw=0.6, alpha=0.4, zorder=1)
    else:
        named = [rec for rec, _ in curves.values()]
    for k, rec in enumerate(named):  # the colour cycle has 10 colours: dashed from the 11th on, so none repeats
        ax.plot(*zip(*curves[id(rec)][1]), marker="o", ms=3, label=rec.trial_id, color=f"C{k % 10}",
                ls="-" if k < 10 else "--", zorder=2)
    errored = [r.trial_id for r in records if r.error]
    ax.set_xlabel(f"{time_attr} (validated only)")
    ax.set_ylabel(metric)
    lines = [f"{len(curves)} trials: the best {len(named)} by {metric} in colour, the rest thin grey"] if many else []
    if errored:
        more = len(errored) - ERRORED_IDS_SHOWN
        lines.append(f"errored: {', '.join(errored[:ERRORED_IDS_SHOWN])}" + (f" and {more} more" if more > 0 else ""))
    if lines:
        ax.set_title("\n".join(lines), fontsize=9, color="black" if many else "red")
    if many:  # beside the axes: ten entries inside would cover the curves they name
        ax.legend(fontsize=7, title="trial id (best first)", loc="upper left", bbox_to_anchor=(1.01, 1))
    elif named:
        ax.legend(fontsize=7, ncol=2, title="trial id")
    return fig


def _parallel(plt, records: list[TrialRecord], space: SearchSpace, names: list[str], metric: str, mode: str):
    """One vertical axis per parameter (normalised 0..1, choices spread evenly), a line per trial coloured by
    its metric, ticks only at each axis' own values (at most 6 labels, so they never overlap); the ids of the
    best BEST_NAMED trials at the metric axis (all of them in a smaller search), their lines drawn on top."""
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
    best = {id(r) for r in _best_first(records, metric, mode)[:BEST_NAMED]}
    named = [i for i, r in enumerate(records) if id(r) in best]
    crowd = len(records) > 50  # hundreds of opaque lines hide each other: fainter and thinner ones
    for i in [i for i in range(len(records)) if id(records[i]) not in best] + named:  # the named ones on top
        top = id(records[i]) in best
        thin = crowd and not top
        ax.plot(axes_pos, [col[i] for col in scaled], color=cmap(scaled[-1][i]), alpha=0.35 if thin else 0.8,
                lw=0.7 if thin else (2.0 if top and len(named) < len(records) else 1.5))
    # Ids at the metric axis, 0.04 apart: stacked up from their own values, then pushed down below the axis'
    # top (1), so they stay inside the data's range; a leader joins a moved id to its line.
    order = sorted(named, key=lambda i: scaled[-1][i])
    ys: list[float] = []
    for i in order:
        ys.append(max(scaled[-1][i], ys[-1] + 0.04) if ys else scaled[-1][i])
    for k in range(len(ys) - 1, -1, -1):
        ys[k] = min(ys[k], 1.0 if k == len(ys) - 1 else ys[k + 1] - 0.04)
    for i, y in zip(order, ys):
        if abs(y - scaled[-1][i]) > 1e-9:
            # add_artist, not plot: a leader must not widen the data limits (and so the x axis)
            ax.add_artist(matplotlib.lines.Line2D([axes_pos[-1], axes_pos[-1] + 0.05], [scaled[-1][i], y],
                                                  color="0.5", lw=0.5))
        ax.text(axes_pos[-1] + 0.05, y, records[i].trial_id, fontsize=7, va="center")
    for x in axes_pos:
        ax.axvline(x, color="grey", lw=0.8)
    ax.text(axes_pos[-1] - 0.3, 1.04, f"{hi:.3g}", fontsize=7)
    ax.text(axes_pos[-1] - 0.3, -0.06, f"{lo:.3g}", fontsize=7)
    ax.set_xticks(axes_pos)
    ax.set_xticklabels(names + [metric], rotation=20, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.1, 1.1)
    who = (f"{len(records)} completed trials, ids of the best {len(named)} (thick)" if len(named) < len(records)
           else "completed trials by id")
    ax.set_title(f"top {len(names)} parameters (by importance when ranked), {who}", fontsize=9)
    return fig
