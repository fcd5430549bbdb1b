"""The end of one video's extraction, run in a Ray task on any node: tracking, the truncation check and the
Parquet write. Returns the manifest record (status + fields); the driver only writes that record down."""
from __future__ import annotations

from recognizer_core import storage
from recognizer_core.extract.clip_files import make_video_clip, write_clip_file
from recognizer_core.extract.config import DecodeConfig
from recognizer_core.extract.manifest import CLIPS_DIR, DONE, EMPTY, FAILED
from recognizer_core.extract.sources import SourceError
from recognizer_core.extract.stages import unpack_poses
from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.track.config import TrackingConfig
from recognizer_core.track.tracking import track_poses


class OutputWriteStopped(SourceError):
    """The machine refused a write into the job's output (storage.machine_write_error): the job stops with one line
    naming the file and the cause. A SourceError, so that extract_poses.py reports it as it does a bad input (one
    `error:` line, exit 2: the user's to fix; tuning stops on a full disk with exit 2 too); recognize's batch mode
    stops on it as well."""


def output_write_stopped(err: OSError, where: str) -> OutputWriteStopped:
    return OutputWriteStopped(storage.machine_write_line(err, where, "finished videos are kept, the rest continue"))


def truncation(payload: dict, decode: DecodeConfig) -> dict:
    """Decoded vs declared frames. `decoded_frames` is the last decoded frame index + 1 (within the stride);
    the header's count is often an estimate, so only a shortfall beyond the tolerance (and a stride) counts.
    `skipped_packets`: packets the decoder skipped as damaged (their frames are gaps; the video is not cut).
    `dropped_frames`: frames a sharded (by-timestamp) decode dropped where two timestamps rounded to one number."""
    inds, declared, stride = payload["frame_inds"], int(payload["declared"]), int(payload["stride"])
    decoded = int(inds[-1]) + 1 if len(inds) else 0
    short = declared > 0 and decoded + stride <= declared * (1.0 - decode.truncation_tolerance)
    return {"decoded_frames": decoded, "declared_frames": declared, "truncated": bool(short),
            "skipped_packets": int(payload.get("skipped_packets", 0)),
            "dropped_frames": int(payload.get("dropped_frames", 0))}


def track_video(video: dict, payload: dict, label: int, decode: DecodeConfig,
                tracking: TrackingConfig) -> tuple[dict, SkeletonClip | None]:
    """video: VideoSource.to_dict() + video_id; payload: VideoAssembler.payload(). -> (manifest record, the
    tracked whole-video clip, or None when the record is FAILED / EMPTY). Shared with batch recognize."""
    base = {"uri": video["uri"], "rel_path": video["rel_path"], "video_id": video["video_id"],
            "label_name": video["label_name"], "split": video["split"]}
    if payload["errors"]:
        return {"status": FAILED, **base, "reason": payload["errors"][0]}, None
    if not len(payload["frame_inds"]):
        return {"status": FAILED, **base, "reason": "no decodable frames"}, None
    trunc = truncation(payload, decode)
    if trunc["truncated"] and not decode.keep_truncated:
        return {"status": FAILED, **base, **trunc, "reason": f"truncated: decoded {trunc['decoded_frames']} of "
                f"{trunc['declared_frames']} frames the header declares (decode.keep_truncated=false)"}, None
    frames = [unpack_poses(p) for p in payload["poses"]]
    tracked = track_poses(payload["frame_inds"], frames, tracking)
    num_det = sum(len(f) for f in frames)
    if tracked.num_persons == 0:
        reason = ("no person detected" if num_det == 0 else
                  f"no track passed the filters ({num_det} detections in {len(frames)} frames)")
        return {"status": EMPTY, **base, **trunc, "reason": reason, "frames": len(frames)}, None
    clip = make_video_clip(tracked, clip_id=video["video_id"], label=label, label_name=video["label_name"],
                           split=video["split"], source_video=video["uri"], image_hw=payload["image_hw"],
                           fps=payload["fps"], stride=payload["stride"],
                           extra={"rel_path": video["rel_path"], "decoded_by_time": payload["num_shards"] > 1,
                                  "truncated": trunc["truncated"], "skipped_packets": trunc["skipped_packets"],
                                  "dropped_frames": trunc["dropped_frames"]})
    return {"status": DONE, **base, **trunc, "frames": len(frames), "persons": tracked.num_persons}, clip


def finish_video(video: dict, payload: dict, label: int, output_uri: str, decode: DecodeConfig,
                 tracking: TrackingConfig) -> dict:
    """`track_video`, then the clip's Parquet write. -> manifest record."""
    record, clip = track_video(video, payload, label, decode, tracking)
    if clip is None:
        return record
    rel = f"{CLIPS_DIR}/{video['video_id']}.parquet"
    write_clip_file(clip, storage.join_uri(output_uri, rel))
    return {**record, "output": rel}
