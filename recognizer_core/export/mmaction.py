"""The one export of a run's best STGCN++ model: `best_<metric>_epoch_<N>.pth` in mmaction2 format.

mmengine's CheckpointHook(save_best) keeps one such file per run, the previous best removed; the training loop
(at every new best) and the tuner (the search's winner) both write it here. The folder may be local, shared
(NFS) or an object-store URI.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import pyarrow.fs as pafs
import torch

from recognizer_core.models.checkpoint import export_mmaction_checkpoint, load_into
from recognizer_core.models.recognizer import build_recognizer
from recognizer_core.storage import filesystem, join_uri, write_bytes
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.state import STATE_FILE, unwrap


def best_model_name(score_attribute: str, epoch: int) -> str:
    """`val/acc_top1`, 12 -> `best_acc_top1_epoch_12.pth` (mmengine's save_best naming)."""
    return f"best_{score_attribute.split('/')[-1]}_epoch_{int(epoch)}.pth"


def remove_previous_best(out_dir: str, score_attribute: str, keep: str) -> None:
    """Delete out_dir's best_<metric>_epoch_*.pth files other than `keep`. export_best_model calls it on its own
    folder; a run staging on object storage (train/run_files.py) exports into the local staging folder, so its
    loop calls it on the run's remote folder after the sync that uploaded `keep`: else every improvement left
    one more best file there, which the ensemble refuses and recognize picks among by mtime."""
    fs, root = filesystem(out_dir)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return
    prefix = f"best_{score_attribute.split('/')[-1]}_epoch_"
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.base_name.startswith(prefix) and info.base_name.endswith(".pth") and info.base_name != keep:
            fs.delete_file(info.path)


def export_best_model(model: torch.nn.Module, out_dir: str, *, cfg: TrainJobConfig, epoch: int,
                      label_names: Sequence[str] | None, iteration: int = 0,
                      extra_meta: dict | None = None) -> str:
    """Write `model` (plain or DDP-wrapped) as out_dir/best_<metric>_epoch_<epoch>.pth, the metric being
    cfg.checkpoint.score_attribute, and remove that metric's previous best file. Returns the file's path/URI."""
    name = best_model_name(cfg.checkpoint.score_attribute, epoch)
    target = join_uri(str(out_dir), name)
    meta = {"score_attribute": cfg.checkpoint.score_attribute, **(extra_meta or {})}
    with tempfile.TemporaryDirectory(prefix="recognizer_export_") as tmp:
        local = export_mmaction_checkpoint(unwrap(model), Path(tmp) / name, cfg=cfg.model, epoch=epoch,
                                           iteration=iteration, classes=list(label_names) if label_names else None,
                                           extra_meta=meta)
        write_bytes(target, local.read_bytes())
    remove_previous_best(str(out_dir), cfg.checkpoint.score_attribute, keep=name)
    return target


def export_from_checkpoint(cfg: TrainJobConfig, checkpoint_dir: str | Path, out_dir: str,
                           extra_meta: dict | None = None) -> str:
    """A Ray Train checkpoint folder of the STGCN++ job (training_state.pt) -> `export_best_model`."""
    path = Path(checkpoint_dir) / STATE_FILE
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_recognizer(cfg.model)
    load_into(model, state["model"], str(path))
    extra = state.get("extra") or {}
    return export_best_model(model, out_dir, cfg=cfg, epoch=int(state["epoch"]),
                             label_names=extra.get("label_names") or cfg.data.label_names,
                             iteration=int(extra.get("global_step", 0)), extra_meta=extra_meta)
