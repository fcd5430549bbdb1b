"""DINO pose runs on object storage, against a real S3-compatible server (moto) on 127.0.0.1: the guide's files are
written to the s3:// run folder during training, and `run.resume_from=s3://.../latest_checkpoint.pth` (what the docs
recommend) is checked on the driver and loaded on the worker."""
from __future__ import annotations

import io

import pytest
import torch
from conftest import shared_path
from dino_tiny import make_tiny_dino, tiny_job_overrides

from recognizer_core import storage
from recognizer_core.config import load_config
from recognizer_core.train.context import LocalContext
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
from recognizer_core.train.dino_pose.loop import BEST_FILE, LATEST_FILE, run_dino_pose_training
from recognizer_core.train.state import STATE_FILE


@pytest.fixture
def runs(s3):
    """The conftest's S3 server with an empty bucket "runs"."""
    s3.create_bucket(Bucket="runs")
    return "s3://runs"


def _state(uri: str) -> dict:
    return torch.load(io.BytesIO(storage.read_bytes(uri)), weights_only=True)


def test_guide_files_on_s3_and_resume_from_them(runs, tmp_path):
    from recognizer_core.train.dino_pose.job import check_resume_from

    coco = shared_path("data", "coco")
    backbone = make_tiny_dino(tmp_path / "bb", "dinov2")
    cfg = load_config(DinoPoseJobConfig, None, tiny_job_overrides(backbone, coco, tmp_path / "runs", epochs=1))
    run_uri = f"{runs}/checkpoints_human_pose/human_pose"
    run_dino_pose_training(cfg, LocalContext(tmp_path / "a"), run_uri)
    latest_uri = storage.join_uri(run_uri, LATEST_FILE)
    assert _state(latest_uri)["epoch"] == 1  # written into the s3:// run folder by the loop itself
    assert _state(storage.join_uri(run_uri, BEST_FILE))["epoch"] == 1

    # the driver: a file or a checkpoint folder that exists passes; a missing one is one clear error. The folder's
    # state is one written before states named their run, with a best/AP this run's first epoch will not beat:
    # the resumed run must still write its own best_model.pth (best/AP restarts for a run.resume_from state)
    old = _state(latest_uri)
    old["extra"].pop("run_uri", None)
    old["extra"]["best_ap"] = 2.0
    buf = io.BytesIO()
    torch.save(old, buf)
    storage.write_bytes(f"{runs}/ckpt/checkpoint_000000/{STATE_FILE}", buf.getvalue())
    check_resume_from(latest_uri)
    check_resume_from(f"{runs}/ckpt/checkpoint_000000")
    with pytest.raises(FileNotFoundError, match=r"run.resume_from=s3://runs/nothing/latest_checkpoint.pth"):
        check_resume_from(f"{runs}/nothing/latest_checkpoint.pth")

    # the worker: starts from the remote state (the state loader itself reads local paths only)
    steps = _state(latest_uri)["extra"]["global_step"]
    for i, source in enumerate((latest_uri, f"{runs}/ckpt/checkpoint_000000")):
        resumed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 2}),
                                         "run": cfg.run.model_copy(update={"resume_from": source})})
        ctx = LocalContext(tmp_path / f"ckpt_{i}")
        run_dino_pose_training(resumed, ctx, str(tmp_path / f"run_{i}"))
        assert [r["epoch"] for r in ctx.reports] == [2]  # epoch 1 came from s3
        assert torch.load(tmp_path / f"run_{i}" / LATEST_FILE, weights_only=True)["extra"]["global_step"] == 2 * steps
        assert torch.load(tmp_path / f"run_{i}" / BEST_FILE, weights_only=True)["epoch"] == 2
