"""Ray Train jobs of STGCN++: `build_trainer` (training), `test_best` (the best checkpoint on the test split,
after fit()) and `build_test_trainer` (any model on any split).

Data (demo / pkl) is prepared once, on the driver; light checks of the dataset run there too, so a deterministic
data error fails before any worker starts instead of being retried. `prepare_run` does both without Ray, so the
jobs run it before Ray starts.
"""
from __future__ import annotations

import json
import posixpath
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pyarrow.fs as pafs

from ray.train import Checkpoint, LoggingConfig, Result, RunConfig
from ray.train.torch import TorchConfig, TorchTrainer

from recognizer_core.config import ConfigError
from recognizer_core.skeleton.clip import SkeletonDataError
from recognizer_core.skeleton.store import SkeletonDataset
from recognizer_core.skeleton.validate import validate_dataset
from recognizer_core.storage import exists, filesystem, is_remote, join_uri, read_bytes, read_text, to_uri
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.stgcn.data import prepare_dataset, split_info
from recognizer_core.train.stgcn.dataset_source import datasets_dir
from recognizer_core.train.ray_run import RayTrainContext, backend, for_workers, run_config, run_uri, \
    scaling_config
from recognizer_core.train.stgcn.evaluate import label_names, test_loop
from recognizer_core.train.stgcn.loop import train_loop
from recognizer_core.train.state import STATE_FILE
from recognizer_core.train.stgcn.run_state import DATASET_FILE, DatasetIdentity, IncompleteCheckpoint, \
    check_resumable, saved_config

_SNAPSHOT = "checkpoint_manager_snapshot.json"


def _train_fn(config: dict) -> None:
    cfg = TrainJobConfig.model_validate(config["cfg"])
    train_loop(cfg, config["dataset_path"], config["run_uri"], RayTrainContext(cfg.scaling.use_gpu))


def _test_fn(config: dict) -> None:
    cfg = TrainJobConfig.model_validate(config["cfg"])
    ckpt = config["checkpoint"]
    # a Ray checkpoint (maybe in s3://) is fetched to a local folder by each worker, an s3:// .pth to a local
    # file; a file path is used as is
    if isinstance(ckpt, Checkpoint):
        opened = ckpt.as_directory()
    elif is_remote(ckpt):
        opened = _fetched(ckpt)
    else:
        opened = nullcontext(ckpt)
    with opened as local:
        test_loop(cfg, config["dataset_path"], local, config["out_uri"], RayTrainContext(cfg.scaling.use_gpu),
                  split=config["split"], required=config["required"], source=config.get("source"))


@contextmanager
def _fetched(uri: str):
    """A remote file, downloaded to a temporary local file for the block."""
    with tempfile.TemporaryDirectory(prefix="recognizer_test_") as tmp:
        local = Path(tmp) / Path(uri).name
        data = read_bytes(uri)
        if data is None:
            raise FileNotFoundError(f"{uri}: not found")
        local.write_bytes(data)
        yield str(local)


def default_run_config(cfg: TrainJobConfig) -> RunConfig:
    return run_config(name=cfg.run.name, storage_path=cfg.run.storage_path, max_failures=cfg.run.max_failures,
                      num_to_keep=cfg.checkpoint.num_to_keep, score_attribute=cfg.checkpoint.score_attribute,
                      log_level=cfg.run.ray_log_level)


def recorded_config(cfg: TrainJobConfig, dataset_path: str) -> TrainJobConfig:
    """The config saved as the run folder's config.yaml, which recognize / export / test_stgcn read back from any
    working directory: data.path is the dataset the run trained on, as prepare_run resolved it (a relative
    data.path found by storage.input_path, pkl files converted, demo data written under
    output_uri(run.storage_path)), which holds every split; the pkl paths, converted into it, are dropped. As typed,
    a relative path was looked up again from the reader's directory and missed (recognize then fell back to
    30 fps and window = clip_len, and export wrote that into the sidecar)."""
    data = cfg.data.model_copy(update={"path": dataset_path, "train_pkl": None, "val_pkl": None, "test_pkl": None})
    return cfg.model_copy(update={"data": data})


def run_folder(cfg: TrainJobConfig) -> str:
    """The run folder of `cfg` (storage_path/name): checkpoints, logs, plots, summary, exported best model."""
    return run_uri(default_run_config(cfg))


