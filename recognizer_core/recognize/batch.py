"""Batch mode for many videos, the extraction job's shape with recognition as its last stage: decode tasks ->
RTMO actor pool (extract/job.py:build_pipeline) -> the driver groups each video's compact per-frame results
(extract/stages.py:VideoAssembler) -> a Ray task per complete video tracks it (extract/finish.py:track_video)
-> a recognizer actor scores that clip (model loaded once per actor) -> the driver writes the video's outputs
and records it in the manifest. Poses here are exactly what extract_poses.py would store; the tracked clips go
from tracking task to recognizer actor without passing through the driver.

A re-run skips videos already recorded (same path, size and mtime); bad videos are recorded in failures.jsonl
and the job goes on. A write the machine refuses (a full disk: storage.machine_write_error) stops it as it stops
extraction (extract/finisher.py): nothing recorded for the videos being written, their partial outputs removed, so
the same command run again does them.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from recognizer_core.extract.config import DecodeConfig, ExtractionConfig, PoseModelConfig, RayResources, SourceConfig
from recognizer_core.extract.finish import OutputWriteStopped, output_write_stopped, track_video
from recognizer_core.extract.finisher import first_line
from recognizer_core.extract.job import ROW_COLUMNS, build_pipeline, iter_blocks, resolve_paths
from recognizer_core.extract.manifest import DONE, EMPTY, FAILED, ExtractionManifest
from recognizer_core.extract.sources import VideoSource, list_videos
from recognizer_core.extract.stages import VideoAssembler
from recognizer_core.recognize.events import Event
from recognizer_core.recognize.outputs import UniqueStems, rel_path_stem, write_video_outputs
from recognizer_core.recognize.runner import RecognizeConfig, effective_spec, recognize_clip
from recognizer_core.storage import machine_write_error, to_uri, write_text
from recognizer_core.track.config import TrackingConfig


def is_skeleton_input(path: str) -> bool:
    p = Path(path)
    if p.is_file():
        return p.suffix == ".parquet"
    return p.is_dir() and ((p / "clips").is_dir() or (p / "_dataset.json").exists() or any(p.glob("*.parquet")))


def source_config(path: str) -> SourceConfig:
    return SourceConfig(manifest_csv=path) if path.endswith(".csv") else SourceConfig(input=path)


def list_inputs(path: str) -> list[VideoSource]:
    """Videos of a folder / URI (RWF-style layouts give labels), a CSV manifest (path,label[,split]) or one file."""
    if os.path.isfile(path) and not path.endswith(".csv"):
        st = os.stat(path)
        return [VideoSource(os.path.abspath(path), os.path.basename(path), "", "", st.st_size, st.st_mtime_ns)]
    return list_videos(source_config(path))


class RecognizerActor:
    """One model copy per actor: a tracked clip (from a `track_video` task) -> light results (windows without
    their arrays), plus the overlay video when asked (written from here, next to the clip)."""

    def __init__(self, model: str, model_config: str | None, spec_json: str, cfg_json: str, threads: int):
        from recognizer_core.recognize.model import load_recognizer
        from recognizer_core.recognize.spec import ModelSpec

        self.spec = ModelSpec.model_validate_json(spec_json)
        self.rec = load_recognizer(model, model_config=model_config, threads=threads, spec=self.spec)
        self.cfg = RecognizeConfig.model_validate_json(cfg_json)

    def recognize(self, tracked: tuple, overlay_path: str | None):
        record, clip = tracked
        if clip is None:     # failed / empty: the record says why
            return record, None
        res = recognize_clip(self.rec, clip, self.spec, self.cfg)
        if overlay_path:
            from recognizer_core.recognize.overlay import render_recognition_overlay

            render_recognition_overlay(clip, clip.source_video, res.windows, res.probs, self.spec, overlay_path)
        return record, res


def _recorded(manifest: ExtractionManifest, key: str, out: Path) -> bool:
    """Done (and its events file still there), empty or failed. The manifest's own `status` wants a clip file
    for done videos: here the output is the events file."""
    done = manifest.records[DONE].get(key)
    if done is not None and (out / done.get("output", "")).is_file():
        return True
    return key in manifest.records[EMPTY] or key in manifest.records[FAILED]


def _recorded_events(manifest: ExtractionManifest, videos: list[VideoSource], out: Path) -> dict[str, list[Event]]:
    """{rel_path: events} of videos an earlier run recorded: done ones read back from their events file, empty
    ones with none (failed ones have no prediction)."""
    found: dict[str, list[Event]] = {}
    for v in videos:
        done = manifest.records[DONE].get(v.key)
        if done is not None:
            lines = (out / done["output"]).read_text(encoding="utf-8").splitlines()
            found[v.rel_path] = [Event(**json.loads(line)) for line in lines if line.strip()]
        elif v.key in manifest.records[EMPTY]:
            found[v.rel_path] = []
    return found


EVENTS_SUFFIX = ".events.jsonl"
# every file of a video's outputs (outputs.write_video_outputs, the overlay): removed where writing them failed
OUTPUT_SUFFIXES = (EVENTS_SUFFIX, ".events.csv", ".windows.csv", ".timeline.png", ".overlay.mp4")


def output_stems(manifest: ExtractionManifest, videos: list[VideoSource]) -> tuple[dict[str, str], set[str]]:
    """({rel_path: output stem} for every listed video, manifest keys of done records to redo). The stems are
    fixed before any video is processed (so they do not depend on the order in which videos finish):
    rel_path_stem (`cam1/x.mp4` -> `cam1__x.mp4`, cut with a hash when too long), with a hash of the rel_path where
    another video took that stem: one listed before it, or one whose outputs an earlier run recorded in this
    folder (those keep their names: resume reads them back). A done record whose events file belongs to another
    video (two videos of an older version's run wrote one file: the newest wrote it last) is redone."""
    done = [r for r in manifest.records[DONE].values()   # oldest first: the newest record of a stem owns it
            if r.get("rel_path") and str(r.get("output", "")).endswith(EVENTS_SUFFIX)]
    # A name's owner is the file (its uri) as well as its path: two runs into one output folder on day1/cam1.mp4
    # and day2/cam1.mp4 (one path each) overwrote each other's outputs, and day1's record then read day2's events.
    stems = UniqueStems(lambda owner: rel_path_stem(owner.split("\n", 1)[0]),
                        {r["output"].removesuffix(EVENTS_SUFFIX): _owner(r["rel_path"], r["key"]) for r in done})
    names = {v.rel_path: stems(_owner(v.rel_path, v.key)) for v in videos}
    return names, {r["key"] for r in done
                   if stems.owner[r["output"].removesuffix(EVENTS_SUFFIX)] != _owner(r["rel_path"], r["key"])}


def _owner(rel_path: str, key: str) -> str:
    """Who an output name belongs to: the path (its readable part) and the file (the manifest key's uri)."""
    return f"{rel_path}\n{key.rsplit('|', 2)[0]}"


def remove_outputs(out: Path, stem: str) -> None:
    """The outputs of a video whose writing failed: an events file written before the rest failed (an empty one,
    0 bytes, for a video without events) read exactly as a finished video's 'no events'."""
    for suffix in OUTPUT_SUFFIXES:
        try:
            (out / f"{stem}{suffix}").unlink(missing_ok=True)
        except OSError:  # best effort: the folder may be what failed (a file in its place, no permission)
            pass


def write_recorded_outputs(out: Path, v: VideoSource, stem: str, rec: dict, res, spec, timeline: bool) -> bool:
    """Write one video's outputs and note them in its manifest record `rec`. A write that fails (a name the file
    system refuses) turns `rec` into a FAILED record with the reason, as a bad video is: it never ends the run; one
    the machine refuses (a full disk) raises OutputWriteStopped. Either way no output of the video is left.
    -> whether the outputs were written."""
    try:
        files = write_video_outputs(out, v.rel_path, res.windows, res.probs, res.events, spec, timeline, stem=stem)
    except Exception as err:  # noqa: BLE001 - one video's failure never ends the job
        remove_outputs(out, stem)
        refused = machine_write_error(err)
        if refused is not None:
            raise output_write_stopped(refused, str(out)) from err
        rec.update(status=FAILED, reason=f"writing outputs into {out} failed: {first_line(err)}")
        return False
    rec.update(output=os.path.basename(files["events_jsonl"]), events=len(res.events), windows=len(res.windows))
    return True


def run_batch(*, inputs: str, out: str | Path, model: str, model_config: str | None, spec, cfg: RecognizeConfig,
              pose: PoseModelConfig, decode: DecodeConfig = DecodeConfig(), tracking: TrackingConfig = TrackingConfig(),
              pose_actors: int = 1, recognizer_actors: int = 1, threads: int = 1, cpus: float = 0.5,
              verbose: bool = True) -> dict:
    """Recognize every video not yet done (Ray must be started); returns the summary (also written as
    summary.json). `cpus`: CPUs reserved per decode task / pose actor / tracking task / recognizer actor
    (threads are set separately). `cfg`'s overrides are applied to `spec` here, as recognize_clip does for the
    events: the timelines and overlays drew a raw spec's threshold lines beside the configured events."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    spec = effective_spec(spec, cfg)
    out = Path(out)
    manifest = ExtractionManifest(str(out))
    videos = list_inputs(inputs)
    stems, redo = output_stems(manifest, videos)
    todo = [v for v in videos if v.key in redo or not _recorded(manifest, v.key, out)]
    by_id = {v.video_id: v for v in todo}
    counts = {DONE: 0, EMPTY: 0, FAILED: 0}
    # every video's events, those of an earlier run included: the evaluation scores the whole input
    events_by_video: dict[str, list] = _recorded_events(manifest, [v for v in videos if v.video_id not in by_id], out)
    frames, windows, t0 = 0, 0, time.time()
    stop: list[OutputWriteStopped] = []   # the first write the machine refused: no more videos (module docstring)

    def record(v: VideoSource, rec: dict, res) -> None:
        nonlocal windows
        try:
            if res is not None and not write_recorded_outputs(out, v, stems[v.rel_path], rec, res, spec,
                                                              cfg.timeline):
                res = None   # recorded as failed, with the write error
        except OutputWriteStopped as err:
            stop.append(err)
            return
        status = rec.pop("status")
        if res is not None:
            events_by_video[v.rel_path] = res.events
            windows += len(res.windows)
        elif status == EMPTY:
            events_by_video[v.rel_path] = []   # nobody seen: the video is predicted as background
        try:
            manifest.record(status, v.key, **rec)
        except OSError as err:   # its outputs, if any, are whole: a re-run writes them again
            if (refused := machine_write_error(err)) is None:
                raise
            stop.append(output_write_stopped(refused, manifest.path(status)))
            return
        counts[status] += 1
        if verbose:
            what = (f"{len(res.events)} event(s) {[f'{e.label} {e.start_s:.1f}-{e.end_s:.1f}s' for e in res.events]}"
                    if res is not None else rec.get("reason", ""))
            print(f"[recognize] {sum(counts.values())}/{len(todo)} {status:6s} {v.rel_path}: {what}", flush=True)

    if todo:
        # the extraction job's own plan: same decode shards, same RTMO actors, same paths resolution
        ecfg = resolve_paths(ExtractionConfig(
            source=source_config(inputs), output=str(out), decode=decode, model=pose, tracking=tracking,
            ray=RayResources(num_actors=pose_actors, num_cpus_per_actor=cpus, num_cpus_per_decode_task=cpus,
                             num_cpus_per_track_task=cpus)))
        track_task = ray.remote(track_video).options(num_cpus=cpus)
        actor_cls = ray.remote(num_cpus=cpus)(RecognizerActor)
        args = (to_uri(model), to_uri(model_config) if model_config else None, spec.model_dump_json(),
                cfg.model_dump_json(), threads)
        actors = [actor_cls.remote(*args) for _ in range(recognizer_actors)]
        load = [0] * len(actors)
        pending: dict = {}   # result ref -> (video, actor index)
        max_in_flight = max(2, int(2 * ray.cluster_resources().get("CPU", 1)))

        def collect(block: bool) -> None:
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1 if block else len(pending), timeout=None if block else 0)
            for ref in ready:
                v, a = pending.pop(ref)
                load[a] -= 1
                try:
                    rec, res = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - one video's failure never ends the job
                    if (refused := machine_write_error(err)) is not None:   # the overlay, written by the actor
                        remove_outputs(out, stems[v.rel_path])
                        stop.append(output_write_stopped(refused, str(out)))
                        continue
                    rec, res = {"status": FAILED, "uri": v.plain_uri, "rel_path": v.rel_path, "video_id": v.video_id,
                                "reason": f"tracking/recognition failed: {first_line(err)}"}, None
                record(v, rec, res)

        def submit(v: VideoSource, asm: VideoAssembler) -> None:
            tracked = track_task.remote({**v.to_dict(), "video_id": v.video_id}, asm.payload(), 0, decode, tracking)
            a = load.index(min(load))
            overlay = str(out.resolve() / f"{stems[v.rel_path]}.overlay.mp4") if cfg.overlay else None
            pending[actors[a].recognize.remote(tracked, overlay)] = (v, a)
            load[a] += 1
            while len(pending) >= max_in_flight:
                collect(block=True)

        items = [{"video_id": v.video_id, "uri": v.uri, "size": v.size} for v in todo]
        assemblers: dict[str, VideoAssembler] = {}
        pipeline = build_pipeline(ecfg, items, (pose_actors, pose_actors))
        for batch in iter_blocks(pipeline):
            if stop:   # the disk is full: no more videos decoded and scored for nothing
                break
            for values in zip(*[batch[k].tolist() for k in ROW_COLUMNS]):
                row = dict(zip(ROW_COLUMNS, values))
                asm = assemblers.setdefault(row["video_id"], VideoAssembler(row["video_id"]))
                asm.add(row)
                if asm.complete and not stop:
                    frames += len(asm.frames)
                    submit(by_id[row["video_id"]], assemblers.pop(row["video_id"]))
            collect(block=False)   # never block the pose stream on recognition
        while pending:
            collect(block=True)
        if stop:   # the videos in flight that finished are recorded: a re-run does the rest
            raise stop[0]
        for vid in assemblers:  # a shard lost its end marker: record, never crash
            v = by_id[vid]
            record(v, {"status": FAILED, "uri": v.plain_uri, "rel_path": v.rel_path, "video_id": vid,
                       "reason": "incomplete: not every shard reported its end"}, None)
    elapsed = time.time() - t0
    summary = {"videos": len(videos), "processed": len(todo), "done": counts[DONE], "empty": counts[EMPTY],
               "failed": counts[FAILED], "skipped": len(videos) - len(todo), "frames": frames, "windows": windows,
               "seconds": round(elapsed, 2), "frames_per_s": round(frames / elapsed, 1) if frames else 0.0,
               "failures": manifest.failures(v.key for v in videos)}
    try:
        write_text(out / "summary.json", json.dumps(summary, indent=1))
    except OSError as err:
        if (refused := machine_write_error(err)) is None:
            raise
        raise output_write_stopped(refused, str(out / "summary.json")) from err
    return {**summary, "events": events_by_video}


def run_batch_cli(rec, spec, cfg: RecognizeConfig, args, model: str) -> dict | None:
    """rayjobs/recognize.py's video path: resolve the pose model, start Ray, run, print failures. None: an error
    before any video was processed, or a write the machine refused (a full disk), printed (recognize exits 2, the
    other jobs' code for what the user fixes).
    The result's `failed` counts this run's failures, `failures` lists every listed video's, earlier runs'
    included (a re-run skips those), and `events` holds every video with a result, earlier runs' too."""
    import sys

    from recognizer_core.extract.backends import BackendError, check_model_file
    from recognizer_core.ray_runtime import RayStartError, start_ray
    from recognizer_core.recognize.pose_models import PoseModelError, resolve_pose_model

    if not args.pose_model:
        print("error: video input needs --pose-model (rtmo-s|rtmo-m|rtmo-l or an RTMO .onnx path)", file=sys.stderr)
        return None
    try:
        onnx_path = resolve_pose_model(args.pose_model, args.pose_cache)
        pose = PoseModelConfig(onnx={"model_path": str(onnx_path), "intra_op_num_threads": 1})
        videos = list_inputs(args.input)
    except (PoseModelError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    try:  # extract_poses.py's check before Ray: a non-RTMO .onnx (the action model) failed in every pose actor
        check_model_file(pose)
    except BackendError as err:
        print(f"error: --pose-model {args.pose_model}: {str(err).removeprefix(f'{onnx_path}: ')}", file=sys.stderr)
        return None
    if not videos:
        print(f"error: {args.input}: no videos found", file=sys.stderr)
        return None
    try:
        start_ray(args.address, job="recognize", dashboard=False)
    except RayStartError as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    try:
        result = run_batch(inputs=args.input, out=args.output, model=model, model_config=args.model_config,
                           spec=spec, cfg=cfg, pose=pose, threads=args.threads or 1)
    except OutputWriteStopped as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    for f in result["failures"]:
        print(f"[recognize] failed: {f['rel_path']}: {f['reason']}", file=sys.stderr)
    return result
