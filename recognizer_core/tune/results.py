"""What a search leaves behind: results table (Parquet + CSV), best config as a training YAML, best checkpoint.

Works on `TrialRecord`s (plain data), built from a Ray `ResultGrid` by `records_from_grid`, so the reporting
logic is testable without Ray and can be re-run on a finished experiment.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml
from pydantic import BaseModel

from recognizer_core.tune.search_space import SearchSpace, set_dotted
from recognizer_core.storage import copy_tree, exists, is_remote, join_uri

CHECKPOINT_KEY = "checkpoint_path"  # added by ray.tune.integration.ray_train.TuneReportCallback
FINAL_REPORT_KEY = "tune/final_report"  # marks the repeat of a continued Train run's last metrics (tuner.py)


@dataclass
class TrialRecord:
    """One trial: its sampled params, every report (metrics dicts in order) and its error, if any."""

    trial_id: str
    params: dict[str, Any]
    reports: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    path: str = ""


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def best_report(rec: TrialRecord, metric: str, mode: str, *,
                checkpoint_exists: Callable[[str], bool] | None = None) -> dict | None:
    """The report with the best finite `metric`; on ties the latest (the most trained, and the one Ray Train
    keeps). With `checkpoint_exists`: only among reports whose checkpoint is still there."""
    best = None
    for r in rec.reports:
        if not _finite(r.get(metric)):
            continue
        if checkpoint_exists is not None and not (r.get(CHECKPOINT_KEY) and checkpoint_exists(r[CHECKPOINT_KEY])):
            continue
        if best is None or (r[metric] >= best[metric] if mode == "max" else r[metric] <= best[metric]):
            best = r
    return best


def records_from_grid(grid) -> list[TrialRecord]:
    """Ray ResultGrid -> TrialRecords (errored trials included, with the end of their error)."""
    records = []
    for result in grid:
        df = result.metrics_dataframe
        reports = [] if df is None else [{k: v for k, v in row.items() if not _is_missing(v)}
                                          for row in df.to_dict("records")]
        if not reports and result.metrics:
            reports = [dict(result.metrics)]
        # A continued Train run repeats its last report at the end (tuner.TrialDriver): keep one copy.
        if (len(reports) >= 2 and reports[-1].get(FINAL_REPORT_KEY)
                and reports[-1].get(CHECKPOINT_KEY) == reports[-2].get(CHECKPOINT_KEY)):
            reports.pop()
        reports = [{k: v for k, v in r.items() if k != FINAL_REPORT_KEY} for r in reports]
        error = None
        if result.error is not None:
            # The end of the (remote) traceback: the exception that failed the trial, with its message.
            lines = [ln.strip() for ln in str(result.error).strip().splitlines() if ln.strip()]
            error = " | ".join(lines[-3:])[-600:] or type(result.error).__name__
        trial_id = (result.metrics or {}).get("trial_id") or Path(str(result.path)).name.removeprefix("trial_")
        records.append(TrialRecord(trial_id=str(trial_id), params=dict(result.config or {}), reports=reports,
                                   error=error, path=str(result.path)))
    return records


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def results_table(records: list[TrialRecord], space: SearchSpace, metric: str, mode: str,
                  time_attr: str = "epoch", max_t: int | None = None) -> pd.DataFrame:
    """One row per trial, best first: status, best/last metric, progress, checkpoint, error, params."""
    rows = []
    for rec in records:
        best = best_report(rec, metric, mode)
        last = rec.reports[-1] if rec.reports else {}
        ckpt = best_report(rec, metric, mode, checkpoint_exists=exists)
        status = "error" if rec.error else ("ok" if best is not None else "no_metric")
        last_t = last.get(time_attr)
        row = {
            "trial_id": rec.trial_id, "status": status,
            f"best {metric}": best[metric] if best else float("nan"),
            f"last {metric}": last.get(metric, float("nan")) if _finite(last.get(metric)) else float("nan"),
            f"{time_attr} at best": best.get(time_attr) if best else None,
            f"last {time_attr}": last_t,
            "reports": len(rec.reports),
            "stopped_early": bool(status == "ok" and max_t is not None and _finite(last_t) and last_t < max_t),
            "checkpoint": ckpt.get(CHECKPOINT_KEY) if ckpt else None,
            "error": rec.error,
        }
        for k, v in (best or {}).items():
            if k != metric and _finite(v) and (k.startswith(("val/", "train/", "test/"))):
                row[f"at best: {k}"] = v
        for name in space.params:
            row[f"param: {name}"] = rec.params.get(name)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = df.sort_values(f"best {metric}", ascending=(mode == "min"), na_position="last", kind="stable")
    return df.reset_index(drop=True)


def write_table(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = df.copy()
    for col in table.columns:  # a column mixing types (e.g. a choice of [null, 0.5, "x"]) is stored as text
        types = {type(v) for v in table[col] if not _is_missing(v)}
        if len(types) > 1 and not types <= {int, float}:
            table[col] = table[col].map(lambda v: None if _is_missing(v) else str(v))
    paths = [out_dir / "results.parquet", out_dir / "results.csv"]
    table.to_parquet(paths[0], index=False)
    table.to_csv(paths[1], index=False)
    return paths


def write_best_config(space: SearchSpace, config_cls: type[BaseModel], params: dict[str, Any],
                      extra: dict[str, Any], path: Path, header: str) -> BaseModel:
    """The best trial's full config as a self-contained training YAML (base preset + overrides + params)."""
    cfg = space.build_config(config_cls, params, extra)
    data = json.loads(cfg.model_dump_json())
    if "run" in data and isinstance(data["run"], dict) and "name" in data["run"]:
        set_dotted(data, "run.name", f"{data['run']['name']}_tuned")
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(comment + yaml.safe_dump(data, sort_keys=False))
    return cfg


