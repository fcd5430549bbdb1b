"""What the STGCN++ loop carries from epoch to epoch and across a resume: one small state object, saved as the
`extra` of every checkpoint; early stopping (mmengine's hook) and the check that a checkpoint fits the config."""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recognizer_core.config import read_yaml
from recognizer_core.train.stgcn.config import TrainJobConfig

log = logging.getLogger(__name__)


class EarlyStopper:
    """mmengine EarlyStoppingHook (rule 'greater'): stop after `patience` validations without an improvement
    larger than `min_delta`."""

    def __init__(self, patience: int, min_delta: float, state: dict | None = None):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.wait = (state or {}).get("best", -math.inf), (state or {}).get("wait", 0)

    def update(self, value: float) -> bool:
        if value - self.best > self.min_delta:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        return self.wait >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "wait": self.wait}


@dataclass
class RunState:
    epoch: int = 0  # completed epochs (1-based numbering: epoch 1 is the first)
    global_step: int = 0  # batches since the start: the one step axis of every log
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"score": -math.inf, "epoch": 0, "file": None})
    early_stopping: dict = field(default_factory=dict)
    nonfinite_in_a_row: int = 0
    stopped_early: bool = False

    def to_extra(self, label_names, world_size: int) -> dict:
        return {**asdict(self), "label_names": list(label_names), "world_size": world_size}

    @classmethod
    def from_checkpoint(cls, state: dict | None) -> "RunState":
        if not state:
            return cls()
        extra = state.get("extra") or {}
        known = {k: extra[k] for k in ("global_step", "history", "best", "early_stopping", "nonfinite_in_a_row",
                                       "stopped_early") if k in extra}
        return cls(epoch=int(state["epoch"]), **known)


def check_resumable(cfg: TrainJobConfig, ckpt: Path) -> None:
    """A run continues only with the network and inputs it was trained with; anything else is a new run."""
    saved_path = ckpt / "config.yaml"
    if not saved_path.is_file():
        return
    saved = read_yaml(saved_path)
    now = json.loads(cfg.model_dump_json())
    diffs = [f"{sec}.{k}: checkpoint {saved.get(sec, {}).get(k)!r}, config {v!r}"
             for sec in ("model", "pipeline") for k, v in now[sec].items()
             if saved.get(sec, {}).get(k) != v and not (sec == "pipeline" and k == "test_num_clips")
             and not (sec == "model" and k in ("dropout", "with_cp"))]
    if diffs:
        raise ValueError(f"cannot resume run {cfg.run.name!r} from {ckpt}: the model or pipeline changed ("
                         + "; ".join(diffs) + "). Use a new run.name for a different model")
    # Another dataset under the same run.name (the docs' demo command, then the same preset on real data) resumed
    # the demo run: a finished one trained 0 epochs and reported the demo model as the new data's result.
    data_keys = ("path", "train_pkl", "val_pkl", "train_split", "val_split")
    data_keys += ("demo_task", "demo_num_clips", "demo_seed") if cfg.data.is_demo else ()
    data = [f"data.{k}: checkpoint {saved['data'][k]!r}, config {now['data'][k]!r}" for k in data_keys
            if k in saved.get("data", {}) and _same_place(saved["data"][k]) != _same_place(now["data"][k])]
    if data:
        raise ValueError(f"cannot resume run {cfg.run.name!r} from {ckpt}: it trained on other data ("
                         + "; ".join(data) + "). Use a new run.name (--set run.name=...) for a run on this data")
    # The restored schedule counts optimizer steps and its lr was scaled to the old global batch: with another
    # number of batches per epoch it decayed early (2 workers instead of 1: 'epoch 20' at epoch 11) from the
    # wrong lr, without a word.
    steps = [f"{sec}.{k}: checkpoint {saved.get(sec, {}).get(k)!r}, config {now[sec][k]!r}"
             for sec, k in (("scaling", "num_workers"), ("train", "batch_size"), ("train", "accumulative_counts"))
             if k in saved.get(sec, {}) and saved[sec][k] != now[sec][k]]
    if steps:
        raise ValueError(f"cannot resume run {cfg.run.name!r} from {ckpt}: the steps per epoch changed ("
                         + "; ".join(steps) + "), so the restored learning-rate schedule would no longer fit. "
                         "Resume with the original values, or use a new run.name")
    # The optimizer's and scheduler's states are restored over the config (as mmengine does): a new lr was printed
    # but not used, another optimizer type crashed at its first step (SGD reading AdamW's groups: KeyError).
    optim = [f"{sec}.{k}: checkpoint {saved[sec][k]!r}, config {v!r}" for sec in ("optim", "schedule")
             for k, v in now[sec].items() if k in saved.get(sec, {}) and saved[sec][k] != v
             and (sec, k) != ("optim", "clip_grad_max_norm")]
    if optim:
        raise ValueError(f"cannot resume run {cfg.run.name!r} from {ckpt}: the optimizer or schedule changed ("
                         + "; ".join(optim) + "); the checkpoint's would be restored over them. Resume with the "
                         "original values, or use a new run.name")
    old_epochs = saved.get("train", {}).get("epochs")
    if cfg.schedule.type == "cosine" and old_epochs is not None and old_epochs != cfg.train.epochs:
        log.warning("resuming run %r with train.epochs=%d (it started with %d): the cosine schedule is stretched "
                    "to the new length, so the lr jumps at the resumed epoch", cfg.run.name, cfg.train.epochs,
                    old_epochs)


def _same_place(value):
    """A path as written, normalised (`data/x/` and `./data/x` are one folder); other values as they are."""
    return os.path.normpath(value) if isinstance(value, str) and value and "://" not in value else value
