"""Batch mode for many videos on Ray Data: decode tasks -> RTMO actor pool -> (driver: tracking) ->
recognizer actor pool -> events per video, resumable.

The first half is the extraction job's own plan (pose/pipeline.py: plan_video, decode_shard, PoseInference,
VideoAssembler, track_poses, make_video_clip), so poses here are exactly what extract_poses.py would store.
Each video, once its frames are all in, is tracked on the driver and handed to a pool of recognizer actors
(the model loaded once per actor); finished videos are written and recorded in the manifest as they return.
A re-run skips videos recorded done (same path, size and mtime) whose events file exists; bad videos are
recorded in failures.jsonl and the job goes on.

Imports of the extraction stage (pose/*) are the ones listed just below, so a rename of that package is a
one-place fix.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from recognizer_core.extract.config import DecodeConfig, PoseModelConfig, SourceConfig
from recognizer_core.track.config import TrackingConfig
from recognizer_core.extract.manifest import DONE, EMPTY, FAILED, ExtractionManifest
from recognizer_core.pose.pipeline import PoseInference, VideoAssembler, decode_shard, make_video_clip, plan_video
from recognizer_core.extract.sources import VideoSource, list_videos
from recognizer_core.track.tracking import track_poses
from recognizer_core.recognize.outputs import safe_name, write_video_outputs
from recognizer_core.recognize.runner import RecognizeConfig, recognize_clip
from recognizer_core.recognize.windows import Window
from recognizer_core.storage import to_uri, write_text


def is_skeleton_input(path: str) -> bool:
    p = Path(path)
    if p.is_file():
        return p.suffix == ".parquet"
    return p.is_dir() and ((p / "clips").is_dir() or (p / "_dataset.json").exists() or any(p.glob("*.parquet")))


def list_inputs(path: str) -> list[VideoSource]:
    """Videos of a folder / URI (RWF-style layouts give labels), a CSV manifest (path,label[,split]) or one file."""
    if path.endswith(".csv"):
        return list_videos(SourceConfig(manifest_csv=path))
    if os.path.isfile(path):
        st = os.stat(path)
        return [VideoSource(os.path.abspath(path), os.path.basename(path), "", "", st.st_size, st.st_mtime_ns)]
    return list_videos(SourceConfig(input=path))


class RecognizerActor:
    """One model copy per actor; returns light results (windows without their arrays)."""

    def __init__(self, model: str, model_config: str | None, spec_json: str, cfg_json: str, threads: int):
        from recognizer_core.recognize.model import load_recognizer
        from recognizer_core.recognize.spec import ModelSpec

        self.spec = ModelSpec.model_validate_json(spec_json)
        self.rec = load_recognizer(model, model_config=model_config, threads=threads, spec=self.spec)
        self.cfg = RecognizeConfig.model_validate_json(cfg_json)

    def recognize(self, key: str, clip):
        res = recognize_clip(self.rec, clip, self.spec, self.cfg)
        res.windows = [Window(w.video, w.kind, w.start_s, w.end_s, w.track_ids, None) for w in res.windows]
        return key, res


def pose_plan(items: list[dict], pose: PoseModelConfig, decode: DecodeConfig, pose_actors: int, cpus: float):
    """The extraction job's Ray Data plan: shards -> decode (CPU tasks) -> RTMO (actor pool)."""
    import ray

    size = tuple(pose.model_input_size)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.flat_map(plan_video, fn_kwargs={"decode": decode}, num_cpus=cpus)
    ds = ds.map_batches(decode_shard, batch_size=1, batch_format="numpy", num_cpus=cpus,
                        fn_kwargs={"decode": decode, "input_size": size}, memory=512 * 1024 * 1024)
    return ds.map_batches(PoseInference, fn_constructor_kwargs={"model_cfg": pose}, batch_size=pose.batch_size,
                          batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pose_actors), num_cpus=cpus)