def existing_run(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(run_dir.rglob(_SNAPSHOT))


def _snapshot_checkpoints(text: bytes | None) -> tuple[list[str], str | None] | None:
    """(the checkpoint folders Ray's checkpoint manager snapshot lists, the latest: the one Ray resumes from, None
    before the first), or None where the text is no such snapshot ('{}' in tests, unreadable). Ray writes the
    snapshot after a checkpoint is fully copied, so a copy cut short (a full disk) is never in it."""
    try:
        snapshot = json.loads(text or b"")
        listed = [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]
        latest = snapshot.get("latest_checkpoint_result")
        return listed, (latest["checkpoint_dir_name"] if latest else None)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _state_cut_short(uri: str) -> bool:
    """Whether the training state file at `uri` (local or remote) is there but cut short: torch.save writes a zip,
    whose end-of-central-directory record closes the file (read from its last 64 KiB only)."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return False
    with fs.open_input_file(path) as f:
        size = f.size()
        tail = f.read_at(min(size, 65_558), max(0, size - 65_558))
    return b"PK\x05\x06" not in tail


def _incomplete(run: str, name: str, ckpt: Path) -> str | None:
    """Why checkpoint folder `name` of run folder `run` (config.yaml / dataset.json at `ckpt`) is an incomplete
    copy, or None."""
    try:
        saved_config(ckpt)
    except IncompleteCheckpoint as err:
        return err.reason
    return f"its {STATE_FILE} is cut short" if _state_cut_short(join_uri(run, name, STATE_FILE)) else None


def _resume_checkpoint(run: str, names: list[str], snapshot: bytes | None,
                       fetch: Callable[[str], Path]) -> tuple[Path | None, list[str]]:
    """(the checkpoint the run resumes from, as a local folder with its config.yaml / dataset.json, or None; lines
    about incomplete checkpoint folders passed over). `names`: the run's checkpoint_epoch_* folders, sorted; a
    checkpoint's files come from `fetch(name)`. Ray's snapshot decides where it has one: the newest folder, as the
    driver took it, was a copy cut short by a full disk (config.yaml empty), refused as 'the model or pipeline
    changed' while Ray would resume from the previous, complete one. Without a snapshot (older layouts) the newest
    complete folder."""
    listed = _snapshot_checkpoints(snapshot)
    if listed is not None:
        kept, latest = listed
        notes = [f"checkpoint {join_uri(run, n)} is incomplete (not in Ray's {_SNAPSHOT}: its copy did not finish, "
                 f"e.g. the disk was full); the run resumes from {latest or 'the start'} instead"
                 for n in names if n not in kept and (latest is None or n > latest)]
        if latest is None:
            return None, notes
        ckpt = fetch(latest)
        reason = _incomplete(run, latest, ckpt)
        if reason is not None:
            raise ConfigError(f"cannot resume run from {join_uri(run, latest)}: the checkpoint Ray resumes from (the "
                              f"latest in its {_SNAPSHOT}) is incomplete ({reason}). Move the run folder aside or "
                              "use a new run.name")
        return ckpt, notes
    notes = []
    for name in reversed(names):
        ckpt = fetch(name)
        reason = _incomplete(run, name, ckpt)
        if reason is None:
            return ckpt, notes
        notes.append(f"checkpoint {join_uri(run, name)} is incomplete ({reason}: its copy did not finish, e.g. the "
                     "disk was full); the previous checkpoint is checked instead")
    return None, notes


@contextmanager
def _run_on_disk(run: str) -> Iterator[tuple[bool, Path | None, list[str]]]:
    """(whether run folder `run` holds a run, the checkpoint it resumes from as a local Path or None, lines about
    incomplete checkpoints passed over: _resume_checkpoint). A run on object storage is looked at through its
    filesystem and a checkpoint's config.yaml / dataset.json are copied to a temporary folder: Path("s3://b/r")
    named a local "s3:/b/r" that never exists, so run.resume=never and the resume checks passed over every run on
    object storage."""
    if not is_remote(run):
        local = Path(run)
        if not existing_run(local):
            yield False, None, []
            return
        names = sorted(p.name for p in local.glob("checkpoint_epoch_*") if p.is_dir())
        yield (True, *_resume_checkpoint(run, names, read_bytes(str(local / _SNAPSHOT)), lambda name: local / name))
        return
    fs, root = filesystem(run)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    kinds = {posixpath.basename(i.path): i.type for i in infos}
    names = sorted(n for n, t in kinds.items() if n.startswith("checkpoint_epoch_") and t == pafs.FileType.Directory)
    if _SNAPSHOT not in kinds:
        yield False, None, []
        return
    with tempfile.TemporaryDirectory(prefix="recognizer_resume_") as tmp:
        def fetch(name: str) -> Path:
            copy = Path(tmp) / name
            copy.mkdir(exist_ok=True)
            for file in ("config.yaml", DATASET_FILE):
                data = read_bytes(join_uri(run, name, file))
                if data is not None:
                    (copy / file).write_bytes(data)
            return copy

        yield (True, *_resume_checkpoint(run, names, read_bytes(join_uri(run, _SNAPSHOT)), fetch))


def preflight(cfg: TrainJobConfig, dataset_path: str | Path) -> DatasetIdentity:
    """Checks on the driver that need only the light columns (empty splits, labels outside num_classes), so a
    deterministic data error fails at once instead of being retried by FailureConfig on every worker. Returns
    what the dataset is (as the workers will save it with their checkpoints)."""
    ds = SkeletonDataset(dataset_path)
    label_names(cfg, ds)  # the config's class order is the dataset's
    info = split_info(ds, cfg.data.train_split, cfg.model.num_classes)
    if len(info) < cfg.scaling.num_workers:
        raise SkeletonDataError(f"{dataset_path}: split {cfg.data.train_split!r} has {len(info)} clip(s), fewer "
                                f"than scaling.num_workers={cfg.scaling.num_workers}")
    val_info = split_info(ds, cfg.data.val_split, cfg.model.num_classes)
    identity = DatasetIdentity.of(ds, str(dataset_path), len(info), len(val_info))
    # one streamed pass over the keypoints (NaN, T=0, list lengths, far coordinates), cached per dataset version
    validate_dataset(dataset_path, [cfg.data.train_split, cfg.data.val_split, cfg.data.test_split],
                     cfg.model.num_classes, cfg.data.nan_policy, num_joints=cfg.model.num_joints,
                     skip_empty=cfg.data.skip_empty_clips)
    return identity


def _check_existing(cfg: TrainJobConfig, rc: RunConfig, dataset: DatasetIdentity | None = None) -> None:
    """The resume rules on the driver: first on the config alone (before the dataset is prepared), then again with
    the prepared dataset's identity (a dataset rebuilt in place is refused before Ray starts, not by the workers)."""
    run_dir = run_uri(rc)
    with _run_on_disk(run_dir) as (exists_, latest, notes):
        if not exists_:
            return
        if cfg.run.resume == "never":
            raise ConfigError(f"run.resume=never but run {run_dir} already exists: choose a new run.name or set "
                              "run.resume=auto to continue it")
        for note in notes if dataset is None else []:   # prepare_run checks twice: said once
            print(f"[recognizer] {note}", flush=True)
        if latest is not None:
            try:
                check_resumable(cfg, latest, dataset)
            except ValueError as err:
                raise ConfigError(str(err)) from None


def dataset_for(cfg: TrainJobConfig) -> str:
    """The dataset the run trains on (prepare_dataset: demo / pkl data prepared under datasets_dir, which it
    refuses on object storage; a data.path may be anywhere, with the run on object storage too)."""
    return to_uri(prepare_dataset(cfg.data, datasets_dir(cfg.run.storage_path)))


def prepare_run(cfg: TrainJobConfig, run_config: RunConfig | None = None) -> str:
    """What build_trainer checks and prepares on the driver, none of which needs Ray: the run's resume rules
    (only without a given `run_config`), the dataset prepared (demo / pkl converted) and validated. Returns the
    dataset's URI. A job calls it before Ray starts, so a bad dataset is one line, not one after Ray's start-up,
    and hands the URI to build_trainer(dataset_path=...), which then checks nothing twice."""
    if run_config is None:
        _check_existing(cfg, default_run_config(cfg))
    late = cfg.late_milestones_note()
    if late:
        print(f"[recognizer] warning: {late}", flush=True)
    dataset_path = dataset_for(cfg)
    identity = preflight(cfg, dataset_path)
    if run_config is None:
        _check_existing(cfg, default_run_config(cfg), identity)
    return dataset_path


def build_trainer(cfg: TrainJobConfig, *, run_config: RunConfig | None = None,
                  dataset_path: str | None = None) -> TorchTrainer:
    """A TorchTrainer for `cfg`. Without `run_config`, one is built from cfg.run / cfg.checkpoint (name, storage,
    FailureConfig, keep the best by score_attribute and the latest); a given one (e.g. from Ray Tune, with its
    callbacks, storage and name, which may be s3://) is used as is. `dataset_path`: what prepare_run(cfg)
    returned (the job ran it before Ray started); without it prepare_run runs here."""
    if dataset_path is None:
        dataset_path = prepare_run(cfg, run_config)
    run_config = run_config or default_run_config(cfg)
    return TorchTrainer(
        _train_fn,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "dataset_path": dataset_path,
                           "run_uri": run_uri(run_config)},
        torch_config=TorchConfig(backend=backend(cfg.scaling)),
        scaling_config=scaling_config(cfg.scaling),
        run_config=for_workers(run_config, cfg.scaling),
    )


