"""Where the training data is: data.path (a folder or an s3:// / gs:// URI), mmaction2 pkl files converted once
to a Parquet skeleton store, or the built-in demo data written once. Runs on the driver."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from recognizer_core.config import ConfigError
from recognizer_core.skeleton.clip import SkeletonClip, SkeletonDataError
from recognizer_core.storage import STORAGE_ENV, exists, input_path, is_remote, join_uri, output_uri
from recognizer_core.train.stgcn.config import DataConfig

log = logging.getLogger("recognizer")


def datasets_dir(storage_path: str) -> str:
    """Where jobs prepare the pkl conversions and demo data of a run whose run.storage_path is `storage_path`:
    `<output_uri(storage_path)>/datasets` (under $RECOGNIZER_STORAGE in a Ray package, not the working directory).
    Training, recognize's window statistics and the ensemble all look there (prepare_dataset's `work_dir`). A URI
    when that is object storage (a Path of it wrote a local folder "s3:"), where prepare_dataset refuses."""
    return join_uri(output_uri(storage_path), "datasets")


def prepare_dataset(cfg: DataConfig, work_dir: str | Path) -> Path | str:
    """Return the Parquet store to train on (a folder, or an s3:// / gs:// URI as given: the workers read it
    through pyarrow), converting the pkl files or writing the demo data under `work_dir`.

    Runs on the driver. A prepared store is reused (a resumed run, or Tune trials sharing the data); it is
    built in a temporary folder and renamed into place, so concurrent trials never see a half-written one."""
    if cfg.path:
        return dataset_location(cfg.path)
    if is_remote(work_dir):
        # the converters write local files and rename a folder into place, which an object store cannot do
        written = "the converted data.train_pkl" if cfg.train_pkl else "the built-in demo data"
        raise ConfigError(f"{written} would be written under {work_dir}, on object storage, but it is prepared as "
                          f"local files: set {STORAGE_ENV} (or run.storage_path) to a local folder (on a cluster "
                          "one every node mounts, e.g. /mnt/shared/runs), or set data.path to a built Parquet "
                          "dataset (a folder, or an s3:// / gs:// URI)")
    work_dir = Path(work_dir)
    if cfg.train_pkl:
        files = [p for p in (cfg.train_pkl, cfg.val_pkl, cfg.test_pkl) if p]
        stamps = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) if os.path.exists(p) else p for p in files]
        # a changed pickle (same path, new content) gets a new conversion
        key = hashlib.sha1(json.dumps([stamps, cfg.train_split, cfg.val_split, cfg.test_split, cfg.label_names,
                                       cfg.nan_policy]).encode()).hexdigest()[:10]
        return _build_once(work_dir / f"pkl_{Path(cfg.train_pkl).stem}_{key}",
                           lambda out: _pkl_files_to_parquet(cfg, out))
    from recognizer_core.skeleton.demo_data import announce_demo_dataset, write_demo_dataset

    def write(out: Path) -> None:
        log.warning("no data.path / data.train_pkl: training on the built-in SYNTHETIC %s demo data (%d clips)",
                    cfg.demo_task, cfg.demo_num_clips)
        # announced once renamed into place: `out` is the temporary folder, gone once this returns
        write_demo_dataset(cfg.demo_task, out, num_clips=cfg.demo_num_clips, seed=cfg.demo_seed, announce=False)

    return _build_once(work_dir / f"demo_{cfg.demo_task}_{cfg.demo_num_clips}_seed{cfg.demo_seed}", write,
                       on_built=lambda out: announce_demo_dataset(out, cfg.demo_task, cfg.demo_num_clips,
                                                                  cfg.demo_seed))


def dataset_location(path: str) -> Path | str:
    """data.path resolved on the driver: a URI as given; a relative folder that is not in the working directory
    is looked for where the jobs write relative outputs (build_dataset --output, `storage.output_uri`), as
    build_dataset looks for its poses: on a cluster the dataset a job built is there, not in the package."""
    if is_remote(path):
        if not (exists(join_uri(path, "_dataset.json")) or exists(join_uri(path, "part-00000.parquet"))):
            raise SkeletonDataError(f"data.path={path!r}: no skeleton dataset there (no _dataset.json)")
        return path
    local = Path(input_path(path)).expanduser()
    if not local.is_dir():
        raise SkeletonDataError(f"data.path={path!r}: skeleton dataset folder not found")
    return local


def _build_once(out: Path, build: Callable[[Path], None],
                on_built: Callable[[Path], None] | None = None) -> Path:
    """`build` writes a temporary folder renamed to `out`; `on_built(out)` runs once this process's copy is in
    place (not when `out` already existed or another process's copy won)."""
    if (out / "_dataset.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
    try:
        build(tmp)
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first: use its copy
            if not (out / "_dataset.json").exists():
                raise
        else:
            if on_built is not None:
                on_built(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _pkl_files_to_parquet(cfg: DataConfig, out: Path) -> None:
    """One store from train/val/test pkl files. A file whose `split` mapping has the split name contributes
    those clips; a file without it that serves only this role (the guide's separate train.pkl / val.pkl /
    test.pkl) contributes all its clips."""
    from recognizer_core.skeleton.mmaction_pkl import read_mmaction_pkl
    from recognizer_core.skeleton.store import write_dataset

    roles = [(cfg.train_pkl, cfg.train_split), (cfg.val_pkl or cfg.train_pkl, cfg.val_split),
             (cfg.test_pkl or cfg.val_pkl or cfg.train_pkl, cfg.test_split)]
    # the test role counts only when test_pkl is given (by default it reuses val_pkl, as mmaction2 configs do)
    role_count = {p: sum(1 for q, _ in (roles if cfg.test_pkl else roles[:2]) if q == p) for p, _ in roles}
    loaded: dict[str, Any] = {}
    clips: list[SkeletonClip] = []
    seen: set[str] = set()
    for role, (path, split) in enumerate(roles):
        if path not in loaded:
            loaded[path] = read_mmaction_pkl(path, cfg.label_names, nan_policy=cfg.nan_policy)
        pose = loaded[path]
        if pose.split_map and split in pose.split_map:
            wanted = set(pose.split_map[split])
            chosen = [c for c in pose.clips if c.clip_id in wanted]
        elif role_count[path] == 1 and not (role == 2 and not cfg.test_pkl and pose.split_map):
            chosen = list(pose.clips)  # the defaulted test role takes a whole file only when it is a bare list
        else:
            if split == cfg.test_split:
                continue  # no test split is fine: the test job then has nothing to do
            raise SkeletonDataError(f"{path}: no split {split!r} in its split mapping "
                                    f"(splits: {sorted(pose.split_map or {})}); set data.{_role(cfg, split)}_split "
                                    f"or give a separate data.{_role(cfg, split)}_pkl")
        for c in chosen:
            clip_id = c.clip_id if c.clip_id not in seen else f"{c.clip_id}@{split}"
            seen.add(clip_id)
            clips.append(replace(c, clip_id=clip_id, split=split))
    if not clips:
        raise SkeletonDataError(f"{cfg.train_pkl}: no clips in splits {[s for _, s in roles]}")
    write_dataset(clips, out, label_names=cfg.label_names, overwrite=True, nan_policy=cfg.nan_policy,
                  num_joints=None)


def _role(cfg: DataConfig, split: str) -> str:
    return "train" if split == cfg.train_split else "val" if split == cfg.val_split else "test"
