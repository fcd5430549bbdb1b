"""STGCN++ specifics of the tuning jobs: the dataset every trial reads, and the best model in mmaction2 format."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from recognizer_core.train.config import TrainJobConfig
from recognizer_core.storage import is_remote, join_uri, output_uri

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
        output_uri("work_dirs/tune_datasets"))
    extra["data.path"] = str(prepare_dataset(base.data, work))
    for key in ("data.train_pkl", "data.val_pkl", "data.test_pkl"):  # now inside data.path
        extra[key] = None
    if metric in _SCORE_ATTRIBUTES:
        extra["checkpoint.score_attribute"] = metric
    return extra


def export_best(cfg: TrainJobConfig, checkpoint_dir: Path, out_dir: Path) -> list[Path]:
    """The best Ray Train checkpoint (training_state.pt) -> `best_<metric>_epoch_<N>.pth` in mmaction2 format."""
    import torch

    from recognizer_core.models.checkpoint import export_mmaction_checkpoint, load_into
    from recognizer_core.models.recognizer import build_recognizer
    from recognizer_core.train.state import STATE_FILE

    state = torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)
    model = build_recognizer(cfg.model)
    load_into(model, state["model"], str(Path(checkpoint_dir) / STATE_FILE))
    epoch = int(state["epoch"])
    extra = state.get("extra") or {}
    names = extra.get("label_names") or cfg.data.label_names
    metric = cfg.checkpoint.score_attribute.split("/")[-1]
    for old in out_dir.glob(f"best_{metric}_epoch_*.pth"):
        old.unlink()
    path = export_mmaction_checkpoint(model, out_dir / f"best_{metric}_epoch_{epoch}.pth", cfg=cfg.model,
                                      epoch=epoch, classes=list(names) if names else None,
                                      extra_meta={"source": "recognizer tune: best trial"})
    return [path]
