"""The extraction job's output: one SkeletonClip per video (all kept tracks) as a one-row skeleton-store file,
on local/shared storage or an object store."""
from __future__ import annotations

import os

import pyarrow.parquet as pq

from recognizer_core import storage
from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.store_rows import clips_from_batch, clips_to_table
from recognizer_core.track.tracking import TrackedPoses


def make_video_clip(tracked: TrackedPoses, *, clip_id: str, label: int, label_name: str, split: str,
                    source_video: str, image_hw: tuple[int, int], fps: float, stride: int,
                    extra: dict | None = None) -> SkeletonClip:
    """The whole video as one SkeletonClip (all kept tracks, rank order); stage 3 cuts windows from it."""
    return SkeletonClip(
        clip_id=clip_id, label=int(label), keypoint=tracked.keypoint, keypoint_score=tracked.keypoint_score,
        img_shape=tuple(image_hw), total_frames=int(tracked.keypoint.shape[1]), label_name=label_name,
        split=split, source_video=source_video, fps=float(fps) / max(stride, 1), track_ids=tracked.track_ids,
        frame_inds=tracked.frame_inds, original_shape=tuple(image_hw),
        extra={"box_score": tracked.box_score, "frame_track_ids": tracked.frame_track_ids,
               "source_fps": float(fps), "frame_stride": int(stride), **(extra or {})})


def write_clip_file(clip: SkeletonClip, uri: str | os.PathLike, label_names: list[str] | None = None) -> str:
    """One clip as a skeleton-store Parquet file, written atomically (readers never see half a file)."""
    clip.validate(str(uri))
    with storage.atomic_write(uri, "wb") as f:
        pq.write_table(clips_to_table([clip], label_names), f, compression="zstd")
    return str(uri)


def read_clip_file(uri: str | os.PathLike) -> SkeletonClip:
    fs, path = storage.filesystem(uri)
    clips = clips_from_batch(pq.read_table(path, filesystem=fs), copy=True)
    if len(clips) != 1:
        raise ValueError(f"{uri}: expected one clip per video file, found {len(clips)}")
    return clips[0]
