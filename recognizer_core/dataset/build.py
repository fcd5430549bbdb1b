"""Stage 3, building a skeleton dataset: per-video skeletons -> windows, labels, splits -> Parquet dataset.

Reads the videos finished by rayjobs/extract_poses.py: one record per video of its sources' latest listings
(`listings/*.jsonl`), at the video's current version, with the listing's label and split (manifest.current_done);
draws splits per source video (given by the folder layout / CSV, or by ratio, stratified by label), cuts windows
in parallel tasks and streams them into the skeleton store (`part-*.parquet` + `_dataset.json`); with write_pkl
also one mmaction2 PoseDataset pickle per split (`<split>.pkl` + label map), as the training guide's stage 3 did.
A bad clip file skips its video (logged and listed in build_summary.json); one never ends a long build.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import tempfile
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from recognizer_core import storage
from recognizer_core.config import ConfigError
from recognizer_core.dataset.config import DatasetBuildConfig
from recognizer_core.dataset.windows import SPLITS, assign_splits, make_windows, missing_labels
from recognizer_core.extract.manifest import ExtractionManifest
from recognizer_core.extract.clip_files import read_clip_file
from recognizer_core.names import nfc
from recognizer_core.skeleton.clip import SkeletonClip, SkeletonDataError
from recognizer_core.skeleton.mmaction_pkl import parquet_to_pkl
from recognizer_core.skeleton.store import SkeletonDataset, write_dataset
from recognizer_core.skeleton.store_rows import clips_from_batch, clips_to_table
from recognizer_core.skeleton.store_write import WRITING_MARKER

log = logging.getLogger(__name__)
PKL_DIR = "mmaction_pkl"   # the default pkl folder, inside the dataset


# What a damaged or foreign clip file raises while read, checked and cut (pyarrow's errors: ArrowInvalid is a
# ValueError, a vanished file an OSError). One such file skips its video; the build goes on without it.
BAD_CLIP_ERRORS = (ValueError, OSError, TypeError, KeyError, IndexError, pa.ArrowException)
_NAN_HINT = "; use nan_policy='zero'"   # the store's advice; build_dataset has no nan_policy


def video_windows(path: str, split: str, label: int, label_name: str, cfg: DatasetBuildConfig) -> list[SkeletonClip]:
    """The windows of one video's clip file. A bad file raises here, per video (the store would otherwise find a
    NaN only when the window reaches the writer, with no file named)."""
    clip = read_clip_file(path)
    # the clip file keeps the label it was extracted with; a label fixed since (CSV) comes from the listing
    clip.split, clip.label, clip.label_name = split, label, label_name
    try:
        clip.validate(path, num_joints=None)   # as write_dataset checks each window: any V
    except SkeletonDataError as err:
        text = str(err)
        if _NAN_HINT not in text:
            raise
        raise SkeletonDataError(text.split(_NAN_HINT)[0] + "; re-extract this video to build it") from None
    w = cfg.window
    return make_windows(clip, w.clip_len, w.stride, w.num_person, w.min_frames, w.min_person_frames, w.cover_end)


def _reason(err: BaseException, path: str) -> str:
    """One line for `skipped: <path>: <reason>`: the error's first line, without a repeat of the path (or the
    '<batch>' that stands for it in store_rows' messages)."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    for prefix in (f"{path}: ", "<batch>: "):
        text = text[len(prefix):] if text.startswith(prefix) else text
    return text


def windows_or_skip(job: dict, cfg: DatasetBuildConfig) -> tuple[list[SkeletonClip], str]:
    """(windows, "") or ([], reason): one bad clip file never ends the build. The catch is here, inside what each
    Ray task runs, so a bad file comes back as data, never as Ray's wrapped exception."""
    path, split, label, name = str(job["path"]), str(job["split"]), int(job["label"]), str(job["label_name"])
    try:
        return video_windows(path, split, label, name, cfg), ""
    except BAD_CLIP_ERRORS as err:
        return [], _reason(err, path)


# Two extra columns on the window tasks' output: a skipped video is one row with its path and reason, the clip
# columns null (Ray Data wants one schema for every block, so the skips travel with the windows).
SKIP_PATH, SKIP_REASON = "_skipped_path", "_skipped_reason"


