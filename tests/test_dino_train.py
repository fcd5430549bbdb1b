"""The DINO pose training loop in-process (no Ray): metrics, files, exact resume; the job's config and flags."""
from __future__ import annotations

import math
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, shared_path
from dino_tiny import make_tiny_dino, tiny_job_overrides

import recognizer_core.train.dino_pose.loop as dino_loop
from recognizer_core.config import ConfigError, load_config
from recognizer_core.config_args import config_from_args
from recognizer_core.train.context import LocalContext
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
from recognizer_core.train.dino_pose.loop import BEST_FILE, LATEST_FILE, MODEL_FILE, load_pose_model, \
    run_dino_pose_training, warmup_cosine_factor
from recognizer_core.tune.search_space import load_search_space

sys.path.insert(0, str(REPO / "rayjobs"))
import train_dino_pose  # noqa: E402


def _run(cfg, run_dir: Path, keep: Path) -> list[dict]:
    ctx = LocalContext(keep)  # checkpoints in keep/epoch_NNNN
    run_dino_pose_training(cfg, ctx, str(run_dir))
    return ctx.reports


def test_train_validate_and_resume_exactly(tmp_path):
    coco = shared_path("data", "coco")
    backbone = make_tiny_dino(tmp_path / "bb", "dinov3")
    cfg = load_config(DinoPoseJobConfig, None, tiny_job_overrides(backbone, coco, tmp_path / "runs", epochs=2))
    straight = _run(cfg, tmp_path / "run_a", tmp_path / "a")
    assert [r["epoch"] for r in straight] == [1, 2]
    for r in straight:
        assert {"epoch", "train/loss", "val/loss", "val/AP", "val/AP50", "val/AR", "lr"} <= set(r)
        assert math.isfinite(r["train/loss"]) and math.isfinite(r["val/loss"]) and 0.0 <= r["val/AP"] <= 1.0
    assert straight[1]["lr"] < straight[0]["lr"]  # cosine decay after warmup
    assert straight[1]["train/loss"] < straight[0]["train/loss"]  # the trainable parts learn
    assert (tmp_path / "run_a" / "logs" / "vis" / "val_epoch002.png").stat().st_size > 1000
    assert list((tmp_path / "run_a" / "logs" / "tensorboard").glob("events.out.tfevents.*"))

    # The resumed run validates on the person-detection boxes instead (what mmpose reports): the training
    # state does not depend on validation, so the weights must still match bit for bit.
    # Resume from the single exported file (latest_checkpoint.pth), as `--set run.resume_from=FILE` does.
    exported = shutil.copy(tmp_path / "a" / "epoch_0001" / "training_state.pt", tmp_path / "latest_checkpoint.pth")
    det = cfg.model_copy(update={"data": cfg.data.model_copy(update={
        "val_bbox_file": str(coco / "test_coco_det_AP_H_56.json"), "max_val_instances": 24}),
        "run": cfg.run.model_copy(update={"resume_from": str(exported)})})
    resumed = _run(det, tmp_path / "run_b", tmp_path / "b")
    assert [r["epoch"] for r in resumed] == [2]
    # detection boxes have no targets: no val/loss at all (never a NaN or 0 placeholder)
    assert "val/loss" not in resumed[0] and 0.0 <= resumed[0]["val/AP"] <= 1.0
    assert resumed[0]["train/loss"] == straight[1]["train/loss"]
    a = torch.load(tmp_path / "a" / "epoch_0002" / MODEL_FILE, weights_only=True)["model_state_dict"]
    b = torch.load(tmp_path / "b" / "epoch_0002" / MODEL_FILE, weights_only=True)["model_state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    model, loaded_cfg = load_pose_model(tmp_path / "a" / "epoch_0002")
    assert loaded_cfg.model.backbone == str(backbone)
    assert model(torch.randn(1, 3, 64, 48))["keypoints"].shape == (1, 17, 16, 12)


def test_lr_schedule_warmup_then_cosine():
    f = [warmup_cosine_factor(s, total_steps=100, warmup_steps=10, start_factor=0.001, min_ratio=0.01) for s in range(101)]
    assert f[0] == pytest.approx(0.001) and f[10] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(f[:10], f[1:11]))
    assert all(b <= a for a, b in zip(f[10:], f[11:]))
    assert f[55] == pytest.approx(0.01 + 0.99 * 0.5) and f[100] == pytest.approx(0.01)