def run_batch(*, inputs: str, out: str | Path, model: str, model_config: str | None, spec, cfg: RecognizeConfig,
              pose: PoseModelConfig, decode: DecodeConfig = DecodeConfig(), tracking: TrackingConfig = TrackingConfig(),
              pose_actors: int = 1, recognizer_actors: int = 1, threads: int = 1, cpus: float = 0.5,
              verbose: bool = True) -> dict:
    """Recognize every video not yet done; returns the summary (also written as summary.json). `cpus`: CPUs
    reserved per decode task / pose actor / recognizer actor (threads are set separately)."""
    import ray
    from ray.util import ActorPool

    out = Path(out)
    manifest = ExtractionManifest(out)
    videos = list_inputs(inputs)
    todo = [v for v in videos if manifest.status(v.key) is None]
    by_id = {v.video_id: v for v in todo}
    counts = {DONE: 0, EMPTY: 0, FAILED: 0}
    events_by_video: dict[str, list] = {}
    frames, windows, t0 = 0, 0, time.time()
    if todo:
        actor_cls = ray.remote(num_cpus=cpus)(RecognizerActor)
        model = to_uri(model)
        model_config = to_uri(model_config) if model_config else None
        pool = ActorPool([actor_cls.remote(model, model_config, spec.model_dump_json(), cfg.model_dump_json(), threads)
                          for _ in range(recognizer_actors)])
        items = [{"video_id": v.video_id, "uri": v.uri, "size": v.size} for v in todo]
        assemblers: dict[str, VideoAssembler] = {}

        clips: dict = {}  # video id -> tracked clip, kept only when an overlay is asked for

        def record(key, res) -> None:
            nonlocal windows
            v = by_id[key]
            files = write_video_outputs(out, v.rel_path, res.windows, res.probs, res.events, spec, cfg.timeline)
            if key in clips:
                from recognizer_core.recognize.overlay import render_recognition_overlay

                render_recognition_overlay(clips.pop(key), v.uri, res.windows, res.probs, spec,
                                           out / f"{safe_name(v.rel_path)}.overlay.mp4")
            manifest.record(DONE, v.key, uri=v.uri, rel_path=v.rel_path, video_id=v.video_id,
                            output=os.path.basename(files["events_jsonl"]), events=len(res.events),
                            windows=len(res.windows))
            events_by_video[v.rel_path] = res.events
            windows += len(res.windows)
            counts[DONE] += 1
            if verbose:
                print(f"[recognize] {sum(counts.values())}/{len(todo)} done   {v.rel_path}: {len(res.events)} "
                      f"event(s) {[f'{e.label} {e.start_s:.1f}-{e.end_s:.1f}s' for e in res.events]}", flush=True)

        for batch in pose_plan(items, pose, decode, pose_actors, cpus).iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["video_id"])):
                row = {k: val[i] for k, val in batch.items()}
                vid = str(row["video_id"])
                asm = assemblers.setdefault(vid, VideoAssembler(vid))
                asm.add(row)
                if not asm.complete:
                    continue
                del assemblers[vid]
                status = _submit(pool, by_id[vid], asm, tracking, manifest, clips if cfg.overlay else None)
                frames += len(asm.frames)
                if status != DONE:
                    counts[status] += 1
                    if verbose:
                        print(f"[recognize] {sum(counts.values())}/{len(todo)} {status}  {by_id[vid].rel_path}",
                              flush=True)
                while pool.has_next():  # collect what is ready; never block the pose stream
                    try:
                        record(*pool.get_next_unordered(timeout=0))
                    except TimeoutError:
                        break
        for vid in assemblers:  # a shard lost its end marker: record, never crash
            v = by_id[vid]
            manifest.record(FAILED, v.key, uri=v.uri, rel_path=v.rel_path, reason="incomplete decode")
            counts[FAILED] += 1
        while pool.has_next():
            record(*pool.get_next_unordered())
    elapsed = time.time() - t0
    summary = {"videos": len(videos), "processed": len(todo), "done": counts[DONE], "empty": counts[EMPTY],
               "failed": counts[FAILED], "skipped": len(videos) - len(todo), "frames": frames, "windows": windows,
               "seconds": round(elapsed, 2), "frames_per_s": round(frames / elapsed, 1) if frames else 0.0,
               "failures": [{"rel_path": r.get("rel_path"), "reason": r.get("reason")}
                            for r in manifest.records[FAILED].values()]}
    write_text(out / "summary.json", json.dumps(summary, indent=1))
    return {**summary, "events": events_by_video}


def _submit(pool, v: VideoSource, asm: VideoAssembler, tracking: TrackingConfig, manifest, keep=None) -> str:
    base = {"uri": v.uri, "rel_path": v.rel_path, "video_id": v.video_id}
    if asm.errors:
        manifest.record(FAILED, v.key, **base, reason=asm.errors[0])
        return FAILED
    inds, frames = asm.ordered()
    if not frames:
        manifest.record(FAILED, v.key, **base, reason="no decodable frames")
        return FAILED
    tracked = track_poses(inds, frames, tracking)
    if tracked.num_persons == 0:
        manifest.record(EMPTY, v.key, **base, reason="no person tracked", frames=len(frames))
        return EMPTY
    clip = make_video_clip(tracked, clip_id=v.video_id, label=0, label_name="", split="", source_video=v.uri,
                           image_hw=asm.image_hw, fps=asm.fps, stride=asm.stride)
    if keep is not None:
        keep[v.video_id] = clip
    pool.submit(lambda actor, c: actor.recognize.remote(v.video_id, c), clip)
    return DONE


def run_batch_cli(rec, spec, cfg: RecognizeConfig, args, model: str) -> dict | None:
    """rayjobs/recognize.py's video path: resolve the pose model, start Ray, run, print failures."""
    import sys

    from recognizer_core.ray_runtime import RayStartError, start_ray
    from recognizer_core.recognize.pose_models import PoseModelError, resolve_pose_model

    if not args.pose_model:
        print("error: video input needs --pose-model (rtmo-s|rtmo-m|rtmo-l or an RTMO .onnx path)", file=sys.stderr)
        return None
    try:
        onnx_path = resolve_pose_model(args.pose_model, args.pose_cache)
        videos = list_inputs(args.input)
    except (PoseModelError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    if not videos:
        print(f"error: {args.input}: no videos found", file=sys.stderr)
        return None
    try:
        start_ray(args.address, job="recognize", dashboard=False)
    except RayStartError as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    pose = PoseModelConfig(onnx={"model_path": str(onnx_path), "intra_op_num_threads": 1})
    result = run_batch(inputs=args.input, out=args.output, model=model, model_config=args.model_config, spec=spec,
                       cfg=cfg, pose=pose, threads=args.threads or 1)
    for f in result["failures"]:
        print(f"[recognize] failed: {f['rel_path']}: {f['reason']}", file=sys.stderr)
    return result
