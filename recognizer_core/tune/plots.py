"""PNG plots of a search: Optuna's optimisation history, parameter importances, parallel coordinates and the
trials' learning curves, drawn from an Optuna study rebuilt from the trial records (so they can be redrawn
from a finished or resumed experiment without the live searcher)."""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from recognizer_core.tune.results import TrialRecord, best_report
from recognizer_core.tune.search_space import SearchSpace, optuna_distribution


def study_from_records(records: list[TrialRecord], space: SearchSpace, metric: str, mode: str,
                       time_attr: str = "epoch"):
    """An in-memory Optuna study with one COMPLETE trial per trial that reported a finite metric (its best
    value, with every report as an intermediate value) and one FAIL trial per errored trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for rec in records:
        params = {k: v for k, v in rec.params.items() if k in space.params}
        dists = {k: optuna_distribution(space.params[k]) for k in params}
        best = best_report(rec, metric, mode)
        steps: dict[int, float] = {}
        for i, r in enumerate(rec.reports):
            v = r.get(metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                step = r.get(time_attr, i)
                steps[int(step) if isinstance(step, (int, float)) and math.isfinite(step) else i] = float(v)
        if best is None:
            state, value = optuna.trial.TrialState.FAIL, None
        else:
            state, value = optuna.trial.TrialState.COMPLETE, float(best[metric])
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value, state=state,
                                                  intermediate_values=steps, user_attrs={"trial_id": rec.trial_id}))
    return study


def write_plots(records: list[TrialRecord], space: SearchSpace, metric: str, mode: str, out_dir: Path,
                time_attr: str = "epoch") -> tuple[list[Path], dict[str, str]]:
    """Write the PNGs; returns (written paths, {plot: why it was skipped})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    study = study_from_records(records, space, metric, mode, time_attr)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    made: list[Path] = []
    skipped: dict[str, str] = {}
    plots: dict[str, Any] = {
        "optimization_history": lambda: ovm.plot_optimization_history(study, target_name=metric),
        "param_importances": lambda: ovm.plot_param_importances(study, target_name=metric),
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, target_name=metric),
        "learning_curves": lambda: ovm.plot_intermediate_values(study),
    }
    needs = {"optimization_history": 1, "param_importances": 2, "parallel_coordinate": 2, "learning_curves": 1}
    for name, draw in plots.items():
        if len(complete) < needs[name]:
            skipped[name] = f"needs {needs[name]} trial(s) with a finite {metric}, have {len(complete)}"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            if name == "learning_curves":
                ax.set_xlabel(time_attr)
                ax.set_ylabel(metric)
            # One axis per parameter: widen so the tick labels of neighbouring axes do not overlap.
            width = max(10.0, 1.1 * (len(space.params) + 1)) if name == "parallel_coordinate" else 9.0
            fig.set_size_inches(width, 6.0)
            path = out_dir / f"{name}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            made.append(path)
        except Exception as err:  # e.g. importances when no parameter is shared by all trials
            skipped[name] = f"{type(err).__name__}: {err}"
            plt.close("all")
    return made, skipped