def test_guide_flags_map_onto_the_config():
    args = train_dino_pose.build_parser().parse_args([
        "--train_image_dir", "/c/train2017", "--train_annotation_file", "/c/a/person_keypoints_train2017.json",
        "--val_image_dir", "/c/val2017", "--val_annotation_file", "/c/a/v.json", "--model_name",
        "facebook/dinov2-small", "--image_size", "256", "192", "--heatmap_size", "64", "48", "--lr", "3e-4",
        "--batch_size", "8", "--epochs", "7", "--num_workers", "2", "--checkpoint_dir", "ck",
        "--wandb_project", "P", "--wandb_run_name", "r1", "--set", "train.epochs=9"])
    args.overrides = train_dino_pose.guide_overrides(args) + args.overrides
    cfg = load_config(DinoPoseJobConfig, args.config, args.overrides)
    assert cfg.data.train_image_dir == "/c/train2017" and cfg.data.val_annotation_file == "/c/a/v.json"
    assert cfg.model.backbone == "facebook/dinov2-small"
    assert cfg.data.image_size == (256, 192) and cfg.data.heatmap_size == (64, 48)
    assert cfg.optim.lr == 3e-4 and cfg.train.batch_size == 8 and cfg.data.num_workers == 2
    assert cfg.train.epochs == 9  # --set wins over the flag
    assert cfg.run.storage_path == "ck" and cfg.wandb.project == "P" and cfg.wandb.run_name == "r1"
    assert cfg.wandb.enabled and cfg.wandb.mode == "offline"


def test_job_refuses_bad_configs(capsys):
    # a partly set config is an error naming what is missing (no paths at all is the smoke run)
    assert train_dino_pose.main(["--set", "data.val_image_dir=/nonexistent"]) == 2
    assert "data.train_image_dir" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="heatmap_size"):
        load_config(DinoPoseJobConfig, None, ["data.image_size=[64, 48]", "data.heatmap_size=[128, 96]"])
    with pytest.raises(ConfigError, match="data.occlusion_prob"):
        load_config(DinoPoseJobConfig, None, ["data.occlusion_prob=1.5"])


def test_search_space_loads_for_the_dino_job():
    # the tuner's own loader checks every param against DinoPoseJobConfig (names, types, ranges)
    space = load_search_space(REPO / "search_spaces" / "dino_pose.yaml", DinoPoseJobConfig, job="dino_pose",
                              metrics=["val/AP", "val/AR", "train/loss"])
    assert space.metric == "val/AP" and space.mode == "max" and space.params


def test_guide_files_are_written_during_training_and_survive_a_failure(tmp_path, monkeypatch):
    """best_model.pth and latest_checkpoint.pth were exported only after a successful fit(): a run that failed at
    epoch 90 of 100 left neither, though the guide says both are saved during training."""
    coco = shared_path("data", "coco")
    backbone = make_tiny_dino(tmp_path / "bb", "dinov2")
    cfg = load_config(DinoPoseJobConfig, None, tiny_job_overrides(backbone, coco, tmp_path / "runs", epochs=4))
    aps = {1: 0.5, 2: 0.7, 3: 0.3}

    def fake_validate(model, loader, dataset, *, epoch, **_):  # val/AP by epoch; epoch 4 fails
        if epoch not in aps:
            raise RuntimeError("worker lost")
        return {"val/AP": aps[epoch]}

    monkeypatch.setattr(dino_loop, "validate", fake_validate)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="worker lost"):
        _run(cfg, run_dir, tmp_path / "ckpt")
    best = torch.load(run_dir / BEST_FILE, weights_only=True)
    latest = torch.load(run_dir / LATEST_FILE, weights_only=True)
    assert best["epoch"] == 2 and best["metrics"]["val/AP"] == 0.7  # the best val/AP, not the last
    assert latest["epoch"] == 3 and latest["optimizer"] is not None  # the last checkpoint's full state
    assert not any(k.startswith("backbone.") for k in best["model_state_dict"])


def _documented_commands(text: str) -> list[list[str]]:
    """The arguments of every `python rayjobs/train_dino_pose.py ...` command in `text` (continuations joined,
    comments cut)."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip().startswith("python rayjobs/train_dino_pose.py"):
            parts = []
            while True:
                body = lines[i].split("#")[0].strip()
                parts.append(body.rstrip("\\"))
                if not body.endswith("\\"):
                    break
                i += 1
            out.append(shlex.split(" ".join(parts))[2:])
        i += 1
    return out


def test_documented_multi_gpu_commands_use_the_gpus():
    """The docs' "4 GPUs (DDP)" command trained on 4 CPU workers over gloo: the preset says use_gpu: false."""
    from recognizer_core.train.ray_run import backend

    texts = {"rayjobs/train_dino_pose.py": train_dino_pose.__doc__,
             "docs/dino_pose.md": (REPO / "docs" / "dino_pose.md").read_text()}
    checked = 0
    for name, text in texts.items():
        for argv in _documented_commands(text):
            if not any(a.startswith("scaling.num_workers=") for a in argv):
                continue
            args = train_dino_pose.build_parser().parse_args(argv)
            args.overrides = train_dino_pose.guide_overrides(args) + list(args.overrides)
            cfg = config_from_args(DinoPoseJobConfig, args)
            assert cfg.scaling.num_workers == 4 and cfg.scaling.use_gpu, name
            assert backend(cfg.scaling) == "nccl", name
            checked += 1
    assert checked == 2
    for path in ("configs/dino_pose_base.yaml", "rayjobs/train_dino_pose.py", "docs/dino_pose.md"):
        for line in (REPO / path).read_text().splitlines():
            if "--set scaling.num_workers=" in line and "GPU" in line:  # a suggested command for GPUs
                assert "scaling.use_gpu=true" in line, f"{path}: {line}"
