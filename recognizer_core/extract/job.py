"""Stage 1 + 2 as a Ray Data plan (run by rayjobs/extract_poses.py): videos -> RTMO poses -> tracked skeletons.

`prepare_extraction` runs on the driver before Ray starts: it resolves every path once (what travels to other
nodes is absolute or a URI), checks the model and the input, lists the videos and reads the manifest; a bad
input raises one clear error and creates nothing. `run_prepared` (Ray started) then streams:
decode (CPU tasks, a generator per shard) -> RTMO (autoscaling actor pool, sized from the cluster's GPUs)
-> the driver groups the compact per-frame results by video -> one Ray task per complete video tracks it and
writes its Parquet file to the shared output -> the driver records the returned status in the manifest.
Re-running skips finished videos (manifest keyed by path + size + mtime); a killed job loses only the videos
in flight. Bad videos go to failures.jsonl, videos without persons to empty_clips.jsonl, truncated ones are
flagged; the job goes on and ends with a summary (summary.json). A write the machine refuses (a full disk) stops
it, recording nothing for the videos it was writing (finisher.py). Several sources (and several runs at once) may
extract into one poses folder: each video's id (its clip file's name) is kept apart from other sources' files
(`assign_video_ids`) and labels.json keeps every listed source's classes (`_with_earlier_classes`).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, replace

import yaml
from tqdm import tqdm

from recognizer_core import storage
from recognizer_core.extract.backends import check_cuda_provider, check_local_gpus, check_model_file
from recognizer_core.extract.config import ExtractionConfig
from recognizer_core.extract.finish import output_write_stopped
from recognizer_core.extract.finisher import Finisher
from recognizer_core.extract.manifest import DONE, EMPTY, FAILED, ExtractionManifest
from recognizer_core.extract.sources import SourceError, VideoSource, label_index, list_videos, make_video_id
from recognizer_core.names import nfc
from recognizer_core.ray_runtime import runs_on_private_ray
from recognizer_core.extract.stages import PoseInference, VideoAssembler, decode_shard, plan_video

# the columns of the pose stream the driver reads (VideoAssembler.add); batch recognize reads the same
ROW_COLUMNS = ("video_id", "shard", "num_shards", "frame_index", "shard_total", "error", "skipped_packets",
               "dropped_frames", "poses", "img_h", "img_w", "stride", "fps", "declared")
PROGRESS_INTERVAL_S = 30.0   # between the plain progress lines of a driver whose stderr is no terminal


@dataclass
class ExtractionPlan:
    cfg: ExtractionConfig              # paths resolved
    manifest: ExtractionManifest
    videos: list[VideoSource]
    label_names: list[str]
    todo: list[VideoSource]
    skipped: dict[str, int]


def resolve_paths(cfg: ExtractionConfig) -> ExtractionConfig:
    """Relative paths resolved once, here on the driver: a task on another node must get the same file."""
    def res(p: str) -> str:
        return storage.to_uri(p) if p else p

    def res_model(p: str) -> str:  # where export_model / build_trt_engine wrote it, as data.path is found
        return res(storage.input_path(p))

    return cfg.model_copy(update={
        "output": storage.output_uri(cfg.output),  # never inside `ray job submit`'s package, which Ray deletes
        "source": cfg.source.model_copy(update={"input": res(cfg.source.input),
                                                "manifest_csv": res(cfg.source.manifest_csv)}),
        "model": cfg.model.model_copy(update={
            "onnx": cfg.model.onnx.model_copy(update={"model_path": res_model(cfg.model.onnx.model_path)}),
            "tensorrt": cfg.model.tensorrt.model_copy(
                update={"model_path": res_model(cfg.model.tensorrt.model_path)})})})


def prepare_extraction(cfg: ExtractionConfig) -> ExtractionPlan:
    """Everything that can fail on bad input, before Ray starts. Raises BackendError / SourceError."""
    cfg = resolve_paths(cfg)
    check_model_file(cfg.model)
    if runs_on_private_ray(cfg.ray.address or None):
        # a private local Ray runs the inference actors on this machine: its ONNX Runtime and GPUs are theirs (on a
        # cluster the GPU workers' image may have a CUDA build the driver's lacks, and an autoscaler adds GPU nodes)
        check_cuda_provider(cfg.model)
        check_local_gpus(cfg.ray.num_gpus_per_actor)
    videos = list_videos(cfg.source)
    manifest = ExtractionManifest(cfg.output)
    others = _other_sources_videos(manifest, _source_name(cfg))
    videos = assign_video_ids(videos, manifest, others)
    names = _with_earlier_classes(cfg, label_index([v for v in videos if v.label_name], cfg.source.label_names),
                                  others)
    skipped = {DONE: 0, EMPTY: 0, FAILED: 0}
    todo = []
    for v in videos:
        status = manifest.status(v.key)
        if status is None or (status == FAILED and cfg.retry_failed):
            todo.append(v)
        else:
            skipped[status] += 1
    return ExtractionPlan(cfg, manifest, videos, names, todo, skipped)


def _source_name(cfg: ExtractionConfig) -> str:
    """What names this run's source in the manifest's listings: its CSV, else its input folder."""
    return cfg.source.manifest_csv or cfg.source.input


def _other_sources_videos(manifest: ExtractionManifest, source: str) -> list[dict]:
    """The videos (video_id, key, label_name) of the poses folder's other sources: their listings, read now (a run
    writes its listing when it starts, so a run still extracting is there); in a folder written before listings,
    its finished records."""
    listed = manifest.listing(skip=source)
    return listed if listed is not None else manifest.current_done()[0]


def _with_earlier_classes(cfg: ExtractionConfig, names: list[str], others: list[dict]) -> list[str]:
    """The poses folder's classes: labels.json's (in its order) that this source or another listed source
    (`others`) has, then this source's new ones, then other listed sources' not in labels.json yet; an explicit
    source.label_names comes first in its order, other sources' classes after it.
    Each run rewrote labels.json with its own source's classes: a second source with fewer classes extracted into
    the folder, or a second run started while the first was still extracting, left build_dataset without the first
    one's."""
    try:
        old = json.loads(storage.read_text(storage.join_uri(cfg.output, "labels.json")) or "{}").get("label_names")
    except (ValueError, AttributeError):
        old = None
    # NFC: a labels.json or a listing written from a Mac's (NFD) folder names before names were normalised
    old = list(dict.fromkeys(nfc(n) for n in old if isinstance(n, str))) if isinstance(old, list) else []
    listed = {nfc(r["label_name"]) for r in others if r.get("label_name")}
    if cfg.source.label_names:   # its order first; other sources' classes after it
        first = list(names)
    else:
        first = [n for n in old if n in listed or n in names]
        first += [n for n in names if n not in first]
    return first + [n for n in old if n in listed and n not in first] + sorted(listed - set(old) - set(first))