def best_checkpoint(result: Result, score_attribute: str) -> tuple[Checkpoint, dict] | None:
    """The best validated checkpoint Ray kept (only validated epochs carry the score)."""
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if m.get(score_attribute) is not None]
    return max(ranked, key=lambda cm: cm[1][score_attribute]) if ranked else None


def _test_trainer(cfg: TrainJobConfig, checkpoint, out_uri: str, split: str, *, required: bool,
                  source: str | None = None, dataset_path: str | None = None) -> TorchTrainer:
    out_uri = to_uri(out_uri)
    ray_storage = join_uri(out_uri, ".ray_test_runs") if is_remote(out_uri) else str(Path(out_uri).parent /
                                                                                      ".ray_test_runs")
    return TorchTrainer(
        _test_fn,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "dataset_path": dataset_path or dataset_for(cfg),
                           "checkpoint": checkpoint, "out_uri": out_uri, "split": split, "required": required,
                           "source": source},
        torch_config=TorchConfig(backend=backend(cfg.scaling)),
        scaling_config=scaling_config(cfg.scaling),
        # the training run's Ray log level (default WARNING): Ray Train's INFO lines stay off in the test as well
        run_config=for_workers(RunConfig(name=f"test_{Path(out_uri).name}_{int(time.time())}",
                                         storage_path=ray_storage,
                                         logging_config=LoggingConfig(log_level=cfg.run.ray_log_level)),
                               cfg.scaling),
    )


