"""The extraction driver's per-video tracking + write tasks (finish.finish_video) in flight, and the manifest records
of their results (job.run_prepared submits them as each video's poses are complete).

A write the machine refused (storage.machine_write_error: a full disk or quota, a read-only mount) in a task or in a
manifest append records nothing for that video (a plain re-run redoes it) and sets `stop`: the driver submits no
more videos, records the ones in flight that finished, then raises it. Recorded as FAILED, as before, every video
after the disk filled was decoded and inferred for hours only to fail alike, and a re-run skipped them all."""
from __future__ import annotations

from typing import TYPE_CHECKING

from recognizer_core import storage
from recognizer_core.extract.finish import OutputWriteStopped, finish_video, output_write_stopped
from recognizer_core.extract.manifest import CLIPS_DIR, DONE, EMPTY, FAILED
from recognizer_core.extract.sources import VideoSource
from recognizer_core.extract.stages import VideoAssembler

if TYPE_CHECKING:
    from recognizer_core.extract.job import ExtractionPlan, _Progress


def first_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err   # RayTaskError wraps the task's own exception
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


class Finisher:
    """Per-video tracking + write tasks in flight; their returned records go into the manifest."""

    def __init__(self, plan: ExtractionPlan, max_in_flight: int, progress: _Progress):
        import ray

        self.ray, self.plan, self.progress = ray, plan, progress
        self.max_in_flight = max_in_flight
        self.task = ray.remote(finish_video).options(num_cpus=plan.cfg.ray.num_cpus_per_track_task)
        self.pending: dict = {}
        self.counts = {DONE: 0, EMPTY: 0, FAILED: 0}
        self.truncated: list[dict] = []
        self.damaged: list[dict] = []   # videos with packets skipped as damaged (decoded to the end around them)
        self.stop: OutputWriteStopped | None = None   # the first write the machine refused (module docstring)

    def submit(self, video: VideoSource, asm: VideoAssembler) -> None:
        cfg, names = self.plan.cfg, self.plan.label_names
        label = names.index(video.label_name) if video.label_name in names else 0
        meta = {**video.to_dict(), "video_id": video.video_id}
        ref = self.task.remote(meta, asm.payload(), label, cfg.output, cfg.decode, cfg.tracking)
        self.pending[ref] = video
        while len(self.pending) >= self.max_in_flight and self.stop is None:
            self.collect(block=True)

    def collect(self, block: bool) -> None:
        if not self.pending:
            return
        ready, _ = self.ray.wait(list(self.pending), num_returns=1 if block else len(self.pending),
                                 timeout=None if block else 0)
        for ref in ready:
            video = self.pending.pop(ref)
            try:
                rec = self.ray.get(ref)
            except Exception as err:  # noqa: BLE001 - one video's failure never ends the job
                refused = storage.machine_write_error(err)
                if refused is not None:   # the machine, not the video: nothing recorded
                    clip = storage.join_uri(self.plan.cfg.output, CLIPS_DIR, f"{video.video_id}.parquet")
                    self.stop = self.stop or output_write_stopped(refused, clip)
                    continue
                rec = {"status": FAILED, "uri": video.plain_uri, "rel_path": video.rel_path, "video_id": video.video_id,
                       "label_name": video.label_name, "split": video.split,
                       "reason": f"tracking/writing failed: {first_line(err)}"}
            self.record(video, rec)

    def record(self, video: VideoSource, rec: dict) -> None:
        status = rec.pop("status")
        try:
            self.plan.manifest.record(status, video.key, **rec)
        except OSError as err:
            refused = storage.machine_write_error(err)
            if refused is None:
                raise
            self.stop = self.stop or output_write_stopped(refused, self.plan.manifest.path(status))
            return
        self.counts[status] += 1
        if rec.get("truncated"):
            self.truncated.append({"rel_path": video.rel_path, "decoded_frames": rec["decoded_frames"],
                                   "declared_frames": rec["declared_frames"], "kept": status != FAILED})
        if rec.get("skipped_packets"):
            self.damaged.append({"rel_path": video.rel_path, "skipped_packets": rec["skipped_packets"]})
        self.progress.video_done(
            f"[extract] {status:6s} {video.rel_path}" + (" (truncated)" if rec.get("truncated") else "")
            + (f" ({rec['skipped_packets']} damaged packets skipped)" if rec.get("skipped_packets") else ""))

    def drain(self) -> None:
        while self.pending:
            self.collect(block=True)
