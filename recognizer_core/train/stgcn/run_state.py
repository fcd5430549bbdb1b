"""What the STGCN++ loop carries from epoch to epoch and across a resume: one small state object, saved as the
`extra` of every checkpoint; early stopping (mmengine's hook); the dataset a checkpoint trained on (DatasetIdentity,
`dataset.json` beside its config.yaml) and the check that a checkpoint fits the config and the data."""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from recognizer_core.skeleton.clip import SkeletonDataError
from recognizer_core.skeleton.store import SkeletonDataset
from recognizer_core.skeleton.store_write import WRITE_ID
from recognizer_core.storage import to_uri
from recognizer_core.train.stgcn.config import EarlyStoppingConfig, TrainJobConfig
from recognizer_core.train.stgcn.dataset_source import dataset_location

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
    def from_checkpoint(cls, state: dict | None, *, num_batches: int | None = None,
                        early_stopping: EarlyStoppingConfig | None = None) -> "RunState":
        """The state a checkpoint saved. One written before global_step and stopped_early were saved gets them
        from what it has: epoch * num_batches steps (every epoch runs num_batches, as the loop then counted), and
        stopped when its early-stopping wait had reached the patience. With 0 and False instead, the resumed run
        logged from step 1 (TensorBoard's purge_step deleted the run's history) and an early-stopped run trained
        on. Without `num_batches` / `early_stopping` (callers that do not train on) the defaults stay 0 / False."""
        if not state:
            return cls()
        extra = state.get("extra") or {}
        known = {k: extra[k] for k in ("global_step", "history", "best", "early_stopping", "nonfinite_in_a_row",
                                       "stopped_early") if k in extra}
        epoch = int(state["epoch"])
        if "global_step" not in known and num_batches is not None:
            known["global_step"] = epoch * int(num_batches)
        if "stopped_early" not in known and early_stopping is not None and early_stopping.enabled:
            known["stopped_early"] = int((known.get("early_stopping") or {}).get("wait", 0)) >= early_stopping.patience
        return cls(epoch=epoch, **known)


DATASET_FILE = "dataset.json"  # a checkpoint's DatasetIdentity, beside its config.yaml


@dataclass(frozen=True)
class DatasetIdentity:
    """The dataset a checkpoint trained on: where the workers read it (resolved: what build_trainer passes the
    loop as dataset_path), the store's write id (a new one at every write, also in place) and the train / val
    split sizes. The config's data fields say none of that: a dataset rebuilt in place with more videos kept its
    path, and a resumed run trained on other clips (other steps per epoch under the restored lr schedule) and
    chose its best epoch between two val sets."""
    location: str
    write_id: str | None  # None: a store written before write ids, or a plain folder of part files
    train_clips: int
    val_clips: int

    @classmethod
    def of(cls, ds: SkeletonDataset, location: str, train_clips: int, val_clips: int) -> "DatasetIdentity":
        return cls(to_uri(location), ds.info.get(WRITE_ID), int(train_clips), int(val_clips))

    def save(self, ckpt_dir: str | Path) -> None:
        (Path(ckpt_dir) / DATASET_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def saved_in(cls, ckpt: Path) -> "DatasetIdentity | None":
        """The identity a checkpoint saved; None for one written before identities were saved."""
        path = Path(ckpt) / DATASET_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            return cls(str(raw["location"]), raw.get("write_id"), int(raw["train_clips"]), int(raw["val_clips"]))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a dataset identity ({type(err).__name__}: {err}); remove the run "
                             "folder or use a new run.name") from None


class IncompleteCheckpoint(ValueError):
    """A checkpoint folder whose copy did not finish, e.g. Ray's copy of it cut short by a full disk."""

    def __init__(self, ckpt: Path | str, reason: str):
        self.ckpt, self.reason = ckpt, reason
        super().__init__(f"checkpoint {ckpt} is incomplete ({reason}: its copy did not finish, e.g. the disk was "
                         "full)")

    def __reduce__(self):   # raised in a worker, pickled back to the driver by Ray
        return type(self), (self.ckpt, self.reason)


def saved_config(ckpt: Path) -> dict | None:
    """The config checkpoint `ckpt` saved (its config.yaml); None where it has none. An empty or unreadable one is
    a copy cut short (IncompleteCheckpoint): read as {}, every field looked changed and the run was refused as
    'the model or pipeline changed (model.num_classes: checkpoint None, ...)'."""
    path = Path(ckpt) / "config.yaml"
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_bytes())
    except (yaml.YAMLError, UnicodeDecodeError):
        raise IncompleteCheckpoint(ckpt, "its config.yaml is not readable YAML") from None
    if not saved:
        raise IncompleteCheckpoint(ckpt, "its config.yaml is empty")
    # the loop's dump_config writes data, model, pipeline, ... in that order: without model / pipeline (what the
    # checks read first) the file was cut short
    if not isinstance(saved, dict) or not {"model", "pipeline"} <= saved.keys():
        raise IncompleteCheckpoint(ckpt, "its config.yaml is cut short")
    return saved


