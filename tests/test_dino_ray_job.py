"""`rayjobs/train_dino_pose.py` end to end on a local Ray (2 CPUs): 2 DDP workers on gloo train the tiny model on
the shared COCO sample, validate with COCO AP, export the guide's files, and a second run resumes."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import REPO, shared_path
from dino_tiny import make_tiny_dino, tiny_job_overrides

sys.path.insert(0, str(REPO / "rayjobs"))
import train_dino_pose  # noqa: E402


@pytest.mark.ray
def test_ray_train_job_trains_evaluates_and_resumes(ray_local, tmp_path, capsys):
    coco = shared_path("data", "coco")
    backbone = make_tiny_dino(tmp_path / "bb", "dinov2")
    overrides = [o for o in tiny_job_overrides(backbone, coco, tmp_path / "runs", epochs=1)
                 if not o.startswith("scaling.num_workers")] + ["scaling.num_workers=2"]
    args = [a for o in overrides for a in ("--set", o)]

    assert train_dino_pose.main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run_dir = tmp_path / "runs" / "tiny"
    assert first["epoch"] == 1 and 0.0 <= first["val/AP"] <= 1.0 and first["val/loss"] > 0
    best = torch.load(run_dir / "best_model.pth", weights_only=True)
    assert best["epoch"] == 1 and not any(k.startswith("backbone.") for k in best["model_state_dict"])
    latest = torch.load(run_dir / "latest_checkpoint.pth", weights_only=True)
    assert latest["epoch"] == 1 and latest["optimizer"] is not None  # completed epochs, as STGCN++ counts
    assert (run_dir / "logs" / "vis" / "val_epoch001.png").is_file()
    assert (run_dir / "config.yaml").is_file()

    # Same run name, more epochs: continues from the latest checkpoint instead of starting over.
    assert train_dino_pose.main(args + ["--set", "train.epochs=2"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["epoch"] == 2
    assert (run_dir / "logs" / "vis" / "val_epoch002.png").is_file()
    assert not (run_dir / "logs" / "vis" / "val_epoch003.png").exists()
    latest = torch.load(run_dir / "latest_checkpoint.pth", weights_only=True)
    # 12 crops, 2 workers, batch 4: 6 crops per worker, 2 steps per epoch, counted on from the first run
    assert latest["epoch"] == 2 and latest["extra"]["global_step"] == 4
