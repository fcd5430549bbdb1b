"""Stage 3, building a skeleton dataset: per-video skeletons -> windows, labels, splits -> Parquet dataset.

Reads the videos finished by rayjobs/extract_poses.py (its done.jsonl), draws splits per source video
(given by the folder layout / CSV, or by ratio, stratified by label), cuts windows in parallel tasks and
streams them into the skeleton store (`part-*.parquet` + `_dataset.json`); with write_pkl also one
mmaction2 PoseDataset pickle per split (`<split>.pkl` + label map), as the training guide's stage 3 did.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from recognizer_core import storage
from recognizer_core.config import ConfigError
from recognizer_core.dataset.config import DatasetBuildConfig
from recognizer_core.dataset.windows import assign_splits, make_windows
from recognizer_core.extract.manifest import ExtractionManifest
from recognizer_core.extract.clip_files import read_clip_file
from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.mmaction_pkl import parquet_to_pkl
from recognizer_core.skeleton.store import SkeletonDataset, write_dataset
from recognizer_core.skeleton.store_rows import clips_from_batch, clips_to_table


def video_windows(path: str, split: str, label: int, cfg: DatasetBuildConfig) -> list[SkeletonClip]:
    clip = read_clip_file(path)
    clip.split, clip.label = split, label
    w = cfg.window
    return make_windows(clip, w.clip_len, w.stride, w.num_person, w.min_frames, w.min_person_frames)


def _window_batch(batch: dict, cfg: DatasetBuildConfig) -> pa.Table:
    clips = []
    for path, split, label in zip(batch["path"], batch["split"], batch["label"]):
        clips.extend(video_windows(str(path), str(split), int(label), cfg))
    return clips_to_table(clips)


def plan_videos(cfg: DatasetBuildConfig) -> tuple[list[dict], list[str], int]:
    """(jobs: path/split/label per finished video, label names, videos skipped for having no label)."""
    poses = storage.to_uri(cfg.poses)   # resolved once here: the window tasks may run on other nodes
    records = ExtractionManifest(poses).done_records()
    if not records:
        raise ConfigError(f"poses: {poses} has no finished videos (run rayjobs/extract_poses.py first)")
    names = list(cfg.label_names)
    labels_json = storage.read_text(storage.join_uri(poses, "labels.json"))
    if not names and labels_json:
        names = json.loads(labels_json).get("label_names", [])
    labelled = [r for r in records if r.get("label_name")]
    missing = sorted({r["label_name"] for r in labelled} - set(names))
    if missing:
        raise ConfigError(f"label_names {names} lacks labels of extracted videos: {missing}")
    splits = assign_splits([(r["video_id"], r["label_name"], r.get("split", "")) for r in labelled],
                           cfg.split.ratios, cfg.split.seed, cfg.split.mode)
    jobs = [{"path": storage.join_uri(poses, r["output"]), "split": splits[r["video_id"]],
             "label": names.index(r["label_name"])} for r in sorted(labelled, key=lambda r: r["video_id"])]
    return jobs, names, len(records) - len(labelled)


def iter_windows(cfg: DatasetBuildConfig, jobs: list[dict]) -> Iterator[SkeletonClip]:
    if not cfg.use_ray:
        for job in jobs:
            yield from video_windows(job["path"], job["split"], job["label"], cfg)
        return
    import ray   # started by the caller (rayjobs/build_dataset.py): recognizer_core never starts Ray

    ds = ray.data.from_items(jobs, override_num_blocks=max(1, min(len(jobs), 200)))
    ds = ds.map_batches(_window_batch, fn_kwargs={"cfg": cfg}, batch_format="numpy", batch_size=8,
                        num_cpus=cfg.num_cpus_per_task)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from clips_from_batch(batch, copy=True)


def resolve_paths(cfg: DatasetBuildConfig) -> DatasetBuildConfig:
    """Relative paths resolved once, on the driver: the window tasks may run on other nodes."""
    # Outputs never go inside `ray job submit`'s package (Ray deletes it); the poses, a relative path that is not
    # in the working directory, are where extraction put them (the same storage root).
    poses = cfg.poses if storage.is_remote(cfg.poses) or os.path.exists(cfg.poses) else storage.output_uri(cfg.poses)
    return cfg.model_copy(update={"poses": storage.to_uri(poses), "output": storage.output_uri(cfg.output),
                                  "pkl_dir": storage.output_uri(cfg.pkl_dir) if cfg.pkl_dir else ""})


def run_build(cfg: DatasetBuildConfig, plan: tuple[list[dict], list[str], int] | None = None) -> dict:
    """Stage 3 (Ray started when cfg.use_ray); `plan` = plan_videos(cfg), made before Ray starts by the job.
    Returns (and writes) the build summary."""
    cfg = resolve_paths(cfg)
    jobs, names, unlabelled = plan or plan_videos(cfg)
    remote = storage.is_remote(cfg.output)
    if remote and not cfg.overwrite and storage.exists(storage.join_uri(cfg.output, "_dataset.json")):
        raise ConfigError(f"output: {cfg.output} already holds a skeleton dataset (set overwrite=true)")
    # The store writer works in a local folder (staged files renamed into place): an object-store output is
    # built in a staging folder on the driver and uploaded once complete, _dataset.json last, so a reader never
    # opens a half-uploaded dataset.
    with tempfile.TemporaryDirectory(prefix="recognizer_dataset_") if remote else nullcontext(cfg.output) as local:
        # grouped by split within each file: _dataset.json then lists each split's row ranges, and a training
        # start reads no per-clip index
        out = write_dataset(iter_windows(cfg, jobs), local, names, rows_per_file=cfg.rows_per_file,
                            overwrite=cfg.overwrite, group_by_split=True,
                            metadata={"source": "rayjobs/build_dataset.py", "poses": str(cfg.poses),
                                      "window": cfg.window.model_dump(), "split": cfg.split.model_dump()})
        ds = SkeletonDataset(out)
        index = ds.index(columns=["label", "split", "source_video"])
        summary = {"output": str(cfg.output), "videos": len(jobs), "unlabelled_videos_skipped": unlabelled,
                   "clips": len(ds), "splits": ds.splits(), "label_names": names,
                   "clips_per_label": {names[k]: v for k, v in sorted(Counter(index["label"].to_pylist()).items())}}
        if cfg.write_pkl:
            pkl_remote = storage.is_remote(cfg.pkl_dir)  # written in a local folder, then uploaded
            pkl_dir = Path(out) / "mmaction_pkl" if not cfg.pkl_dir else \
                Path(tempfile.mkdtemp(prefix="recognizer_pkl_")) if pkl_remote else Path(cfg.pkl_dir)
            pkls = [parquet_to_pkl(out, pkl_dir / f"{split}.pkl", split) for split in ds.splits()]
            if pkl_remote:
                storage.copy_tree(str(pkl_dir), cfg.pkl_dir)
                shutil.rmtree(pkl_dir, ignore_errors=True)
            summary["pkl"] = [storage.join_uri(cfg.pkl_dir, p.name) if pkl_remote else
                              storage.join_uri(cfg.output, "mmaction_pkl", p.name) if remote and not cfg.pkl_dir
                              else str(p) for p in pkls]
        if remote:
            info = Path(out) / "_dataset.json"
            info_bytes = info.read_bytes()
            info.unlink()
            # the old dataset's json goes first: while the new files upload over the old ones, it would describe
            # them with the old row counts and split ranges (wrong clips, val clips read as train, no error)
            storage.remove(storage.join_uri(cfg.output, "_dataset.json"))
            storage.copy_tree(str(out), cfg.output)
            storage.write_bytes(storage.join_uri(cfg.output, "_dataset.json"), info_bytes)
    storage.write_text(storage.join_uri(cfg.output, "build_summary.json"), json.dumps(summary, indent=1))
    return summary