def check_resumable(cfg: TrainJobConfig, ckpt: Path, dataset: DatasetIdentity | None = None) -> None:
    """A run continues only with the network, inputs and data it was trained with; anything else is a new run.
    `dataset`: the loop's, to compare with the checkpoint's (the driver, before the data is opened, has none).
    An incomplete checkpoint raises IncompleteCheckpoint, not a list of changed fields."""
    saved = saved_config(ckpt)
    if saved is None:
        return
    now = json.loads(cfg.model_dump_json())
    diffs = [f"{sec}.{k}: checkpoint {saved.get(sec, {}).get(k)!r}, config {v!r}"
             for sec in ("model", "pipeline") for k, v in now[sec].items()
             if saved.get(sec, {}).get(k) != v and not (sec == "pipeline" and k == "test_num_clips")
             and not (sec == "model" and k in ("dropout", "with_cp"))]
    if diffs:
        raise ValueError(f"cannot resume run {cfg.run.name!r} from {ckpt}: the model or pipeline changed ("
                         + "; ".join(diffs) + "). Use a new run.name for a different model")
    _check_data(cfg, ckpt, saved.get("data", {}), now["data"], DatasetIdentity.saved_in(ckpt), dataset)
    # The restored schedule counts batches (build_scheduler steps it every batch, accumulation or not) and its lr
    # was scaled to the old global batch: with another number of batches per epoch it decayed early (2 workers
    # instead of 1: 'epoch 20' at epoch 11) from the wrong lr, without a word. Accumulation changes neither (its
    # groups restart every epoch), so train.accumulative_counts may change at a resume.
    steps = [f"{sec}.{k}: checkpoint {saved.get(sec, {}).get(k)!r}, config {now[sec][k]!r}"
             for sec, k in (("scaling", "num_workers"), ("train", "batch_size"))
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


def _check_data(cfg: TrainJobConfig, ckpt: Path, saved: dict, now: dict, had: DatasetIdentity | None,
                dataset: DatasetIdentity | None) -> None:
    """The data part of check_resumable: the config's data fields, then (a checkpoint with an identity) the
    dataset's resolved location, write id and split sizes."""
    # Another dataset under the same run.name (the docs' demo command, then the same preset on real data) resumed
    # the demo run: a finished one trained 0 epochs and reported the demo model as the new data's result.
    data_keys = ("path", "train_pkl", "val_pkl", "train_split", "val_split")
    data_keys += ("demo_task", "demo_num_clips", "demo_seed") if cfg.data.is_demo else ()
    # Two data.path runs whose checkpoint saved the resolved location compare that below, not the paths as typed:
    # the run folder's config.yaml holds the absolute path (train_stgcn.recorded_config), the checkpoint's the
    # typed one, so a re-run with --config <run>/config.yaml was refused as other data.
    # A demo or pkl run's own config.yaml names the store it prepared as data.path (the pkl fields dropped): the
    # identity's location decides there too.
    by_location = had is not None and bool(now["path"])
    if had is None and saved.get("path") and now["path"]:   # an older checkpoint: both paths as they resolve
        saved, now = {**saved, "path": _resolved(saved["path"])}, {**now, "path": _resolved(now["path"])}
    data = [f"data.{k}: checkpoint {saved[k]!r}, config {now[k]!r}" for k in data_keys
            if k in saved and _same_place(saved[k]) != _same_place(now[k])
            and not (by_location and k in ("path", "train_pkl", "val_pkl"))]
    if data:
        raise ValueError(f"cannot resume run {cfg.run.name!r} from {ckpt}: it trained on other data ("
                         + "; ".join(data) + "). Use a new run.name (--set run.name=...) for a run on this data")
    if had is None:
        return  # a checkpoint from before identities were saved: the config's fields are all there is
    # the driver resolves data.path as prepare_dataset will (a pkl / demo store, prepared later, the loop compares)
    location = dataset.location if dataset else to_uri(dataset_location(cfg.data.path)) if cfg.data.path else None
    # SkeletonDataError (a ValueError): a worker raising it ends the Ray run at once instead of being retried
    if location is not None and location != had.location:
        raise SkeletonDataError(f"cannot resume run {cfg.run.name!r} from {ckpt}: it trained on other data (dataset: "
                                f"checkpoint {had.location!r}, config {location!r}). Use a new run.name "
                                "(--set run.name=...) for a run on this data")
    if dataset is None:
        return
    # A pkl / demo store is written once per content (its folder name hashes the inputs), so a store rewritten
    # there (its folder deleted) holds the same clips: its new write id alone refuses nothing.
    rebuilt = bool(cfg.data.path) and None not in (had.write_id, dataset.write_id) and had.write_id != dataset.write_id
    changes = ([f"write id {had.write_id} -> {dataset.write_id}"] if rebuilt else []) + \
        [f"{split} {a} -> {b} clips" for split, a, b in (("train", had.train_clips, dataset.train_clips),
                                                          ("val", had.val_clips, dataset.val_clips)) if a != b]
    if changes:
        raise SkeletonDataError(
            f"cannot resume run {cfg.run.name!r} from {ckpt}: the dataset at {location} was "
            f"{'rebuilt' if rebuilt else 'changed'} since this run's checkpoint ({'; '.join(changes)}): the resumed "
            "run would train on other clips under the restored lr schedule and pick its best epoch between two val "
            "sets. Use a new run.name (--set run.name=...) for a run on this data")


def _resolved(path: str) -> str:
    """data.path as the driver finds it (dataset_location), as a URI; as written where it is not found."""
    try:
        return to_uri(str(dataset_location(path)))
    except SkeletonDataError:
        return path


def _same_place(value):
    """A path as written, normalised (`data/x/` and `./data/x` are one folder); other values as they are."""
    return os.path.normpath(value) if isinstance(value, str) and value and "://" not in value else value
