"""Typed config of stage 2, linking per-frame detections into person tracks (used by the extraction job)."""
from __future__ import annotations

from pydantic import Field

from recognizer_core.config import StrictModel


class TrackingConfig(StrictModel):
    iou_weight: float = Field(0.5, ge=0, le=1, description="similarity = w * box IoU + (1 - w) * keypoint OKS")
    match_threshold: float = Field(0.2, ge=0, le=1, description="minimum similarity of a track-detection match")
    max_missing: int = Field(10, ge=0, description="frames a track may go unseen before it ends")
    min_track_len: int = Field(5, ge=1, description="tracks seen in fewer frames are dropped")
    min_track_score: float = Field(0.3, ge=0, le=1, description="tracks with lower mean detection score are dropped")
    max_tracks: int = Field(16, ge=1, description="persons kept at any one time: a track is stored if it is "
                            "among the max_tracks best (length x score) seen in one of its frames; stage 3 keeps "
                            "num_person of them per window")
    row_gap: int = Field(300, ge=0, description="a stored person row takes a later track once empty for this many "
                         "frames (of the stored clip, after decode.frame_stride); keep it above the longest "
                         "window stage 3 or recognize cuts, so no window holds two people in one row")
