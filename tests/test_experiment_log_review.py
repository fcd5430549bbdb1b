"""What the experiment logs say about the lr and about resumed runs (STGCN++ and DINO pose).

- `lr_iter` is the lr the optimizer step of that iteration used (read before the scheduler moves on, as mmengine
  logs it) and an epoch's `lr` the one its last step used: checked against every real optimizer step, recorded
  with torch's global optimizer step pre-hook.
- A run that fails mid-epoch and is resumed shows each TensorBoard step once (SummaryWriter's purge_step drops
  what the failed attempt logged after its checkpoint) and continues the same W&B run (its id saved in logs/).

Real short trainings in one process (LocalContext, no Ray), W&B offline; logs read back from disk.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, shared_path
from dino_tiny import make_tiny_dino, tiny_job_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim.optimizer import register_optimizer_step_pre_hook

import recognizer_core.train.dino_pose.loop as dino_loop
import recognizer_core.train.stgcn.loop as stgcn_loop
from recognizer_core.config import load_config
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import write_dataset
from recognizer_core.storage import copy_tree
from recognizer_core.train.context import LocalContext
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
from recognizer_core.train.experiment_log import WANDB_ID_FILE, ExperimentLogger, WandbConfig
from recognizer_core.train.stgcn.config import TrainJobConfig

TINY = ["model.num_stages=2", "model.base_channels=8", "model.inflate_stages=[2]", "model.down_stages=[2]",
        "pipeline.clip_len=16", "train.batch_size=4", "data.loader_workers=0", "train.test_after_train=false",
        "train.log_interval=1", "optim.auto_scale_lr=false"]
OFFLINE_WANDB = ["wandb.enabled=true", "wandb.mode=offline"]


pytestmark = pytest.mark.usefixtures("quiet_wandb")


@contextlib.contextmanager
def _lr_of_each_step():
    """The lr every optimizer.step() call of the block runs with (any optimizer class)."""
    used: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    try:
        yield used
    finally:
        handle.remove()


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(log_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _stgcn_dataset(tmp_path: Path) -> str:
    clips = make_demo_clips("fight", 16, seed=1)  # a few train batches of 4 per epoch
    return str(write_dataset(clips, tmp_path / "ds", label_names=("NonFight", "Fight"), overwrite=True))


def _check_lr(log_dir: Path, used: list[float], reports: list[dict]) -> None:
    epochs = len(reports)
    per_epoch = len(used) // epochs
    assert per_epoch * epochs == len(used) and len(set(used)) >= 3  # the schedule really moved within the run
    lr_iter = _scalars(log_dir, "lr_iter")
    assert [s for s, _ in lr_iter] == list(range(1, len(used) + 1))
    assert [v for _, v in lr_iter] == pytest.approx(used, rel=1e-6)  # the warmup's first lr included
    assert [r["lr"] for r in reports] == pytest.approx([used[e * per_epoch - 1] for e in range(1, epochs + 1)])


def test_stgcn_logs_the_lr_each_step_used(tmp_path):
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml",
                      TINY + ["train.epochs=3", "train.val_interval=3", "schedule.warmup_epochs=1",
                              "schedule.milestones=[1]"])  # warmup in epoch 1, the decay from epoch 3 on
    ctx = LocalContext(tmp_path / "ckpt")
    with _lr_of_each_step() as used:
        stgcn_loop.train_loop(cfg, _stgcn_dataset(tmp_path), str(tmp_path / "run"), ctx)
    _check_lr(tmp_path / "run" / "logs", used, ctx.reports)


def _dino_cfg(tmp_path: Path, extra: list[str]) -> DinoPoseJobConfig:
    backbone = make_tiny_dino(tmp_path / "bb", "dinov3")
    over = tiny_job_overrides(backbone, shared_path("data", "coco"), tmp_path / "runs", epochs=2)
    return load_config(DinoPoseJobConfig, None, [o for o in over if not o.startswith("wandb.")] + extra)


def test_dino_pose_logs_the_lr_each_step_used(tmp_path):
    cfg = _dino_cfg(tmp_path, ["wandb.enabled=false", "optim.warmup_epochs=1"])
    ctx = LocalContext(tmp_path / "ckpt")
    with _lr_of_each_step() as used:
        dino_loop.run_dino_pose_training(cfg, ctx, str(tmp_path / "run"))
    _check_lr(tmp_path / "run" / "logs", used, ctx.reports)


def _checkpoint_step(ckpt: Path) -> int:
    return int(torch.load(ckpt / "training_state.pt", weights_only=True)["extra"]["global_step"])


def _check_resumed_logs(log_dir: Path, steps: int) -> None:
    for tag in ("train/loss_iter", "lr_iter"):
        assert [s for s, _ in _scalars(log_dir, tag)] == list(range(1, steps + 1)), tag  # each step once
    runs = sorted((log_dir / "wandb").glob("offline-run-*"))  # offline-run-<time>-<id>[-n]: one per attempt
    assert len(runs) == 2
    ids = {p.name.split("-")[3] for p in runs}
    assert len(ids) == 1, f"the resumed attempt started another W&B run: {[p.name for p in runs]}"
    assert ids == {(log_dir / WANDB_ID_FILE).read_text().strip()}


def test_stgcn_resume_after_a_mid_epoch_failure_logs_each_step_once_in_the_same_wandb_run(tmp_path, monkeypatch):
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml",
                      TINY + OFFLINE_WANDB + ["train.epochs=4", "train.val_interval=2", "schedule.warmup_epochs=0"])
    ds, first = _stgcn_dataset(tmp_path), LocalContext(tmp_path / "ckpt")
    step, in_epoch_3 = stgcn_loop._optimizer_step, []

    def fail_in_epoch_3(tr, c):  # epoch 2 checkpointed; epoch 3's first step runs and is logged, then a failure
        if len(first.reports) == 2:
            in_epoch_3.append(1)
            if len(in_epoch_3) == 2:
                raise RuntimeError("simulated worker loss")
        step(tr, c)

    monkeypatch.setattr(stgcn_loop, "_optimizer_step", fail_in_epoch_3)
    with pytest.raises(RuntimeError, match="simulated"):
        stgcn_loop.train_loop(cfg, ds, str(tmp_path / "run"), first)
    monkeypatch.setattr(stgcn_loop, "_optimizer_step", step)
    summary = stgcn_loop.train_loop(cfg, ds, str(tmp_path / "run"), LocalContext(tmp_path / "ckpt"))
    assert summary["epochs_run"] == 4
    _check_resumed_logs(tmp_path / "run" / "logs", 2 * _checkpoint_step(tmp_path / "ckpt" / "epoch_0002"))


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_dino_pose_resume_after_a_failure_logs_each_step_once_in_the_same_wandb_run(tmp_path, monkeypatch, request,
                                                                                     storage):
    cfg = _dino_cfg(tmp_path, OFFLINE_WANDB + ["train.val_interval=1"])
    run = str(tmp_path / "run")
    if storage == "s3":  # logs/ is a fresh local staging folder in each attempt: the id comes from the bucket
        request.getfixturevalue("s3").create_bucket(Bucket="runs")
        run = "s3://runs/run"
    validate = dino_loop.validate

    def fail_at_epoch_2(*args, **kwargs):  # epoch 1 checkpointed; all of epoch 2's steps logged, then a failure
        if kwargs["epoch"] == 2:
            raise RuntimeError("simulated worker loss")
        return validate(*args, **kwargs)

    monkeypatch.setattr(dino_loop, "validate", fail_at_epoch_2)
    with pytest.raises(RuntimeError, match="simulated"):
        dino_loop.run_dino_pose_training(cfg, LocalContext(tmp_path / "ckpt"), run)
    monkeypatch.setattr(dino_loop, "validate", validate)
    # W&B names an attempt's folder offline-run-<time to the second>-<id>: on object storage (a fresh staging
    # folder each attempt) two attempts in one second are one folder, as no restart on a cluster is that quick
    time.sleep(1.05 - time.time() % 1)
    ctx = LocalContext(tmp_path / "ckpt")
    dino_loop.run_dino_pose_training(cfg, ctx, run)
    assert [r["epoch"] for r in ctx.reports] == [2]
    logs = tmp_path / "run" / "logs"
    if storage == "s3":
        copy_tree(f"{run}/logs", str(logs))
    _check_resumed_logs(logs, 2 * _checkpoint_step(tmp_path / "ckpt" / "epoch_0001"))


def test_resume_reads_the_wandb_id_from_the_run_storage(tmp_path, monkeypatch):
    """On object storage logs/ is a fresh local staging folder: the id comes from the run's own logs/ there."""
    calls: list[dict] = []

    def init(**kwargs):
        calls.append(kwargs)
        return SimpleNamespace(id=kwargs.get("id", "fresh01"), finish=lambda: None)

    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=init))
    stored = tmp_path / "stored_logs"
    stored.mkdir()
    (stored / WANDB_ID_FILE).write_text("saved42\n")
    wb = WandbConfig(enabled=True)
    for resume in (False, True):
        ExperimentLogger(tmp_path / f"staging_{resume}", wandb=wb, resume=resume,
                         saved_log_dir=str(stored)).close()
    assert "id" not in calls[0] and "resume" not in calls[0]  # a fresh start: a new W&B run
    assert (calls[1]["id"], calls[1]["resume"]) == ("saved42", "allow")
    assert (tmp_path / "staging_True" / WANDB_ID_FILE).read_text() == "saved42"  # synced back with the logs
