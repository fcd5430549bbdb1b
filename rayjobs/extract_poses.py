"""Stage 1 + 2 as a Ray Data job: videos -> RTMO poses -> tracked skeletons, one Parquet file per video.

    python rayjobs/extract_poses.py --config configs/extraction.yaml \
        --set source.input=/data/RWF-2000 --set model.onnx.model_path=end2end.onnx --set output=outputs/poses

Decoding runs in CPU tasks (a generator per shard, frames streamed), RTMO in an actor pool (the model loaded
once per actor, `num_gpus_per_actor` each), tracking and writing on the driver as each video completes.
Re-running the same command skips finished videos (manifest keyed by path + size + mtime); a killed job loses
only the videos in flight. Bad videos are recorded in failures.jsonl, videos without persons in
empty_clips.jsonl; the job goes on and ends with a summary (summary.json, and one JSON line on stdout).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognizer_core.config import add_config_args, config_from_args, dump_config  # noqa: E402
from recognizer_core.pose.config import ExtractionConfig  # noqa: E402
from recognizer_core.pose.manifest import DONE, EMPTY, FAILED, ExtractionManifest  # noqa: E402
from recognizer_core.pose.pipeline import (PoseInference, VideoAssembler, decode_shard,  # noqa: E402
                                           make_video_clip, plan_video, write_clip_file)
from recognizer_core.pose.sources import label_index, list_videos  # noqa: E402
from recognizer_core.pose.tracking import track_poses  # noqa: E402

CLIPS_DIR = "clips"


def select_videos(cfg: ExtractionConfig, manifest: ExtractionManifest):
    """(all videos, label names, videos still to do, counts of skipped by status)."""
    videos = list_videos(cfg.source)
    names = label_index([v for v in videos if v.label_name], cfg.source.label_names)
    skipped = {DONE: 0, EMPTY: 0, FAILED: 0}
    todo = []
    for v in videos:
        status = manifest.status(v.key)
        if status is None or (status == FAILED and cfg.retry_failed):
            todo.append(v)
        else:
            skipped[status] += 1
    return videos, names, todo, skipped


def build_pipeline(cfg: ExtractionConfig, items: list[dict]):
    """The Ray Data plan: plan shards -> decode (CPU tasks) -> RTMO (actor pool)."""
    import ray

    input_size = tuple(cfg.model.model_input_size)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.flat_map(plan_video, fn_kwargs={"decode": cfg.decode}, num_cpus=cfg.ray.num_cpus_per_decode_task)
    # Different remote args (memory) stop Ray Data from fusing decoding into the inference actors, where
    # it would run serially with the model instead of in parallel CPU tasks.
    ds = ds.map_batches(decode_shard, batch_size=1, batch_format="numpy",
                        fn_kwargs={"decode": cfg.decode, "input_size": input_size},
                        num_cpus=cfg.ray.num_cpus_per_decode_task,
                        memory=cfg.ray.decode_task_memory_mb * 1024 * 1024)
    size = cfg.ray.num_actors
    pool = (ray.data.ActorPoolStrategy(size=size) if not cfg.ray.max_actors
            else ray.data.ActorPoolStrategy(min_size=size, max_size=max(size, cfg.ray.max_actors)))
    return ds.map_batches(PoseInference, fn_constructor_kwargs={"model_cfg": cfg.model}, compute=pool,
                          batch_size=cfg.model.batch_size, batch_format="numpy",
                          num_gpus=cfg.ray.num_gpus_per_actor or None, num_cpus=cfg.ray.num_cpus_per_actor)


def finish_video(cfg: ExtractionConfig, manifest: ExtractionManifest, video, asm: VideoAssembler,
                 label_names: list[str]) -> str:
    """Track, write and record one complete video; returns the manifest status."""
    base = {"uri": video.uri, "rel_path": video.rel_path, "video_id": video.video_id,
            "label_name": video.label_name, "split": video.split}
    if asm.errors:
        manifest.record(FAILED, video.key, **base, reason=asm.errors[0])
        return FAILED
    inds, frames = asm.ordered()
    if not frames:
        manifest.record(FAILED, video.key, **base, reason="no decodable frames")
        return FAILED
    tracked = track_poses(inds, frames, cfg.tracking)
    num_det = sum(len(f) for f in frames)
    if tracked.num_persons == 0:
        reason = ("no person detected" if num_det == 0 else
                  f"no track passed the filters ({num_det} detections in {len(frames)} frames)")
        manifest.record(EMPTY, video.key, **base, reason=reason, frames=len(frames))
        return EMPTY
    label = label_names.index(video.label_name) if video.label_name in label_names else 0
    clip = make_video_clip(tracked, clip_id=video.video_id, label=label, label_name=video.label_name,
                           split=video.split, source_video=video.uri, image_hw=asm.image_hw, fps=asm.fps,
                           stride=asm.stride, extra={"rel_path": video.rel_path,
                                                             "decoded_by_time": (asm.num_shards or 1) > 1})
    rel = f"{CLIPS_DIR}/{video.video_id}.parquet"
    write_clip_file(clip, manifest.dir / rel)
    manifest.record(DONE, video.key, **base, output=rel, frames=len(frames), persons=tracked.num_persons)
    return DONE


def run_extraction(cfg: ExtractionConfig, verbose: bool = True) -> dict:
    """Run stage 1 + 2 for every video not yet done; returns (and writes) the summary."""
    import ray

    from recognizer_core.ray_runtime import start_ray_or_exit

    out = Path(cfg.output)
    manifest = ExtractionManifest(out)
    videos, label_names, todo, skipped = select_videos(cfg, manifest)
    dump_config(cfg, out / "extraction_config.yaml")
    (out / "labels.json").write_text(json.dumps({"label_names": label_names}))
    t0 = time.time()
    counts = {DONE: 0, EMPTY: 0, FAILED: 0}
    frames_done, provider = 0, ""
    if todo:
        start_ray_or_exit("extract", cfg.ray.address, dashboard=False, log_to_driver=verbose)
        ray.data.DataContext.get_current().enable_progress_bars = verbose
        by_id = {v.video_id: v for v in todo}
        items = [{"video_id": v.video_id, "uri": v.uri, "size": v.size} for v in todo]
        assemblers: dict[str, VideoAssembler] = {}
        for batch in build_pipeline(cfg, items).iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["video_id"])):
                row = {k: v[i] for k, v in batch.items()}
                vid = str(row["video_id"])
                asm = assemblers.setdefault(vid, VideoAssembler(vid))
                asm.add(row)
                provider = provider or str(row["provider"])
                if asm.complete:
                    status = finish_video(cfg, manifest, by_id[vid], asm, label_names)
                    counts[status] += 1
                    frames_done += len(asm.frames)
                    del assemblers[vid]
                    if verbose:
                        print(f"[extract] {status:6s} {by_id[vid].rel_path}", flush=True)
        for vid, asm in assemblers.items():  # should not happen: a shard lost its end marker
            manifest.record(FAILED, by_id[vid].key, uri=by_id[vid].uri, rel_path=by_id[vid].rel_path,
                            video_id=vid, reason="incomplete: not every shard reported its end")
            counts[FAILED] += 1
    elapsed = time.time() - t0
    summary = {
        "videos": len(videos), "processed": len(todo), "done": counts[DONE], "empty": counts[EMPTY],
        "failed": counts[FAILED], "skipped_done": skipped[DONE], "skipped_empty": skipped[EMPTY],
        "skipped_failed": skipped[FAILED], "frames": frames_done, "seconds": round(elapsed, 2),
        "frames_per_s": round(frames_done / elapsed, 1) if elapsed > 0 and frames_done else 0.0,
        "provider": provider, "output": str(out), "label_names": label_names,
        "failures": [{"rel_path": r.get("rel_path"), "reason": r.get("reason")}
                     for r in manifest.records[FAILED].values()],
    }
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser, ExtractionConfig, default_config=None)
    parser.add_argument("--input", help="shortcut for --set source.input=...")
    parser.add_argument("--output", help="shortcut for --set output=...")
    parser.add_argument("--onnx", help="shortcut for --set model.onnx.model_path=...")
    parser.add_argument("--build-dataset", metavar="DIR", help="after extraction, run stage 3 "
                        "(rayjobs/build_dataset.py defaults) into DIR")
    parser.add_argument("--quiet", action="store_true", help="no per-video lines or progress bars")
    args = parser.parse_args(argv)
    for flag, field in (("input", "source.input"), ("output", "output"), ("onnx", "model.onnx.model_path")):
        if getattr(args, flag):
            args.overrides.append(f"{field}={getattr(args, flag)}")
    cfg = config_from_args(ExtractionConfig, args)
    summary = run_extraction(cfg, verbose=not args.quiet)
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}), flush=True)
    for f in summary["failures"]:
        print(f"[extract] failed: {f['rel_path']}: {f['reason']}", file=sys.stderr)
    if args.build_dataset:
        from build_dataset import run_build
        from recognizer_core.pose.config import DatasetBuildConfig

        print(json.dumps(run_build(DatasetBuildConfig(poses=cfg.output, output=args.build_dataset))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
