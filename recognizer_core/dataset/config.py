"""Typed config of stage 3, building a skeleton dataset: windows, splits, output (rayjobs/build_dataset.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recognizer_core.config import StrictModel


class WindowConfig(StrictModel):
    clip_len: int = Field(0, ge=0, description="frames per window; 0 = the whole video is one clip")
    stride: int = Field(0, ge=0, description="frames between window starts; 0 = clip_len (no overlap)")
    min_frames: int = Field(1, ge=1, description="a video shorter than clip_len is kept whole if it has this many")
    num_person: int = Field(4, ge=1, description="persons kept per window (top length x score, stable order)")
    min_person_frames: int = Field(1, ge=1, description="a person must appear in this many window frames")
    cover_end: bool = Field(False, description="add a last window ending at the video's last frame where the "
                                               "stride leaves frames in no window (it overlaps the one before)")


class SplitConfig(StrictModel):
    mode: Literal["given", "ratio", "given_or_ratio"] = Field(
        "given_or_ratio", description="given = split from folder/CSV; ratio = random by video; "
                                      "given_or_ratio = given where known, ratio for the rest")
    ratios: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="train, val, test fractions of each label's videos (largest remainder; "
                                     "a label with >= 3 videos gets >= 1 val and >= 1 test video where > 0)")
    seed: int = Field(0, description="ratio splits order each label's videos by a hash of (seed, video id): "
                                     "adding videos moves only those next to a cut")

    @model_validator(mode="after")
    def _check_ratios(self) -> "SplitConfig":
        if any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1.0) > 1e-6:
            raise ValueError(f"split.ratios must be >= 0 and sum to 1, got {list(self.ratios)}")
        return self


class DatasetBuildConfig(StrictModel):
    """Stage 3: per-video skeletons -> windows, labels, splits -> Parquet skeleton dataset (+ mmaction2 pkl)."""

    poses: str = Field("outputs/poses", description="output folder (or URI) of extract_poses.py")
    output: str = Field("outputs/dataset", description="skeleton dataset folder to write (shared path or URI "
                                                       "on a cluster; relative = from the driver's cwd)")
    window: WindowConfig = WindowConfig()
    split: SplitConfig = SplitConfig()
    rows_per_file: int = Field(512, ge=1, description="clips per Parquet part file")
    write_pkl: bool = Field(False, description="also write mmaction2 PoseDataset pkl files (one per split)")
    pkl_dir: str = Field("", description="folder of the pkl files; empty = <output>/mmaction_pkl")
    label_names: list[str] = Field([], description="override class names (index order); empty = from extraction")
    overwrite: bool = Field(True, description="replace an existing dataset in output (written atomically)")
    use_ray: bool = Field(True, description="window videos in Ray tasks (False: in this process)")
    num_cpus_per_task: float = Field(1.0, gt=0, description="CPUs per windowing task")
    ray_address: str = Field("", description="Ray address; empty = $RAY_ADDRESS or a private local Ray")
