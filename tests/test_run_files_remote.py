"""A run's own files on object storage (train/run_files.py), against a real S3-compatible server (moto) on
127.0.0.1: each sync uploads only what changed, the local staging folder is removed at the end, the run folder
keeps one best model, and a checkpoint from before global_step / stopped_early were saved resumes where it was.

Real short trainings in one process (LocalContext, no Ray)."""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest
import torch
from conftest import REPO, shared_path
from dino_tiny import make_tiny_dino, tiny_job_overrides

import recognizer_core.train.stgcn.loop as stgcn_loop
from recognizer_core.config import load_config
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import write_dataset
from recognizer_core.train.context import LocalContext
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
from recognizer_core.train.dino_pose.loop import run_dino_pose_training
from recognizer_core.train.run_files import RunFiles
from recognizer_core.train.state import STATE_FILE
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.stgcn.run_state import RunState

TINY = ["model.num_stages=2", "model.base_channels=8", "model.inflate_stages=[2]", "model.down_stages=[2]",
        "pipeline.clip_len=16", "train.batch_size=4", "data.loader_workers=0", "train.test_after_train=false",
        "train.log_interval=1", "optim.auto_scale_lr=false", "schedule.warmup_epochs=0", "train.val_interval=1",
        "wandb.enabled=false"]


@pytest.fixture
def runs(s3):
    """The conftest's S3 server with a new empty bucket; (its URI, a boto3 client on it). Its own name: moto keeps
    buckets in the process between server starts, so another test's "runs" may hold files."""
    bucket = f"runs-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return f"s3://{bucket}", Bucket(s3, bucket)


class Bucket:
    """One bucket's objects through a boto3 client."""

    def __init__(self, client, name: str):
        self.client, self.name = client, name

    def objects(self, prefix: str) -> dict[str, bytes]:
        """The objects under `prefix` (folder markers, which pyarrow's folder copy also writes, left out)."""
        listed = self.client.list_objects_v2(Bucket=self.name, Prefix=prefix).get("Contents", [])
        return {o["Key"][len(prefix):]: self.client.get_object(Bucket=self.name, Key=o["Key"])["Body"].read()
                for o in listed if not o["Key"].endswith("/")}

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)


@pytest.fixture
def staging(tmp_path, monkeypatch) -> Path:
    """tempfile's folder for this test, to see which staging folders (recognizer_run_*) a run leaves."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_sync_uploads_only_changed_files_and_close_removes_the_staging_folder(runs, staging):
    uri, s3 = runs
    files = RunFiles(f"{uri}/run")
    assert files.remote and files.local.parent == staging
    files.path("logs", "events").write_bytes(b"a")
    files.path("summary.json").write_text("1")
    files.path("logs", "vis", "val_epoch001.png").write_bytes(b"png1")
    files.sync()
    assert s3.objects("run/") == {"logs/events": b"a", "summary.json": b"1", "logs/vis/val_epoch001.png": b"png1"}

    # an unchanged file is not sent again: removed from the bucket, it stays removed (the whole folder was copied
    # at every sync, so the bytes per run grew with the square of the epochs)
    s3.delete("run/logs/vis/val_epoch001.png")
    with open(files.local / "logs" / "events", "ab") as f:  # appended, as TensorBoard does
        f.write(b"b")
    (files.local / "summary.json").write_text("2")  # rewritten in place: same size, maybe the same mtime tick
    files.path("logs", "vis", "val_epoch002.png").write_bytes(b"png2")
    files.sync()
    assert s3.objects("run/") == {"logs/events": b"ab", "summary.json": b"2", "logs/vis/val_epoch002.png": b"png2"}

    s3.delete("run/logs/vis/val_epoch002.png")
    os.utime(files.local / "logs" / "events", ns=(1, 1))  # settled (old mtime): size and mtime decide again
    files.sync()
    files.sync()
    with open(files.local / "logs" / "events", "ab") as f:
        f.write(b"c")
    files.close()
    assert s3.objects("run/") == {"logs/events": b"abc", "summary.json": b"2"}
    assert not files.local.exists() and not list(staging.iterdir())


def _stgcn(tmp_path: Path, *extra: str) -> tuple[TrainJobConfig, str]:
    ds = tmp_path / "ds"
    if not ds.exists():
        write_dataset(make_demo_clips("fight", 16, seed=1), ds, label_names=("NonFight", "Fight"))
    cfg = load_config(TrainJobConfig, REPO / "configs" / "fight_stable.yaml", TINY + [f"data.path={ds}", *extra])
    return cfg, str(ds)


def _scripted_scores(monkeypatch, scores: list[float]) -> None:
    """The validation's acc_top1 of each epoch in turn (the real evaluation runs; its score is replaced), so
    the epochs that make a new best are known."""
    real, left = stgcn_loop.evaluate, list(scores)

    def evaluate(*args, **kwargs):
        report = real(*args, **kwargs)
        return {**report, "acc_top1": left.pop(0)}

    monkeypatch.setattr(stgcn_loop, "evaluate", evaluate)


def test_stgcn_run_on_s3_keeps_one_best_model_and_no_staging_folder(runs, staging, tmp_path, monkeypatch):
    uri, s3 = runs
    cfg, ds = _stgcn(tmp_path, "train.epochs=3")
    _scripted_scores(monkeypatch, [0.5, 0.6, 0.7])  # a new best at every epoch
    summary = stgcn_loop.train_loop(cfg, ds, f"{uri}/fight", LocalContext(tmp_path / "ckpt"))
    assert summary["best"]["file"] == "best_acc_top1_epoch_3.pth"
    stored = s3.objects("fight/")
    assert sorted(k for k in stored if k.startswith("best_")) == ["best_acc_top1_epoch_3.pth"]
    assert "summary.json" in stored and any(k.startswith("logs/tensorboard/") for k in stored)
    assert not [p.name for p in staging.glob("recognizer_run_*")]


def test_dino_run_on_s3_leaves_no_staging_folder(runs, staging, tmp_path):
    uri, s3 = runs
    backbone = make_tiny_dino(tmp_path / "bb", "dinov2")
    cfg = load_config(DinoPoseJobConfig, None,
                      tiny_job_overrides(backbone, shared_path("data", "coco"), tmp_path / "runs", epochs=1))
    run_dino_pose_training(cfg, LocalContext(tmp_path / "ckpt"), f"{uri}/pose")
    assert any(k.startswith("logs/tensorboard/") for k in s3.objects("pose/"))
    assert not [p.name for p in staging.glob("recognizer_run_*")]


def _old_format(ckpt: Path) -> tuple[dict, dict]:
    """A HEAD checkpoint's state, and it as a run before global_step / stopped_early were saved wrote it."""
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    old = {**state, "extra": {k: v for k, v in state["extra"].items() if k not in ("global_step", "stopped_early")}}
    return state, old


