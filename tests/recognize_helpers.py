"""Small trained-looking models and run folders for the recognize / export tests (built in the test, no data)."""
from __future__ import annotations

from pathlib import Path

import torch

from recognizer_core.config import dump_config, validate_config
from recognizer_core.models.checkpoint import export_mmaction_checkpoint
from recognizer_core.models.recognizer import build_recognizer
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import write_dataset
from recognizer_core.dataset.windows import make_windows
from recognizer_core.train.stgcn.config import TrainJobConfig


def make_run_folder(root: Path, num_clips: int = 24, seed: int = 0, task: str = "fight",
                    val_split: str = "val") -> tuple[Path, TrainJobConfig]:
    """A run folder as train_stgcn.py leaves it (config.yaml + best_*_epoch_*.pth), over a small Parquet dataset
    of demo clips windowed as build_dataset windows them (whole clips, top-2 persons re-ranked). `val_split`
    renames the validation split (NTU-style pickles call it xsub_val)."""
    names = ["NonFight", "Fight"] if task == "fight" else ["Normal", "Falldown"]
    clips = [w for c in make_demo_clips(task, num_clips, seed=seed) for w in make_windows(c, 0, num_person=2)]
    for c in clips:
        c.split = val_split if c.split == "val" else c.split
    data = write_dataset(clips, root / "dataset", names)
    cfg = validate_config(TrainJobConfig, {
        "data": {"path": str(data), "label_names": names, "loader_workers": 0, "val_split": val_split},
        "model": {"num_classes": 2, "num_stages": 3, "base_channels": 16, "inflate_stages": [2],
                  "down_stages": [2], "dropout": 0.0},
        "pipeline": {"feats": ["j", "b"], "clip_len": 24, "num_person": 2, "test_num_clips": 2},
        "train": {"batch_size": 8, "val_batch_size": 8, "class_weight": None},
        "run": {"name": "run", "storage_path": str(root)}}, "test")
    torch.manual_seed(seed)
    net = build_recognizer(cfg.model).eval()
    with torch.no_grad():  # a random but non-trivial head so that scores spread over (0, 1)
        net.cls_head.fc.weight.mul_(300)
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run / "config.yaml")
    export_mmaction_checkpoint(net, run / "best_acc_top1_epoch_3.pth", cfg=cfg.model, epoch=3, classes=names)
    return run, cfg
