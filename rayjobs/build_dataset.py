"""Stage 3 as a Ray Data job: per-video skeletons -> windows, labels, splits -> Parquet skeleton dataset.

    python rayjobs/build_dataset.py --set poses=outputs/poses --set output=outputs/dataset \
        --set window.clip_len=100 --set window.stride=50 --set write_pkl=true

Reads the videos finished by rayjobs/extract_poses.py (its done.jsonl), draws splits per source video
(given by the folder layout / CSV, or by ratio, stratified by label), cuts windows in parallel tasks and
streams them into the skeleton store (`part-*.parquet` + `_dataset.json`); with write_pkl also one
mmaction2 PoseDataset pickle per split (`<split>.pkl` + label map), as the training guide's stage 3 did.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402

from recognizer_core.config import ConfigError, add_config_args, config_from_args  # noqa: E402
from recognizer_core.pose.config import DatasetBuildConfig  # noqa: E402
from recognizer_core.pose.manifest import ExtractionManifest  # noqa: E402
from recognizer_core.pose.pipeline import read_clip_file  # noqa: E402
from recognizer_core.skeleton.clip import SkeletonClip  # noqa: E402
from recognizer_core.skeleton.mmaction_pkl import parquet_to_pkl  # noqa: E402
from recognizer_core.skeleton.store import SkeletonDataset, write_dataset  # noqa: E402
from recognizer_core.skeleton.store_rows import clips_from_batch, clips_to_table  # noqa: E402
from recognizer_core.skeleton.windows import assign_splits, make_windows  # noqa: E402


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
    poses = Path(cfg.poses)
    records = ExtractionManifest(poses).done_records()
    if not records:
        raise ConfigError(f"poses: {poses} has no finished videos (run rayjobs/extract_poses.py first)")
    names = list(cfg.label_names)
    if not names and (poses / "labels.json").exists():
        names = json.loads((poses / "labels.json").read_text()).get("label_names", [])
    labelled = [r for r in records if r.get("label_name")]
    missing = sorted({r["label_name"] for r in labelled} - set(names))
    if missing:
        raise ConfigError(f"label_names {names} lacks labels of extracted videos: {missing}")
    splits = assign_splits([(r["video_id"], r["label_name"], r.get("split", "")) for r in labelled],
                           cfg.split.ratios, cfg.split.seed, cfg.split.mode)
    jobs = [{"path": str(poses / r["output"]), "split": splits[r["video_id"]],
             "label": names.index(r["label_name"])} for r in sorted(labelled, key=lambda r: r["video_id"])]
    return jobs, names, len(records) - len(labelled)


def iter_windows(cfg: DatasetBuildConfig, jobs: list[dict]) -> Iterator[SkeletonClip]:
    if not cfg.use_ray:
        for job in jobs:
            yield from video_windows(job["path"], job["split"], job["label"], cfg)
        return
    import ray

    from recognizer_core.ray_runtime import start_ray_or_exit

    start_ray_or_exit("build_dataset", cfg.ray_address, dashboard=False, log_to_driver=False)
    ds = ray.data.from_items(jobs, override_num_blocks=max(1, min(len(jobs), 200)))
    ds = ds.map_batches(_window_batch, fn_kwargs={"cfg": cfg}, batch_format="numpy", batch_size=8,
                        num_cpus=cfg.num_cpus_per_task)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from clips_from_batch(batch, copy=True)


def run_build(cfg: DatasetBuildConfig) -> dict:
    jobs, names, unlabelled = plan_videos(cfg)
    out = write_dataset(iter_windows(cfg, jobs), cfg.output, names, rows_per_file=cfg.rows_per_file,
                        overwrite=cfg.overwrite,
                        metadata={"source": "rayjobs/build_dataset.py", "poses": str(cfg.poses),
                                  "window": cfg.window.model_dump(), "split": cfg.split.model_dump()})
    ds = SkeletonDataset(out)
    index = ds.index(columns=["label", "split", "source_video"])
    summary = {"output": str(out), "videos": len(jobs), "unlabelled_videos_skipped": unlabelled,
               "clips": len(ds), "splits": ds.splits(), "label_names": names,
               "clips_per_label": {names[k]: v for k, v in sorted(Counter(index["label"].to_pylist()).items())}}
    if cfg.write_pkl:
        pkl_dir = Path(cfg.pkl_dir or Path(cfg.output) / "mmaction_pkl")
        summary["pkl"] = [str(parquet_to_pkl(out, pkl_dir / f"{split}.pkl", split)) for split in ds.splits()]
    (Path(out) / "build_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser, DatasetBuildConfig)
    parser.add_argument("--poses", help="shortcut for --set poses=...")
    parser.add_argument("--output", help="shortcut for --set output=...")
    args = parser.parse_args(argv)
    for flag in ("poses", "output"):
        if getattr(args, flag):
            args.overrides.append(f"{flag}={getattr(args, flag)}")
    print(json.dumps(run_build(config_from_args(DatasetBuildConfig, args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