def test_an_old_checkpoint_resumes_its_step_and_its_early_stop(tmp_path, monkeypatch):
    cfg, ds = _stgcn(tmp_path, "train.epochs=4", "train.early_stopping.enabled=true",
                     "train.early_stopping.patience=1")
    _scripted_scores(monkeypatch, [0.5, 0.5, 0.5, 0.5])  # no improvement at epoch 2: stopped there
    ctx = LocalContext(tmp_path / "ckpt")
    summary = stgcn_loop.train_loop(cfg, ds, str(tmp_path / "run"), ctx)
    assert summary["stopped_early"] and summary["epochs_run"] == 2
    for epoch_dir, stopped in ((tmp_path / "ckpt" / "epoch_0001", False), (tmp_path / "ckpt" / "epoch_0002", True)):
        state, old = _old_format(epoch_dir)
        num_batches = state["extra"]["global_step"] // state["epoch"]
        assert num_batches >= 2 and state["extra"]["stopped_early"] is stopped
        resumed = RunState.from_checkpoint(old, num_batches=num_batches, early_stopping=cfg.train.early_stopping)
        # the old loop counted epoch * batches too; 0 made TensorBoard's purge_step delete the run's history
        assert resumed.global_step == state["extra"]["global_step"]
        assert resumed.stopped_early is stopped  # False made an early-stopped run train on
        assert RunState.from_checkpoint(state, num_batches=1).global_step == state["extra"]["global_step"]
    off = cfg.train.early_stopping.model_copy(update={"enabled": False})
    assert not RunState.from_checkpoint(old, num_batches=num_batches, early_stopping=off).stopped_early


def test_a_log_appended_by_each_process_keeps_every_line_on_s3(runs, staging):
    """resume_log.jsonl: each resumed process stages in a new folder and the sync uploads the whole file, so the
    run folder held only the last resume ('records each resume', docs/training.md)."""
    from recognizer_core.train.run_files import RunFiles

    uri, bucket = runs
    for resume in (1, 2, 3):   # three processes of one run, one after another
        files = RunFiles(f"{uri}/run")
        files.append_line("resume_log.jsonl", f'{{"resumed_from_epoch": {resume}}}')
        files.close()
    assert bucket.objects("run/")["resume_log.jsonl"].decode().splitlines() == [
        f'{{"resumed_from_epoch": {n}}}' for n in (1, 2, 3)]


def test_a_file_rewritten_within_one_file_time_tick_is_uploaded(runs, staging):
    """summary.json rewritten in place with the same size inside one file-time tick (the old mtime put back, as a
    tick of ~4 ms leaves it): size, mtime and inode are all the same, so only its content tells, and the file was
    looked at less than a second after it was written ('racily clean'): the new content is uploaded."""
    uri, s3 = runs
    files = RunFiles(f"{uri}/run")
    summary = files.path("summary.json")
    summary.write_text("1")
    files.sync()
    st = summary.stat()
    summary.write_text("2")
    os.utime(summary, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert summary.stat().st_ino == st.st_ino
    files.sync()
    assert s3.objects("run/") == {"summary.json": b"2"}


def test_a_file_replaced_by_a_same_size_copy_with_the_same_mtime_is_uploaded(runs, staging):
    """best.pth replaced atomically (a temporary file renamed over it) by one of the same size whose mtime was
    copied too (shutil.copy2 keeps it), long after the last write: another inode, so it is another file."""
    uri, s3 = runs
    files = RunFiles(f"{uri}/run")
    best = files.path("best.pth")
    best.write_text("A")
    os.utime(best, ns=(1, 10**18))   # settled long ago: size, mtime and inode decide
    files.sync()
    files.sync()
    tmp = files.path("best.pth.tmp")
    tmp.write_text("B")
    os.utime(tmp, ns=(1, 10**18))
    os.replace(tmp, best)
    files.sync()
    assert s3.objects("run/") == {"best.pth": b"B"}