def _window_batch(batch: dict, cfg: DatasetBuildConfig) -> pa.Table:
    clips, skips = [], []
    for job in zip(batch["path"], batch["split"], batch["label"], batch["label_name"]):
        windows, reason = windows_or_skip(dict(zip(("path", "split", "label", "label_name"), job)), cfg)
        clips.extend(windows)
        if reason:
            skips.append((str(job[0]), reason))
    table = clips_to_table(clips)
    table = table.append_column(SKIP_PATH, pa.nulls(len(clips), pa.string())) \
                 .append_column(SKIP_REASON, pa.nulls(len(clips), pa.string()))
    if not skips:
        return table
    rows = {f.name: pa.nulls(len(skips), f.type) for f in table.schema}
    rows[SKIP_PATH] = pa.array([p for p, _ in skips], pa.string())
    rows[SKIP_REASON] = pa.array([r for _, r in skips], pa.string())
    return pa.concat_tables([table, pa.table(rows, schema=table.schema)])


def _split_skips(batch: pa.Table) -> tuple[pa.Table, list[tuple[str, str]]]:
    """A window task's output -> (the windows' rows, [(path, reason)] of its skipped videos)."""
    reasons = batch.column(SKIP_REASON)
    skips: list[tuple[str, str]] = []
    if reasons.null_count < len(reasons):   # copied by the filter only where a video was skipped
        bad = pc.is_valid(reasons)
        skipped = batch.filter(bad)
        skips = list(zip(skipped.column(SKIP_PATH).to_pylist(), skipped.column(SKIP_REASON).to_pylist()))
        batch = batch.filter(pc.invert(bad))
    return batch.drop_columns([SKIP_PATH, SKIP_REASON]), skips


def plan_videos(cfg: DatasetBuildConfig) -> tuple[list[dict], list[str], int]:
    """(jobs: path/split/label/label_name per current finished video, label names, videos skipped for having no
    label). Old records (an edited or moved video's earlier version, a label since fixed) are left out."""
    poses = storage.to_uri(cfg.poses)   # resolved once here: the window tasks may run on other nodes
    records, stale = ExtractionManifest(poses).current_done()
    if stale:
        log.info("%s: %d finished record(s) left out: earlier versions of edited videos or videos no longer listed",
                 poses, stale)
    if not records:
        raise ConfigError(f"poses: {poses} has no finished videos (run rayjobs/extract_poses.py first)")
    names = list(cfg.label_names)
    labels_json = storage.read_text(storage.join_uri(poses, "labels.json"))
    if not names and labels_json:
        names = json.loads(labels_json).get("label_names", [])
    # NFC: extraction writes class names in NFC; records and a labels.json written from a Mac's (NFD) folder names
    # before it did are the same classes (else: "lacks labels ['싸움'] ... ['싸움']", two lists that look equal)
    names = list(dict.fromkeys(nfc(n) for n in names))
    labelled = [{**r, "label_name": nfc(r["label_name"])} for r in records if r.get("label_name")]
    missing = sorted({r["label_name"] for r in labelled} - set(names))
    if missing:
        raise ConfigError(f"label_names {names} lacks labels of extracted videos: {missing}")
    splits = assign_splits([(r["video_id"], r["label_name"], r.get("split", "")) for r in labelled],
                           cfg.split.ratios, cfg.split.seed, cfg.split.mode)
    jobs = [{"path": storage.join_uri(poses, r["output"]), "split": splits[r["video_id"]],
             "label": names.index(r["label_name"]), "label_name": r["label_name"],
             "drawn": not (r.get("split") and cfg.split.mode != "ratio")}     # split drawn by ratio
            for r in sorted(labelled, key=lambda r: r["video_id"])]
    return jobs, names, len(records) - len(labelled)