def _another_file(key: str, video: VideoSource) -> bool:
    """Whether the manifest key `key` (uri|size|mtime) of another source is a different video than `video`: not the
    same uri and not the same size and mtime (the same file through a symlinked, remounted or moved folder keeps
    both: one clip is right). Whether the other file still exists does not matter: a source whose raw videos were
    archived after extraction keeps its clips, and a second dataset with the same names must not take them."""
    uri, size, mtime = key.rsplit("|", 2)
    return uri != video.plain_uri and (size, mtime) != (str(video.size), str(video.mtime_ns))


def _taken_by_other(video_id: str, video: VideoSource, by_id: dict[str, list[str]]) -> bool:
    return any(_another_file(key, video) for key in by_id.get(video_id, ()))


def _keys_by_id(others: list[dict]) -> dict[str, list[str]]:
    by_id: dict[str, list[str]] = {}
    for r in others:
        by_id.setdefault(str(r.get("video_id") or ""), []).append(str(r["key"]))
    return by_id


def assign_video_ids(videos: list[VideoSource], manifest: ExtractionManifest, others: list[dict]) -> list[VideoSource]:
    """Each video's id (its clip file's name). The id hashes the path relative to the source, so one relative path
    under two input folders (datasetA/Fight/1.mp4, datasetB/Fight/1.mp4) was one clip file: the second run
    overwrote the first's skeleton, whose DONE record then pointed at the other video. A video with a DONE record
    keeps that record's id (ids never change: a resume skips it, builds name clips by it); a new one whose id
    another source lists for a different file gets the next free make_video_id variant (recorded in this source's
    listing, so its next run finds it in its DONE record)."""
    by_id, out = _keys_by_id(others), []
    for v in videos:
        rec = manifest.records[DONE].get(v.key)
        if rec is not None:
            vid = str(rec.get("video_id") or v.video_id)
        else:
            variant = 0
            while _taken_by_other(make_video_id(v.rel_path, variant), v, by_id):
                variant += 1
            vid = make_video_id(v.rel_path, variant)
        out.append(v if vid == v.video_id else replace(v, assigned_id=vid))
    return out


