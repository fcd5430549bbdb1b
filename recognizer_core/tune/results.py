"""What a search leaves behind: results table (Parquet + CSV), best config as a training YAML, best checkpoint.

Works on `TrialRecord`s (plain data), built from a Ray `ResultGrid` by `records_from_grid`, so the reporting
logic is testable without Ray and can be re-run on a finished experiment.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import pyarrow.fs as pafs
import yaml
from pydantic import BaseModel

from recognizer_core.storage import copy_tree, exists, filesystem, is_remote, join_uri
from recognizer_core.tune.compare import search_compute, preset_comparison
from recognizer_core.tune.plots import write_plots
from recognizer_core.tune.records import (CHECKPOINT_KEY, FINAL_REPORT_KEY, TrialRecord, best_report,
                                          creation_index, error_head, finite, in_creation_order, is_missing,
                                          pick_best_trial, stopped_before_the_end)
from recognizer_core.tune.search_space import SearchSpace, set_dotted

__all__ = ["CHECKPOINT_KEY", "FINAL_REPORT_KEY", "TrialRecord", "best_report", "records_from_grid",
           "results_table", "write_summary", "publish_summary", "clear_dir", "scratch_dir"]


def records_from_grid(grid) -> list[TrialRecord]:
    """Ray ResultGrid -> TrialRecords (errored trials included, with their exception type and message head), in
    the order Tune created the trials: the grid's own order is not that on a resumed experiment."""
    records = []
    for result in grid:
        df = result.metrics_dataframe
        reports = [] if df is None else [{k: v for k, v in row.items() if not is_missing(v)}
                                          for row in df.to_dict("records")]
        if not reports and result.metrics:
            reports = [dict(result.metrics)]
        # A continued Train run repeats its last report at the end (tuner.TrialDriver): keep one copy.
        if (len(reports) >= 2 and reports[-1].get(FINAL_REPORT_KEY)
                and reports[-1].get(CHECKPOINT_KEY) == reports[-2].get(CHECKPOINT_KEY)):
            reports.pop()
        reports = [{k: v for k, v in r.items() if k != FINAL_REPORT_KEY} for r in reports]
        trial_id = (result.metrics or {}).get("trial_id") or Path(str(result.path)).name.removeprefix("trial_")
        records.append(TrialRecord(trial_id=str(trial_id), params=dict(result.config or {}), reports=reports,
                                   error=error_head(result.error), path=str(result.path),
                                   created=creation_index((result.metrics or {}).get("experiment_tag"))))
    return in_creation_order(records, lambda r: r.created)


_is_missing = is_missing
_finite = finite


def results_table(records: list[TrialRecord], space: SearchSpace, metric: str, mode: str,
                  time_attr: str = "epoch", max_t: int | Callable[[TrialRecord], int | None] | None = None
                  ) -> pd.DataFrame:
    """One row per trial, best first: status, best/last metric, progress, checkpoint, error, params."""
    rows = []
    for rec in records:
        best = best_report(rec, metric, mode)
        last = rec.reports[-1] if rec.reports else {}
        # The last MEASURED value: a report without the metric (no validation that epoch) is skipped, never 0.
        measured = [r for r in rec.reports if _finite(r.get(metric))]
        ckpt = best_report(rec, metric, mode, checkpoint_exists=exists)
        status = "error" if rec.error else ("ok" if best is not None else "no_metric")
        last_t = last.get(time_attr)
        own_max = max_t(rec) if callable(max_t) else max_t  # a space may tune the epochs: each trial's own
        row = {
            "trial_id": rec.trial_id, "status": status,
            f"best {metric}": best[metric] if best else float("nan"),
            f"last {metric}": measured[-1][metric] if measured else float("nan"),
            f"{time_attr} at best": best.get(time_attr) if best else None,
            f"last {time_attr}": last_t,
            "validations": len(measured),
            "reports": len(rec.reports),
            "stopped_early": status == "ok" and stopped_before_the_end(last_t, own_max),
            "checkpoint": ckpt.get(CHECKPOINT_KEY) if ckpt else None,
            "error": rec.error,
        }
        for k, v in (best or {}).items():
            if k != metric and _finite(v) and (k.startswith(("val/", "train/", "test/", "cv/", "model/"))):
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


ExportFn = Callable[..., list[Path]]  # (cfg, checkpoint_dir, out_dir, *, trial_path) -> files


