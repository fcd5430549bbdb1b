"""STGCN++ specifics of the tuning jobs: the dataset every trial reads, and the best model in mmaction2 format."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from recognizer_core.train.config import TrainJobConfig
from recognizer_core.storage import is_remote, join_uri

JOB = "stgcn"
METRICS = ("val/acc_top1", "val/mean_class_accuracy", "train/loss")
_SCORE_ATTRIBUTES = ("val/acc_top1", "val/mean_class_accuracy")


def trial_overrides(extra: dict[str, Any], base: TrainJobConfig, experiment_uri: str, metric: str) -> dict:
    """Overrides every trial gets on top of the user's: one dataset prepared once (not per trial), and the
    trial's own best model (the mmaction2 .pth in its run folder) chosen by the metric being tuned."""
    from recognizer_core.train.data import prepare_dataset

    extra = dict(extra)
    # Demo clips or a pkl are converted to Parquet here, once, so concurrent trials never race to write them.
    work = Path(join_uri(experiment_uri, "datasets")) if not is_remote(experiment_uri) else Path(
        "work_dirs/tune_datasets").resolve()
    extra["data.path"] = str(prepare_dataset(base.data, work))
    for key in ("data.train_pkl", "data.val_pkl", "data.test_pkl"):  # now inside data.path
        extra[key] = None
    if metric in _SCORE_ATTRIBUTES:
        extra["checkpoint.score_attribute"] = metric
    return extra


def export_best(cfg: TrainJobConfig, checkpoint_dir: Path, out_dir: Path, *, trial_path: str = "") -> list[Path]:
    """The best trial's best model as ONE file: the `best_<metric>_epoch_<N>.pth` its own training run exported
    (copied from `<trial>/train/`), so the summary and the trial's run folder hold the same epoch. When the run
    folder is not reachable (remote storage), the same model is rebuilt from the checkpoint, which carries the
    loop's best weights (`extra.best_state_dict`, `extra.best.epoch`)."""
    import shutil

    metric = cfg.checkpoint.score_attribute.split("/")[-1]
    for old in Path(out_dir).glob(f"best_{metric}_epoch_*.pth"):
        old.unlink()
    run_dir = Path(trial_path) / "train" if trial_path and not is_remote(trial_path) else None
    own = sorted(run_dir.glob(f"best_{metric}_epoch_*.pth")) if run_dir is not None and run_dir.is_dir() else []
    if len(own) == 1:
        return [Path(shutil.copy2(own[0], Path(out_dir) / own[0].name))]
    return [_export_from_checkpoint(cfg, Path(checkpoint_dir), Path(out_dir), metric)]


def _export_from_checkpoint(cfg: TrainJobConfig, checkpoint_dir: Path, out_dir: Path, metric: str) -> Path:
    # The one place that writes an mmaction2 file here: switch to the shared exporter when it lands.
    import torch

    from recognizer_core.models.checkpoint import export_mmaction_checkpoint, load_into
    from recognizer_core.models.recognizer import build_recognizer
    from recognizer_core.train.state import STATE_FILE

    state = torch.load(checkpoint_dir / STATE_FILE, map_location="cpu", weights_only=True)
    extra = state.get("extra") or {}
    weights, epoch = state["model"], int(state["epoch"])
    if extra.get("best_state_dict") and (extra.get("best") or {}).get("epoch"):
        weights, epoch = extra["best_state_dict"], int(extra["best"]["epoch"])
    model = build_recognizer(cfg.model)
    load_into(model, weights, str(checkpoint_dir / STATE_FILE))
    names = extra.get("label_names") or cfg.data.label_names
    return export_mmaction_checkpoint(model, out_dir / f"best_{metric}_epoch_{epoch}.pth", cfg=cfg.model,
                                      epoch=epoch, classes=list(names) if names else None,
                                      extra_meta={"source": "recognizer tune: best trial"})