def iter_windows(cfg: DatasetBuildConfig, jobs: list[dict],
                 skipped: list[dict] | None = None) -> Iterator[SkeletonClip]:
    """Every video's windows, in job order; a bad clip file is logged (`skipped: <path>: <reason>`), added to
    `skipped` and left out. Every video bad: a ConfigError, raised inside the writer, so the old dataset stays."""
    skipped = [] if skipped is None else skipped
    before = len(skipped)

    def skip(path: str, reason: str) -> None:
        log.warning("skipped: %s: %s", path, reason)
        skipped.append({"path": path, "reason": reason})

    if not cfg.use_ray:
        for job in jobs:
            windows, reason = windows_or_skip(job, cfg)
            if reason:
                skip(str(job["path"]), reason)
            yield from windows
    else:
        import ray   # started by the caller (rayjobs/build_dataset.py): recognizer_core never starts Ray

        # Windows come out in the jobs' (video id) order, as without Ray: Ray Data otherwise hands blocks back as
        # tasks finish, so two builds of the same videos wrote their rows (part files, row groups) in different
        # orders. The dataset copies the context when it is created, and its execution reads that copy.
        # Set for this dataset only: the context is the process's, and a later Ray Data job of the same driver
        # (extraction, recognize) would have run in order too (held blocks: a driver waiting on its first one).
        options = ray.data.DataContext.get_current().execution_options
        was, options.preserve_order = options.preserve_order, True
        try:
            ds = ray.data.from_items(jobs, override_num_blocks=max(1, min(len(jobs), 200)))
        finally:
            options.preserve_order = was
        ds = ds.map_batches(_window_batch, fn_kwargs={"cfg": cfg}, batch_format="numpy", batch_size=8,
                            num_cpus=cfg.num_cpus_per_task)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            batch, skips = _split_skips(batch)
            for path, reason in skips:
                skip(path, reason)
            yield from clips_from_batch(batch, copy=True)
    if jobs and len(skipped) - before == len(jobs):
        first = skipped[before]
        raise ConfigError(f"poses: {cfg.poses}: all {len(jobs)} videos' clip files are bad, nothing to build "
                          f"(first: {first['path']}: {first['reason']})")


def resolve_paths(cfg: DatasetBuildConfig) -> DatasetBuildConfig:
    """Relative paths resolved once, on the driver: the window tasks may run on other nodes."""
    # Outputs never go inside `ray job submit`'s package (Ray deletes it); the poses, a relative path that is not
    # in the working directory, are where extraction put them (the same storage root).
    poses = cfg.poses if storage.is_remote(cfg.poses) or os.path.exists(cfg.poses) else storage.output_uri(cfg.poses)
    return cfg.model_copy(update={"poses": storage.to_uri(poses), "output": storage.output_uri(cfg.output),
                                  "pkl_dir": storage.output_uri(cfg.pkl_dir) if cfg.pkl_dir else ""})


def _list_files(uri: str) -> list[str]:
    fs, root = storage.filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return [storage.join_uri(uri, posixpath.basename(i.path)) for i in infos if i.type == pafs.FileType.File]


def remove_old_pkls(cfg: DatasetBuildConfig) -> list[str]:
    """Remove the pkls (and label maps) of the previous build: those its build_summary.json lists, and any in the
    dataset's own `mmaction_pkl` folder. A rebuild without a test split otherwise left the old test.pkl there,
    describing clips of a dataset that no longer exists. Returns what was removed."""
    try:
        old = json.loads(storage.read_text(storage.join_uri(cfg.output, "build_summary.json")) or "{}")
    except ValueError:
        old = {}   # an unreadable summary lists nothing; the dataset's own folder is still cleared
    listed = old.get("pkl", []) if isinstance(old, dict) and isinstance(old.get("pkl"), list) else []
    pkls = {p for p in listed if isinstance(p, str) and p.endswith(".pkl")}
    pkls |= {p for p in _list_files(storage.join_uri(cfg.output, PKL_DIR)) if p.endswith(".pkl")}
    removed = []
    for pkl in sorted(pkls):
        for path in (pkl, pkl[: -len(".pkl")] + ".label_map.txt"):
            if storage.exists(path):
                storage.remove(path)
                removed.append(path)
    return removed


