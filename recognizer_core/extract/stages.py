"""The per-row functions of the extraction job (Ray-free, so they are testable without a cluster).

Flow (rayjobs/extract_poses.py wires it into Ray Data):
  video rows -> `plan_video` (probe, cut into shards) -> `decode_shard` (CPU tasks, a generator of frame
  blocks: letterboxed model inputs) -> `PoseInference` (actor pool: RTMO backend + post-processing, padded
  per-frame detections) -> driver: `VideoAssembler` collects a video's frames from every shard, then
  `track_poses` and `make_video_clip` give one SkeletonClip per video, written by `write_clip_file`.

Shard completeness: each shard's last frame row carries `shard_total` (frames it produced; -1 on the
others), and a shard that produced nothing sends one marker row (frame_index -1, with `error` when the
decoder failed), so the driver knows when a video is complete whatever order the blocks arrive in.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq

from recognizer_core.extract.config import DecodeConfig, PoseModelConfig
from recognizer_core.extract.rtmo import NUM_KEYPOINTS, FramePoses, RtmoPoseEstimator
from recognizer_core.track.tracking import TrackedPoses
from recognizer_core.extract.video import (VideoDecodeError, frame_stride_for, iter_frames, letterbox_params,
                                        plan_shards, probe_video)
from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.store_rows import clips_from_batch, clips_to_table


def plan_video(item: dict, decode: DecodeConfig) -> list[dict]:
    """One row per decode shard of a video, or one row with `error` when it cannot be opened."""
    base = {"video_id": item["video_id"], "uri": item["uri"], "error": "", "shard": 0, "num_shards": 1,
            "start": 0, "end": -1, "stride": 1, "fps": 0.0, "width": 0, "height": 0}
    if int(item.get("size", 1)) == 0:
        return [{**base, "error": "empty file (0 bytes)"}]
    try:
        info = probe_video(item["uri"])
    except VideoDecodeError as err:
        return [{**base, "error": str(err)}]
    stride = frame_stride_for(info.fps, decode.frame_stride, decode.target_fps)
    shards = plan_shards(info.num_frames, decode.shard_frames)
    common = {**base, "num_shards": len(shards), "stride": stride, "fps": info.fps, "width": info.width,
              "height": info.height}
    return [{**common, "shard": s.index, "start": s.start, "end": -1 if s.end is None else s.end} for s in shards]


def _frame_block(rows: list[tuple], shard: dict, input_size: tuple[int, int]) -> dict:
    n = len(rows)
    return {
        "video_id": np.array([shard["video_id"]] * n, dtype=object),
        "shard": np.full(n, shard["shard"], np.int32),
        "num_shards": np.full(n, shard["num_shards"], np.int32),
        "frame_index": np.array([r[0] for r in rows], np.int64),
        "image": np.stack([r[1] for r in rows]) if n else np.zeros((0, *input_size, 3), np.uint8),
        "ratio": np.array([r[2] for r in rows], np.float32),
        "img_h": np.array([r[3] for r in rows], np.int32),
        "img_w": np.array([r[4] for r in rows], np.int32),
        "shard_total": np.array([r[5] for r in rows], np.int64),
        "error": np.array([r[6] for r in rows], dtype=object),
        "stride": np.full(n, shard["stride"], np.int32),
        "fps": np.full(n, shard["fps"], np.float64),
    }


def decode_shard(batch: dict, decode: DecodeConfig, input_size: tuple[int, int]) -> Iterator[dict]:
    """Generator UDF for `map_batches(batch_size=1)`: stream a shard's letterboxed frames in blocks."""
    for i in range(len(batch["video_id"])):
        shard = {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}
        marker = np.zeros((*input_size, 3), np.uint8)
        if shard["error"]:
            yield _frame_block([(-1, marker, 1.0, 0, 0, 0, shard["error"])], shard, input_size)
            continue
        h, w = int(shard["height"]), int(shard["width"])
        ratio = letterbox_params(h, w, input_size)[0]
        end = None if shard["end"] < 0 else int(shard["end"])
        block, count, pending = [], 0, None
        try:
            frames = iter_frames(shard["uri"], int(shard["start"]), end, int(shard["stride"]), input_size,
                                 backend=decode.backend, by_time=shard["num_shards"] > 1)
            for idx, image in frames:
                if pending is not None:  # hold one frame back: the shard's last row must carry the count
                    block.append(pending)
                    if len(block) >= decode.frames_per_block:
                        yield _frame_block(block, shard, input_size)
                        block = []
                pending = (idx, image, ratio, h, w, -1, "")
                count += 1
            error = ""
        except VideoDecodeError as err:
            error = str(err)
        if error:
            # frames already sent are dropped by the driver: the whole video is recorded as failed
            block = [(-1, marker, 1.0, 0, 0, count, error)] if pending is None else \
                block + [(*pending[:5], count, error)]
        elif pending is None:
            block = [(-1, marker, 1.0, 0, 0, 0, "")]
        else:
            block.append((*pending[:5], count, ""))
        yield _frame_block(block, shard, input_size)


