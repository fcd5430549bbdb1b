"""The per-row functions of the extraction job (Ray-free, so they are testable without a cluster).

Flow (extract/job.py wires it into Ray Data):
  video rows -> `plan_video` (probe, cut into shards) -> `decode_shard` (CPU tasks, a generator of frame
  blocks: letterboxed model inputs) -> `PoseInference` (actor pool: RTMO backend + post-processing; each
  frame's persons packed into one compact bytes value) -> driver: `VideoAssembler` only collects a video's
  packed frames from every shard (no decoding of them) -> a Ray task per complete video runs
  `extract/finish.py:finish_video` (tracking, truncation check, the Parquet write) on any node.

Shard completeness: each shard's last frame row carries `shard_total` (frames it produced; -1 on the
others), `skipped_packets` (packets its decoder skipped as damaged) and `dropped_frames` (frames its by-time
decode left without a number of their own: `DecodeStats.dropped_frames`; both 0 on the other rows), and a
shard that produced nothing sends one marker row (frame_index -1, with `error` when the decoder failed), so the
driver knows when a video is complete whatever order the blocks arrive in.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from recognizer_core.extract.config import DecodeConfig, PoseModelConfig
from recognizer_core.extract.rtmo import NUM_KEYPOINTS, FramePoses, RtmoPoseEstimator
from recognizer_core.extract.frame_image import letterbox_params
from recognizer_core.extract.video import (DecodeStats, VideoDecodeError, frame_stride_for, iter_frames, plan_shards,
                                           probe_video)


def plan_video(item: dict, decode: DecodeConfig) -> list[dict]:
    """One row per decode shard of a video, or one row with `error` when it cannot be opened."""
    base = {"video_id": item["video_id"], "uri": item["uri"], "error": "", "shard": 0, "num_shards": 1,
            "start": 0, "end": -1, "stride": 1, "fps": 0.0, "width": 0, "height": 0, "declared": 0}
    if int(item.get("size", 1)) == 0:
        return [{**base, "error": "empty file (0 bytes)"}]
    try:
        info = probe_video(item["uri"])
    except VideoDecodeError as err:
        return [{**base, "error": str(err)}]
    stride = frame_stride_for(info.fps, decode.frame_stride, decode.target_fps)
    shards = plan_shards(info.num_frames, decode.shard_frames if info.seekable else max(info.num_frames, 1))
    common = {**base, "num_shards": len(shards), "stride": stride, "fps": info.fps, "width": info.width,
              "height": info.height, "declared": info.num_frames}
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
        # the decoder's counts, on the shard's last row only (error rows and the other rows carry none)
        "skipped_packets": np.array([r[7] if len(r) > 7 else 0 for r in rows], np.int64),
        "dropped_frames": np.array([r[8] if len(r) > 8 else 0 for r in rows], np.int64),
        "stride": np.full(n, shard["stride"], np.int32),
        "fps": np.full(n, shard["fps"], np.float64),
        "declared": np.full(n, shard["declared"], np.int64),
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
        block, count, pending, stats = [], 0, None, DecodeStats()
        try:
            frames = iter_frames(shard["uri"], int(shard["start"]), end, int(shard["stride"]), input_size,
                                 backend=decode.backend, by_time=shard["num_shards"] > 1, stats=stats)
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
            block = [(-1, marker, 1.0, 0, 0, 0, "", stats.skipped_packets, stats.dropped_frames)]
        else:
            block.append((*pending[:5], count, "", stats.skipped_packets, stats.dropped_frames))
        yield _frame_block(block, shard, input_size)


POSE_FIELDS = 4 + 1 + NUM_KEYPOINTS * 2 + NUM_KEYPOINTS   # box, score, keypoints xy, keypoint scores


def pack_poses(p: FramePoses) -> bytes:
    """One frame's persons as float32 rows [box(4), score, keypoints(34), keypoint scores(17)]: a few hundred
    bytes per frame instead of arrays padded to max_detections, so the driver only forwards small values."""
    rows = [p.boxes, p.scores[:, None], p.keypoints.reshape(len(p), 2 * NUM_KEYPOINTS), p.keypoint_scores]
    return np.concatenate(rows, axis=1).astype(np.float32).tobytes()


def unpack_poses(data: bytes) -> FramePoses:
    rows = np.frombuffer(data, np.float32).reshape(-1, POSE_FIELDS)
    k = NUM_KEYPOINTS
    return FramePoses(rows[:, :4].copy(), rows[:, 4].copy(), rows[:, 5:5 + 2 * k].reshape(-1, k, 2).copy(),
                      rows[:, 5 + 2 * k:].copy())


class PoseInference:
    """Callable class for the actor pool: the model is loaded once per actor."""

    def __init__(self, model_cfg: PoseModelConfig):
        from recognizer_core.extract.backends import build_backend

        self.cfg = model_cfg
        self.estimator = RtmoPoseEstimator(build_backend(model_cfg), model_cfg)
        self.provider = self.estimator.backend.provider

    def __call__(self, batch: dict) -> dict:
        n = len(batch["frame_index"])
        out = {key: batch[key] for key in ("video_id", "shard", "num_shards", "frame_index", "img_h", "img_w",
                                             "shard_total", "error", "skipped_packets", "dropped_frames", "stride",
                                             "fps", "declared")}
        packed = np.array([b""] * n, dtype=object)
        real = np.nonzero(np.asarray(batch["frame_index"]) >= 0)[0]
        if len(real):
            rows = slice(None) if len(real) == n else real  # fancy indexing would copy every image
            hws = np.stack([batch["img_h"][rows], batch["img_w"][rows]], 1)
            poses = self.estimator(np.asarray(batch["image"])[rows], batch["ratio"][rows], hws)
            for i, p in zip(real, poses):
                packed[i] = pack_poses(p)
        out["poses"] = packed
        out["provider"] = np.array([self.provider] * n, dtype=object)
        return out


class VideoAssembler:
    """Collects one video's packed inference rows from all its shards; knows when the video is complete."""

    def __init__(self, video_id: str):
        self.video_id = video_id
        self.num_shards: int | None = None
        self.totals: dict[int, int] = {}
        self.skipped: dict[int, int] = {}  # per shard: packets its decoder skipped as damaged
        self.dropped: dict[int, int] = {}  # per shard: frames its by-time decode dropped (timestamps collided)
        self.received: dict[int, int] = {}
        self.frames: dict[int, bytes] = {}
        self.image_hw: tuple[int, int] = (0, 0)
        self.errors: list[str] = []
        self.stride, self.fps, self.declared = 1, 0.0, 0

    def add(self, row: dict) -> None:
        """One row of PoseInference's output (a dict of its columns' values for one frame)."""
        shard = int(row["shard"])
        self.stride, self.fps = int(row["stride"]), float(row["fps"])
        self.declared, self.num_shards = int(row["declared"]), int(row["num_shards"])
        if row["error"]:
            self.errors.append(str(row["error"]))
        if int(row["shard_total"]) >= 0:
            self.totals[shard] = int(row["shard_total"])
            self.skipped[shard] = int(row.get("skipped_packets", 0))
            self.dropped[shard] = int(row.get("dropped_frames", 0))
        idx = int(row["frame_index"])
        if idx < 0:
            return
        self.received[shard] = self.received.get(shard, 0) + 1
        self.image_hw = (int(row["img_h"]), int(row["img_w"]))
        self.frames[idx] = row["poses"]

    @property
    def complete(self) -> bool:
        if self.num_shards is None or len(self.totals) < self.num_shards:
            return False
        return all(self.received.get(s, 0) >= n for s, n in self.totals.items())

    def ordered(self) -> tuple[np.ndarray, list[FramePoses]]:
        inds = sorted(self.frames)
        return np.asarray(inds, np.int64), [unpack_poses(self.frames[i]) for i in inds]

    def payload(self) -> dict:
        """What the per-video task needs: frame indices in order, their packed persons, and the video facts."""
        inds = sorted(self.frames)
        return {"frame_inds": np.asarray(inds, np.int64), "poses": [self.frames[i] for i in inds],
                "image_hw": self.image_hw, "stride": self.stride, "fps": self.fps, "declared": self.declared,
                "errors": list(self.errors), "num_shards": self.num_shards or 1,
                "skipped_packets": sum(self.skipped.values()), "dropped_frames": sum(self.dropped.values())}