def build_test_trainer(cfg: TrainJobConfig, checkpoint: str | Path, out_dir: str | Path,
                       split: str | None = None, *, dataset_path: str | None = None) -> TorchTrainer:
    """Sharded multi-clip test of `checkpoint` (mmaction2 .pth, a Ray checkpoint dir or a run folder) on `split`;
    `dataset_path`: dataset_for(cfg), when the caller already prepared it."""
    return _test_trainer(cfg, str(Path(checkpoint).resolve()), str(out_dir), split or cfg.data.test_split,
                         required=True, dataset_path=dataset_path)


def test_best(cfg: TrainJobConfig, result: Result, out_uri: str) -> bool:
    """After fit(): the best model (`checkpoint_to_test`), multi-clip, on data.test_split (skipped with a line
    when the dataset has no such split); <split>_metrics.json and its confusion matrix go to `out_uri` (the run
    folder). False when there is nothing to test (no validated checkpoint)."""
    chosen = checkpoint_to_test(out_uri, result, cfg.checkpoint.score_attribute)
    if chosen is None:
        return False
    ckpt, epoch = chosen
    _test_trainer(cfg, ckpt, out_uri, cfg.data.test_split, required=False, source=f"best epoch {epoch}").fit()
    return True


def checkpoint_to_test(run_dir: str, result: Result, score_attribute: str) -> tuple[str | Checkpoint, int] | None:
    """(the run's best model, its epoch): the mmaction2 .pth the loop exported as best (the first epoch to reach
    the best score, as mmengine's CheckpointHook keeps it), else the best checkpoint Ray kept. Ray's checkpoint
    manager drops the earliest of tied scores first, so on a plateau its best kept checkpoint was a later epoch
    than the exported model, and the job printed one epoch's test score next to another's best epoch."""
    exported = json.loads(read_text(join_uri(to_uri(run_dir), "summary.json")) or "{}").get("best") or {}
    if exported.get("file") and exists(join_uri(to_uri(run_dir), exported["file"])):
        return join_uri(to_uri(run_dir), exported["file"]), int(exported["epoch"])
    best = best_checkpoint(result, score_attribute)
    return (best[0], int(best[1]["epoch"])) if best else None