class PoseInference:
    """Callable class for the actor pool: the model is loaded once per actor."""

    def __init__(self, model_cfg: PoseModelConfig):
        from recognizer_core.extract.backends import build_backend

        self.cfg = model_cfg
        self.estimator = RtmoPoseEstimator(build_backend(model_cfg), model_cfg)
        self.provider = self.estimator.backend.provider

    def __call__(self, batch: dict) -> dict:
        n = len(batch["frame_index"])
        k = self.cfg.max_detections
        out = {key: batch[key] for key in ("video_id", "shard", "num_shards", "frame_index", "img_h", "img_w",
                                             "shard_total", "error", "stride", "fps")}
        out.update(num_det=np.zeros(n, np.int32), boxes=np.zeros((n, k, 4), np.float32),
                   scores=np.zeros((n, k), np.float32), keypoints=np.zeros((n, k, NUM_KEYPOINTS, 2), np.float32),
                   keypoint_scores=np.zeros((n, k, NUM_KEYPOINTS), np.float32),
                   provider=np.array([self.provider] * n, dtype=object))
        real = np.nonzero(np.asarray(batch["frame_index"]) >= 0)[0]
        if len(real):
            rows = slice(None) if len(real) == n else real  # fancy indexing would copy every image
            hws = np.stack([batch["img_h"][rows], batch["img_w"][rows]], 1)
            poses = self.estimator(np.asarray(batch["image"])[rows], batch["ratio"][rows], hws)
            for i, p in zip(real, poses):
                m = len(p)
                out["num_det"][i] = m
                out["boxes"][i, :m], out["scores"][i, :m] = p.boxes, p.scores
                out["keypoints"][i, :m], out["keypoint_scores"][i, :m] = p.keypoints, p.keypoint_scores
        return out


class VideoAssembler:
    """Collects one video's inference rows from all its shards; knows when the video is complete."""

    def __init__(self, video_id: str):
        self.video_id = video_id
        self.num_shards: int | None = None
        self.totals: dict[int, int] = {}
        self.received: dict[int, int] = {}
        self.frames: dict[int, FramePoses] = {}
        self.image_hw: tuple[int, int] = (0, 0)
        self.errors: list[str] = []
        self.stride, self.fps = 1, 0.0

    def add(self, row: dict) -> None:
        shard = int(row["shard"])
        self.stride, self.fps = int(row["stride"]), float(row["fps"])
        self.num_shards = int(row["num_shards"])
        if row["error"]:
            self.errors.append(str(row["error"]))
        if int(row["shard_total"]) >= 0:
            self.totals[shard] = int(row["shard_total"])
        idx = int(row["frame_index"])
        if idx < 0:
            return
        self.received[shard] = self.received.get(shard, 0) + 1
        m = int(row["num_det"])
        self.image_hw = (int(row["img_h"]), int(row["img_w"]))
        self.frames[idx] = FramePoses(np.array(row["boxes"][:m]), np.array(row["scores"][:m]),
                                      np.array(row["keypoints"][:m]), np.array(row["keypoint_scores"][:m]))

    @property
    def complete(self) -> bool:
        if self.num_shards is None or len(self.totals) < self.num_shards:
            return False
        return all(self.received.get(s, 0) >= n for s, n in self.totals.items())

    def ordered(self) -> tuple[np.ndarray, list[FramePoses]]:
        inds = sorted(self.frames)
        return np.asarray(inds, np.int64), [self.frames[i] for i in inds]


def make_video_clip(tracked: TrackedPoses, *, clip_id: str, label: int, label_name: str, split: str,
                    source_video: str, image_hw: tuple[int, int], fps: float, stride: int,
                    extra: dict | None = None) -> SkeletonClip:
    """The whole video as one SkeletonClip (all kept tracks, rank order); stage 3 cuts windows from it."""
    return SkeletonClip(
        clip_id=clip_id, label=int(label), keypoint=tracked.keypoint, keypoint_score=tracked.keypoint_score,
        img_shape=tuple(image_hw), total_frames=int(tracked.keypoint.shape[1]), label_name=label_name,
        split=split, source_video=source_video, fps=float(fps) / max(stride, 1), track_ids=tracked.track_ids,
        frame_inds=tracked.frame_inds, original_shape=tuple(image_hw),
        extra={"box_score": tracked.box_score, "source_fps": float(fps), "frame_stride": int(stride),
               **(extra or {})})


def write_clip_file(clip: SkeletonClip, path: str | Path, label_names: list[str] | None = None) -> Path:
    """One clip as a skeleton-store Parquet file, atomically (temp name + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clip.validate(str(path))
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        pq.write_table(clips_to_table([clip], label_names), tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_clip_file(path: str | Path) -> SkeletonClip:
    clips = clips_from_batch(pq.read_table(path), copy=True)
    if len(clips) != 1:
        raise ValueError(f"{path}: expected one clip per video file, found {len(clips)}")
    return clips[0]
