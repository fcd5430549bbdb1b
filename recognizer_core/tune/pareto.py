"""Accuracy vs speed: the Pareto front of a multi-objective search (the metric against measured latency or
parameter count), as a table, a plot, and a training YAML per front point; the summary's pick is the cheapest
point within `within` of the best metric (e.g. the fastest model within 1 point of the most accurate)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from recognizer_core.tune.records import TrialRecord, best_report, finite
from recognizer_core.tune.search_space import SearchSpace


def front_rows(records: list[TrialRecord], metric: str, mode: str, objectives: list[str]) -> list[dict]:
    """One row per completed trial: its best metric (as everywhere: first epoch to reach it) and objectives."""
    rows = []
    for rec in records:
        best = best_report(rec, metric, mode)
        if rec.error or best is None:
            continue
        obj = {o: next((r[o] for r in rec.reports if finite(r.get(o))), None) for o in objectives}
        if all(v is not None for v in obj.values()):
            rows.append({"trial_id": rec.trial_id, metric: best[metric], "epoch": best.get("epoch"), **obj})
    return rows


def pareto_mask(rows: list[dict], metric: str, mode: str, objectives: list[str]) -> list[bool]:
    """True for rows no other row dominates (at least as good everywhere, strictly better somewhere)."""
    sign = 1 if mode == "max" else -1

    def key(r):  # every coordinate as "bigger is better"
        return [sign * r[metric]] + [-r[o] for o in objectives]

    keys = [key(r) for r in rows]
    return [not any(all(b >= a for a, b in zip(ka, kb)) and any(b > a for a, b in zip(ka, kb))
                    for j, kb in enumerate(keys) if j != i) for i, ka in enumerate(keys)]


def pick(front: list[dict], metric: str, mode: str, objective: str, within: float) -> dict:
    """The cheapest (by `objective`) front point whose metric is within `within` of the front's best."""
    best = max(r[metric] for r in front) if mode == "max" else min(r[metric] for r in front)
    ok = [r for r in front if (best - r[metric] if mode == "max" else r[metric] - best) <= within + 1e-12]
    return min(ok, key=lambda r: r[objective])


def pareto_pick(records: list[TrialRecord], metric: str, mode: str, objectives: list[str],
                within: float) -> str | None:
    """The trial id of `pick` on the front of `records` (None when no trial completed)."""
    rows = front_rows(records, metric, mode, objectives)
    if not rows:
        return None
    front = [r for r, m in zip(rows, pareto_mask(rows, metric, mode, objectives)) if m]
    return pick(front, metric, mode, objectives[0], within)["trial_id"]


def write_pareto(records: list[TrialRecord], space: SearchSpace, config_cls: type[BaseModel], *, metric: str,
                 mode: str, objectives: list[str], extra: dict[str, Any], out_dir: Path, within: float) -> dict:
    """pareto.csv (every trial, `on_front` marked), pareto.png, pareto/<trial>/best_config.yaml per front
    point, and the pick's config as best_config.yaml; returns the summary's `pareto` entry."""
    from recognizer_core.tune.results import write_best_config

    rows = front_rows(records, metric, mode, objectives)
    if not rows:
        return {"note": f"no completed trial reported {metric} and {objectives}"}
    mask = pareto_mask(rows, metric, mode, objectives)
    for r, m in zip(rows, mask):
        r["on_front"] = m
    table = pd.DataFrame(rows).sort_values(objectives[0]).reset_index(drop=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "pareto.csv", index=False)
    front = [r for r in rows if r["on_front"]]
    params = {r.trial_id: r.params for r in records}
    configs = {}
    for r in front:
        path = out_dir / "pareto" / r["trial_id"] / "best_config.yaml"
        write_best_config(space, config_cls, params[r["trial_id"]], extra, path,
                          f"Pareto point: trial {r['trial_id']}: {metric} = {r[metric]:.4f}, "
                          + ", ".join(f"{o} = {r[o]:.4g}" for o in objectives))
        configs[r["trial_id"]] = str(path)
    chosen = pick(front, metric, mode, objectives[0], within)
    # best_config.yaml (written by results.write_summary for the same trial) gets the pick's reason on top.
    write_best_config(space, config_cls, params[chosen["trial_id"]], extra, out_dir / "best_config.yaml",
                      f"Pareto pick: the lowest {objectives[0]} within {within:g} of the best {metric}: trial "
                      f"{chosen['trial_id']} ({metric} = {chosen[metric]:.4f}, {objectives[0]} = "
                      f"{chosen[objectives[0]]:.4g}); its model is the summary's best_*.pth")
    _plot(rows, metric, objectives[0], chosen, out_dir / "plots" / "pareto.png")
    return {"objectives": objectives, "front": front, "configs": configs, "pick": chosen, "within": within,
            "table": str(out_dir / "pareto.csv")}


def _plot(rows: list[dict], metric: str, objective: str, chosen: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 5))
    off = [r for r in rows if not r["on_front"]]
    on = sorted((r for r in rows if r["on_front"]), key=lambda r: r[objective])
    ax.scatter([r[objective] for r in off], [r[metric] for r in off], color="grey", label="dominated")
    ax.plot([r[objective] for r in on], [r[metric] for r in on], "o-", color="tab:blue", label="Pareto front")
    ax.scatter([chosen[objective]], [chosen[metric]], s=160, facecolors="none", edgecolors="red", label="pick")
    for r in rows:
        ax.annotate(r["trial_id"], (r[objective], r[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(objective)
    ax.set_ylabel(f"best {metric}")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