def _warn_missing(jobs: list[dict], index: pa.Table, names: list[str], cfg: DatasetBuildConfig) -> dict:
    """{split: [classes with no clip in it]} over the dataset's splits, the ones videos were given, and the ratio
    splits (> 0) where some split was drawn; warned in one line (training needs every class in val to score it)."""
    by_split: dict[str, set[str]] = {}
    for label, split in zip(index["label"].to_pylist(), index["split"].to_pylist()):
        by_split.setdefault(split, set()).add(names[label])
    check = set(by_split) | {j["split"] for j in jobs}
    if any(j["drawn"] for j in jobs):
        check |= {s for s, r in zip(SPLITS, cfg.split.ratios) if r > 0}
    missing = missing_labels(by_split, sorted(check))
    if missing:
        log.warning("classes missing from splits: %s (by ratio, a class needs >= 3 videos for one in each of "
                    "train, val and test)", "; ".join(f"{s}: {', '.join(v)}" for s, v in missing.items()))
    return missing


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
        skipped: list[dict] = []   # bad clip files: {path, reason}
        out = write_dataset(iter_windows(cfg, jobs, skipped), local, names, rows_per_file=cfg.rows_per_file,
                            overwrite=cfg.overwrite, group_by_split=True,
                            metadata={"source": "rayjobs/build_dataset.py", "poses": str(cfg.poses),
                                      "window": cfg.window.model_dump(), "split": cfg.split.model_dump()})
        ds = SkeletonDataset(out)
        index = ds.index(columns=["label", "split", "source_video"])
        if skipped:
            log.warning("%d of %d videos skipped for a bad clip file (build_summary.json: bad_clip_files_skipped)",
                        len(skipped), len(jobs))
        summary = {"output": str(cfg.output), "videos": len(jobs), "unlabelled_videos_skipped": unlabelled,
                   "bad_clip_files_skipped": skipped,
                   "clips": len(ds), "splits": ds.splits(), "label_names": names,
                   "clips_per_label": {names[k]: v for k, v in sorted(Counter(index["label"].to_pylist()).items())},
                   "classes_missing_from_splits": _warn_missing(jobs, index, names, cfg)}
        remove_old_pkls(cfg)   # the new dataset is in place (or staged): the old one's pkls go
        if cfg.write_pkl:
            pkl_remote = storage.is_remote(cfg.pkl_dir)  # written in a local folder, then uploaded
            pkl_dir = Path(out) / PKL_DIR if not cfg.pkl_dir else \
                Path(tempfile.mkdtemp(prefix="recognizer_pkl_")) if pkl_remote else Path(cfg.pkl_dir)
            # one bare list per split: the guide's config reads ann_file_train/val/test without `split=`, and
            # mmaction2's PoseDataset then iterates the file's top level (a dict's keys: a TypeError)
            pkls = [parquet_to_pkl(out, pkl_dir / f"{split}.pkl", split, layout="list") for split in ds.splits()]
            if pkl_remote:
                storage.copy_tree(str(pkl_dir), cfg.pkl_dir)
                shutil.rmtree(pkl_dir, ignore_errors=True)
            summary["pkl"] = [storage.join_uri(cfg.pkl_dir, p.name) if pkl_remote else
                              storage.join_uri(cfg.output, PKL_DIR, p.name) if remote and not cfg.pkl_dir
                              else str(p) for p in pkls]
        if remote:
            info = Path(out) / "_dataset.json"
            info_bytes = info.read_bytes()
            info.unlink()
            # the old dataset's json goes first: while the new files upload over the old ones, it would describe
            # them with the old row counts and split ranges (wrong clips, val clips read as train, no error). The
            # marker, until the new json lands, keeps readers from opening the json-less folder as a plain folder
            # of part files (part old, part new), here and after an interrupted upload
            marker = storage.join_uri(cfg.output, WRITING_MARKER)
            storage.write_text(marker, "uploading")
            storage.remove(storage.join_uri(cfg.output, "_dataset.json"))
            storage.copy_tree(str(out), cfg.output)
            storage.write_bytes(storage.join_uri(cfg.output, "_dataset.json"), info_bytes)
            storage.remove(marker)
    storage.write_text(storage.join_uri(cfg.output, "build_summary.json"), json.dumps(summary, indent=1))
    return summary