def fetch_checkpoint(checkpoint_uri: str, out_dir: Path) -> Path:
    """Copy a (possibly remote) checkpoint folder to `out_dir`, replacing what was there."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if is_remote(checkpoint_uri):
        copy_tree(checkpoint_uri, str(out_dir.resolve()))
    else:
        shutil.copytree(checkpoint_uri, out_dir)
    return out_dir


ExportFn = Callable[[BaseModel, Path, Path], list[Path]]


def write_summary(records: list[TrialRecord], space: SearchSpace, config_cls: type[BaseModel], *,
                  metric: str, mode: str, extra: dict[str, Any], out_dir: Path, experiment_uri: str,
                  time_attr: str = "epoch", max_t: int | None = None, export_best: ExportFn | None = None,
                  plots: bool = True) -> dict:
    """Write everything into `out_dir`; returns the summary (also saved as summary.json)."""
    from recognizer_core.tune.plots import write_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    df = results_table(records, space, metric, mode, time_attr, max_t)
    files = [str(p) for p in write_table(df, out_dir)] if not df.empty else []
    counts = df["status"].value_counts().to_dict() if not df.empty else {}
    summary: dict[str, Any] = {"experiment": experiment_uri, "metric": metric, "mode": mode,
                               "trials": len(records), "status_counts": counts, "files": files,
                               "errors": {r.trial_id: r.error for r in records if r.error}, "notes": []}
    ranked = [(best_report(r, metric, mode), r) for r in records if not r.error]
    ranked = [(b, r) for b, r in ranked if b is not None]
    if ranked:
        pick = max if mode == "max" else min
        best, rec = pick(ranked, key=lambda br: br[0][metric])
        summary.update(best_trial=rec.trial_id, best_value=best[metric], best_params=rec.params,
                       best_at={time_attr: best.get(time_attr)})
        header = (f"Best of Ray Tune experiment {experiment_uri}\n"
                  f"trial {rec.trial_id}: {metric} = {best[metric]:.4f} ({mode}) at {time_attr} "
                  f"{best.get(time_attr)}\nsearch space: {space.source}; tuned params: "
                  + json.dumps(rec.params))
        cfg = write_best_config(space, config_cls, rec.params, extra, out_dir / "best_config.yaml", header)
        files.append(str(out_dir / "best_config.yaml"))
        ckpt = best_report(rec, metric, mode, checkpoint_exists=exists)
        if ckpt is None:
            summary["notes"].append(f"trial {rec.trial_id} has no checkpoint left; no best checkpoint copied")
        else:
            if ckpt[metric] != best[metric]:
                summary["notes"].append(f"best checkpoint is from {time_attr} {ckpt.get(time_attr)} "
                                        f"({metric}={ckpt[metric]:.4f}); {time_attr} {best.get(time_attr)} "
                                        "was not checkpointed")
            local = fetch_checkpoint(ckpt[CHECKPOINT_KEY], out_dir / "best_checkpoint")
            summary["best_checkpoint"] = {"source": ckpt[CHECKPOINT_KEY], "copy": str(local),
                                          time_attr: ckpt.get(time_attr), metric: ckpt[metric]}
            files.append(str(local))
            if export_best is not None:
                exported = [str(p) for p in export_best(cfg, local, out_dir)]
                summary["best_checkpoint"]["exported"] = exported
                files += exported
    else:
        summary["notes"].append(f"no trial reported a finite {metric}: nothing to pick as best")
    if plots:
        made, skipped = write_plots(records, space, metric, mode, out_dir / "plots", time_attr=time_attr)
        files += [str(p) for p in made]
        summary["plots_skipped"] = skipped
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def publish_summary(local_dir: Path, experiment_uri: str) -> str:
    """Where the summary ends up: inside the experiment (uploaded when the storage is remote)."""
    target = join_uri(experiment_uri, "summary")
    if is_remote(experiment_uri):
        copy_tree(str(local_dir.resolve()), target)
        return target
    if Path(target).resolve() != local_dir.resolve():
        if Path(target).exists():
            shutil.rmtree(target)
        shutil.copytree(local_dir, target)
    return target


def scratch_dir(experiment_uri: str) -> Path:
    """Local folder to build the summary in: the experiment's own folder when local, else a temp folder."""
    if is_remote(experiment_uri):
        return Path(tempfile.mkdtemp(prefix="recognizer_tune_summary_"))
    return Path(join_uri(experiment_uri, "summary"))