def _check_ids_still_free(plan: ExtractionPlan, others: list[dict]) -> None:
    """Another run into this folder that listed its videos after this one planned (both started at once) may list
    a different file under an id this run is about to write: stop before either clip is overwritten."""
    by_id = _keys_by_id(others)
    for v in plan.todo:
        if v.key in plan.manifest.records[DONE]:
            continue   # its id is its record's, kept as it was
        for key in by_id.get(v.video_id, ()):
            if _another_file(key, v):
                raise SourceError(
                    f"{v.uri}: another extraction into {plan.cfg.output} listed {key.rsplit('|', 2)[0]} under the "
                    f"same video_id {v.video_id} while this run started; run this one again (it then gets its own id)")


def actor_pool_size(cfg: ExtractionConfig, cluster_gpus: float) -> tuple[int, int | None]:
    """(min, max) inference actors: max_actors if set, else one per num_gpus_per_actor of the cluster's GPUs;
    max None (no bound: Ray Data asks the autoscaler for GPU nodes as the queue grows) on a cluster that has no
    GPU yet, which scale-from-zero clusters (the KubeRay manifests: GPU workers from 0 replicas) have at start."""
    lo = cfg.ray.num_actors
    if cfg.ray.max_actors:
        return lo, max(lo, cfg.ray.max_actors)
    if cfg.ray.num_gpus_per_actor > 0:
        if cluster_gpus == 0:
            return lo, None
        return lo, max(lo, int(cluster_gpus // cfg.ray.num_gpus_per_actor))
    return lo, lo  # CPU inference: ONNX Runtime already uses every core of an actor's node


def build_pipeline(cfg: ExtractionConfig, items: list[dict], pool: tuple[int, int | None]):
    """The Ray Data plan: plan shards -> decode (CPU tasks) -> RTMO (actor pool of pool[0]..pool[1])."""
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
    strategy = (ray.data.ActorPoolStrategy(size=pool[0]) if pool[0] == pool[1]
                else ray.data.ActorPoolStrategy(min_size=pool[0], max_size=pool[1]))
    return ds.map_batches(PoseInference, fn_constructor_kwargs={"model_cfg": cfg.model}, compute=strategy,
                          batch_size=cfg.model.batch_size, batch_format="numpy",
                          num_gpus=cfg.ray.num_gpus_per_actor or None, num_cpus=cfg.ray.num_cpus_per_actor)


def iter_blocks(ds, batch_format: str = "numpy"):
    """The dataset's output, one batch per block, each as soon as Ray Data produces it. Its default iterator
    (prefetch_batches=1) holds every block back until the next one arrives: the driver then got each video's
    poses, and started its tracking + write task, only once the next video was inferred as well."""
    return ds.iter_batches(batch_size=None, batch_format=batch_format, prefetch_batches=0)


class _Progress:
    """A bar on a terminal, else a line every PROGRESS_INTERVAL_S and at the end (each '\\r' redraw of a bar was a
    line in `ray job logs`). Frames count as poses arrive: a long video's count at its end showed 0 for hours."""

    def __init__(self, total: int, verbose: bool):
        self.total, self.verbose, self.videos, self.frames, self.t0 = total, verbose, 0, 0, time.time()
        self.last_line = self.t0
        self.bar = (tqdm(total=total, unit="video", desc="extract", dynamic_ncols=True)
                    if verbose and sys.stderr.isatty() else None)

    def add_frames(self, frames: int) -> None:
        self.frames += frames
        if self.bar is not None:
            self.bar.set_postfix(frames=self.frames, fps=round(self.frames / max(time.time() - self.t0, 1e-9)))
        elif self.verbose and time.time() - self.last_line >= PROGRESS_INTERVAL_S:
            self.line()

    def video_done(self, text: str) -> None:
        self.videos += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.write(text)
        elif self.verbose:
            print(text, flush=True)

    def line(self) -> None:
        self.last_line = time.time()
        rate = self.frames / max(self.last_line - self.t0, 1e-9)
        print(f"[extract] {self.videos}/{self.total} videos, {self.frames} frames, {rate:.1f} frames/s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.verbose and self.total:
            self.line()


def run_prepared(plan: ExtractionPlan, verbose: bool = True) -> dict:
    """Run stage 1 + 2 for every video not yet done (Ray must be started); returns (and writes) the summary.
    A write the machine refused (a full disk) stops it: OutputWriteStopped (finisher.py says why)."""
    try:
        return _run_prepared(plan, verbose)
    except OSError as err:   # the driver's own writes (listing, labels, summary): their errors name a temp file
        refused = storage.machine_write_error(err)
        if refused is None:
            raise
        raise output_write_stopped(refused, plan.cfg.output) from err


def _run_prepared(plan: ExtractionPlan, verbose: bool) -> dict:
    cfg, out = plan.cfg, plan.cfg.output
    # every listed video (skipped ones too): build_dataset keeps only these, each at its current version and label.
    # First: in a folder extracted before listings, the old extraction_config.yaml names whose videos those are.
    plan.manifest.write_listing(plan.videos, _source_name(cfg))
    # read again now, this run's listing written (announce, then look): a run into this folder started since this
    # one planned is seen (its ids, its classes), and one that starts from now on sees this one's
    _check_ids_still_free(plan, _other_sources_videos(plan.manifest, _source_name(cfg)))
    config_uri = storage.join_uri(out, "extraction_config.yaml")
    if plan.todo or not storage.exists(config_uri):   # a run that extracts nothing keeps the clips' settings
        storage.write_text(config_uri, yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
    plan.label_names = _with_earlier_classes(cfg, plan.label_names, _other_sources_videos(plan.manifest,
                                                                                          _source_name(cfg)))
    storage.write_text(storage.join_uri(out, "labels.json"), json.dumps({"label_names": plan.label_names}))
    plan.manifest.remove_partial_files()
    t0 = time.time()
    frames_done, provider, pool = 0, "", (0, 0)
    first_poses = None  # (seconds, frames) when the first batch of poses came back: start-up + the first block
    progress = _Progress(len(plan.todo), verbose)
    finisher = Finisher(plan, 1, progress)
    if plan.todo:
        import ray

        ray.data.DataContext.get_current().enable_progress_bars = False   # one bar: videos, below
        # nor Ray Data's "Progress bars disabled. To enable, set ..." warning, which the user cannot act on
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        resources = ray.cluster_resources()
        pool = actor_pool_size(cfg, resources.get("GPU", 0.0))
        finisher.max_in_flight = cfg.ray.max_videos_in_flight or max(2, int(2 * resources.get("CPU", 1)))
        by_id = {v.video_id: v for v in plan.todo}
        items = [{"video_id": v.video_id, "uri": v.uri, "size": v.size} for v in plan.todo]
        assemblers: dict[str, VideoAssembler] = {}
        for batch in iter_blocks(build_pipeline(cfg, items, pool)):
            if finisher.stop is not None:   # the disk is full: no more videos decoded and inferred for nothing
                break
            provider = provider or str(batch["provider"][0])
            posed = int((batch["frame_index"] >= 0).sum())   # -1: the marker of a shard that decoded nothing
            first_poses = first_poses or (time.time() - t0, posed)
            cols = [batch[k].tolist() for k in ROW_COLUMNS]   # plain Python values: cheap per row
            for values in zip(*cols):
                row = dict(zip(ROW_COLUMNS, values))
                vid = row["video_id"]
                asm = assemblers.setdefault(vid, VideoAssembler(vid))
                asm.add(row)
                if asm.complete and finisher.stop is None:
                    frames_done += len(asm.frames)
                    finisher.submit(by_id[vid], assemblers.pop(vid))
            finisher.collect(block=False)
            progress.add_frames(posed)
        finisher.drain()
        if finisher.stop is not None:   # the videos in flight that finished are recorded: a re-run does the rest
            progress.close()
            raise finisher.stop
        for vid in assemblers:  # should not happen: a shard lost its end marker
            v = by_id[vid]
            finisher.record(v, {"status": FAILED, "uri": v.plain_uri, "rel_path": v.rel_path, "video_id": vid,
                                "reason": "incomplete: not every shard reported its end"})
        plan.manifest.compact()
    progress.close()
    elapsed = time.time() - t0
    counts, skipped = finisher.counts, plan.skipped
    summary = {
        "videos": len(plan.videos), "processed": len(plan.todo), "done": counts[DONE], "empty": counts[EMPTY],
        "failed": counts[FAILED], "truncated": len(finisher.truncated), "damaged": len(finisher.damaged),
        "skipped_done": skipped[DONE],
        "skipped_empty": skipped[EMPTY], "skipped_failed": skipped[FAILED], "frames": frames_done,
        "seconds": round(elapsed, 2),
        "frames_per_s": round(frames_done / elapsed, 1) if elapsed > 0 and frames_done else 0.0,
        # until the first poses (start-up, then the first block decoded and inferred) and the rate after them
        "first_poses_s": round(first_poses[0], 2) if first_poses else None,
        "frames_per_s_after_first_poses": (round((frames_done - first_poses[1]) / (elapsed - first_poses[0]), 1)
                                           if first_poses and elapsed > first_poses[0] else None),
        "provider": provider, "actors": list(pool), "output": out, "label_names": plan.label_names,
        "truncated_videos": finisher.truncated, "damaged_videos": finisher.damaged,
        "failures": plan.manifest.failures(v.key for v in plan.videos),
    }
    storage.write_text(storage.join_uri(out, "summary.json"), json.dumps(summary, indent=1))
    return summary
