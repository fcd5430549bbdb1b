"""Every sink (TensorBoard, W&B) gets every epoch's metrics on one monotonic step (the global iteration), with
`epoch` as a value; validation metrics only at the epochs where validation ran (STGCN++ and DINO pose).

Real short trainings in one process (LocalContext, no Ray) with W&B in offline mode; the run's W&B history and
TensorBoard events are read back from disk. Per-iteration logging (log_interval=1) runs the step ahead of the
epoch count, which is what made W&B drop every epoch metric logged at the epoch number."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, shared_path
from dino_tiny import make_tiny_dino, tiny_job_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb_history import wandb_history

from recognizer_core.config import load_config
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import write_dataset
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.context import LocalContext
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
from recognizer_core.train.dino_pose.loop import run_dino_pose_training
from recognizer_core.train.stgcn.loop import train_loop

TINY = ["model.num_stages=2", "model.base_channels=8", "model.inflate_stages=[2]", "model.down_stages=[2]",
        "pipeline.clip_len=16", "train.batch_size=4", "data.loader_workers=0", "schedule.warmup_epochs=0",
        "train.test_after_train=false"]


pytestmark = pytest.mark.usefixtures("quiet_wandb")


def _tensorboard(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir / "tensorboard"))
    acc.Reload()
    return acc


def _check_sinks(log_dir: Path, reports: list[dict], val_key: str) -> None:
    validated = [r["epoch"] for r in reports if val_key in r]
    rows = wandb_history(log_dir)
    steps = [r["_step"] for r in rows]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # one monotonic step axis
    # every epoch's metrics are in the history, validation metrics exactly at the validated epochs
    assert sorted({r["epoch"] for r in rows if "train/loss" in r}) == [r["epoch"] for r in reports]
    assert sorted(r["epoch"] for r in rows if val_key in r) == validated
    by_epoch = {r["epoch"]: r for r in rows if val_key in r}
    for rep in reports:
        if val_key in rep:
            assert by_epoch[rep["epoch"]][val_key] == pytest.approx(rep[val_key])
    tb = _tensorboard(log_dir)
    tb_val = tb.Scalars(val_key)
    assert [e.value for e in tb_val] == pytest.approx([r[val_key] for r in reports if val_key in r])
    epoch_at = {e.step: e.value for e in tb.Scalars("epoch")}
    assert [epoch_at[e.step] for e in tb_val] == validated  # same step as the epoch it belongs to
    assert len(tb.Scalars("train/loss_iter")) > len(reports)  # the iterations really ran ahead of the epochs


def test_stgcn_logs_every_epoch_to_wandb_and_tensorboard(tmp_path):
    clips = make_demo_clips("fight", 24, seed=1)
    ds = str(write_dataset(clips, tmp_path / "ds", label_names=("NonFight", "Fight"), overwrite=True))
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml",
                      TINY + ["train.epochs=3", "train.val_interval=2", "train.log_interval=1",
                              "wandb.enabled=true", "wandb.mode=offline"])
    ctx = LocalContext(tmp_path / "ckpt")
    summary = train_loop(cfg, ds, str(tmp_path / "run"), ctx)
    assert ["val/acc_top1" in r for r in ctx.reports] == [False, True, True]  # epoch 2 and the last
    assert all("val/mean_class_accuracy" not in h for h in summary["history"][:1])
    _check_sinks(tmp_path / "run" / "logs", ctx.reports, "val/acc_top1")
    last = wandb_history(tmp_path / "run" / "logs")[-1]  # end-of-run images at the last step, not dropped
    assert last["curves/_type"] == last["confusion_matrix/val/_type"] == "image-file" and last["epoch"] == 3


def test_dino_pose_reports_validation_only_where_measured(tmp_path):
    backbone = make_tiny_dino(tmp_path / "bb", "dinov3")
    over = tiny_job_overrides(backbone, shared_path("data", "coco"), tmp_path / "runs", epochs=2)
    over = [o for o in over if not o.startswith("wandb.")] + ["wandb.enabled=true", "wandb.mode=offline",
                                                              "train.val_interval=2"]
    cfg = load_config(DinoPoseJobConfig, None, over)
    ctx = LocalContext(tmp_path / "ckpt")
    run_dino_pose_training(cfg, ctx, str(tmp_path / "run"))
    assert [sorted(k for k in r if k.startswith("val/")) for r in ctx.reports][0] == []  # no placeholder
    assert "val/AP" in ctx.reports[1] and [p.name for p in (tmp_path / "ckpt").iterdir()] == ["epoch_0002"]
    _check_sinks(tmp_path / "run" / "logs", ctx.reports, "val/AP")