def write_summary(records: list[TrialRecord], space: SearchSpace, config_cls: type[BaseModel], *,
                  metric: str, mode: str, extra: dict[str, Any], out_dir: Path, experiment_uri: str,
                  time_attr: str = "epoch", max_t: int | Callable[[TrialRecord], int | None] | None = None,
                  export_best: ExportFn | None = None,
                  plots: bool = True, best_trial: str | None = None) -> dict:
    """Write everything into `out_dir`; returns the summary (also saved as summary.json).

    `time_attr`/`max_t` are in epochs (the table's unit, whatever ASHA measured rungs in). `best_trial`: the
    trial to export instead of the best by `metric` (a multi-objective search's Pareto pick)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = in_creation_order(records, lambda r: r.created)
    df = results_table(records, space, metric, mode, time_attr, max_t)
    files = [str(p) for p in write_table(df, out_dir)] if not df.empty else []
    counts = df["status"].value_counts().to_dict() if not df.empty else {}
    summary: dict[str, Any] = {"experiment": experiment_uri, "metric": metric, "mode": mode,
                               "trials": len(records), "status_counts": counts, "files": files,
                               "errors": {r.trial_id: r.error for r in records if r.error}, "notes": []}
    # What the search cost, and the preset (the space's first start_with point) at that cost.
    summary["compute"] = search_compute(records, space, config_cls, extra)
    ranked = {r.trial_id: (best_report(r, metric, mode), r) for r in records if not r.error}
    ranked = {t: (b, r) for t, (b, r) in ranked.items() if b is not None}
    if ranked:
        # `records` are in the order Tune created the trials: on equal values the first wins, the same rule (one
        # function) as the progress line's "best".
        chosen = best_trial or pick_best_trial([(t, b[metric]) for t, (b, _) in ranked.items()], mode)[0]
        best, rec = ranked[chosen]
        summary.update(best_trial=rec.trial_id, best_value=best[metric], best_params=rec.params,
                       best_at={time_attr: best.get(time_attr)})
        summary["preset"] = preset_comparison(records, space, metric, mode, rec, summary["compute"])
        header = (f"Best of Ray Tune experiment {experiment_uri}\n"
                  f"trial {rec.trial_id}: {metric} = {best[metric]:.4f} ({mode}) at {time_attr} "
                  f"{best.get(time_attr)}\nsearch space: {space.source}; tuned params: "
                  + json.dumps(rec.params))
        cfg = write_best_config(space, config_cls, rec.params, extra, out_dir / "best_config.yaml", header)
        files.append(str(out_dir / "best_config.yaml"))
        # Ray Train keeps the latest checkpoint among equal scores; it holds the training state (to resume or
        # fine-tune). The best MODEL is the trial's own export of its best epoch (one file, see export_best).
        ckpt = best_report(rec, metric, mode, checkpoint_exists=exists)
        kept = [r for r in rec.reports if r.get(CHECKPOINT_KEY) and exists(r[CHECKPOINT_KEY])]
        state = max(kept, key=lambda r: (r.get(metric, float("-inf")) if mode == "max"
                                         else -r.get(metric, float("inf")), r.get(time_attr, 0))) if kept else ckpt
        if state is None and any(r.get("cv/folds") for r in rec.reports):
            # (tune_fight.final_test then writes that retrain's tested model here, as best_<metric>_epoch_<N>.pth)
            summary["notes"].append("cross-validated trials keep their fold runs' checkpoints in their trial "
                                    "folders (no best_checkpoint/); the model is the winner retrained on train+val")
        elif state is None:
            summary["notes"].append(f"trial {rec.trial_id} has no checkpoint left; no best checkpoint copied")
        else:
            local = fetch_checkpoint(state[CHECKPOINT_KEY], out_dir / "best_checkpoint")
            summary["best_checkpoint"] = {"source": state[CHECKPOINT_KEY], "copy": str(local),
                                          time_attr: state.get(time_attr), metric: state.get(metric)}
            files.append(str(local))
            if export_best is not None:
                exported = [str(p) for p in export_best(cfg, local, out_dir, trial_path=rec.path)]
                summary["best_checkpoint"]["exported"] = exported
                files += exported
            if state.get(time_attr) != best.get(time_attr):
                summary["notes"].append(
                    f"best_checkpoint/ is the training state Ray Train kept ({time_attr} {state.get(time_attr)}, "
                    f"the latest of equal scores); the best model ({time_attr} {best.get(time_attr)}, the first "
                    f"to reach {best[metric]:.4f}) is the exported .pth")
    else:
        summary["notes"].append(f"no trial reported a finite {metric}: nothing to pick as best")
    if plots:
        made, skipped = write_plots(records, space, metric, mode, out_dir / "plots", time_attr=time_attr)
        files += [str(p) for p in made]
        summary["plots_skipped"] = skipped
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def publish_summary(local_dir: Path, experiment_uri: str, *, keep: Iterable[str] = ()) -> str:
    """Where the summary ends up: inside the experiment (uploaded when the storage is remote). What the folder
    held before is deleted first, except the entries named in `keep` (the --folds retrain, final/, which Ray's
    workers write there between two publishes of one job): copy_tree deletes nothing, so a re-published s3://
    summary kept the previous winner's .pth beside the new one (ensemble.py expects one best_*.pth)."""
    target = join_uri(experiment_uri, "summary")
    if not is_remote(experiment_uri) and Path(target).resolve() == local_dir.resolve():
        return target   # built in place (scratch_dir): cli.finish emptied it first
    clear_dir(target, keep=keep)
    copy_tree(str(local_dir.resolve()), target)
    return target


def clear_dir(uri: str, *, keep: Iterable[str] = ()) -> None:
    """Delete what folder `uri` (local or s3:// / gs://) holds, but the entries named in `keep`; the folder may
    be missing."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return
    keep = set(keep)
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.base_name in keep:
            continue
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
        else:
            fs.delete_file(info.path)


def scratch_dir(experiment_uri: str) -> Path:
    """Local folder to build the summary in: the experiment's own folder when local, else a temp folder."""
    if is_remote(experiment_uri):
        return Path(tempfile.mkdtemp(prefix="recognizer_tune_summary_"))
    return Path(join_uri(experiment_uri, "summary"))
