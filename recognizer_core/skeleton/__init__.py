"""Skeleton data: the COCO-17 layout, the SkeletonClip record, the Parquet store, the mmaction2 pkl bridge
and the synthetic demo data. Light imports only (numpy/pyarrow); no Ray, no torch."""
from .clip import SkeletonClip, SkeletonDataError
from .coco import BONES, FLIP_PAIRS, JOINT_NAMES, LEFT_JOINTS, NUM_JOINTS, RIGHT_JOINTS
from .store import CLIP_SCHEMA, SkeletonDataset, clip_from_row, clips_from_batch, write_dataset

__all__ = ["BONES", "CLIP_SCHEMA", "FLIP_PAIRS", "JOINT_NAMES", "LEFT_JOINTS", "NUM_JOINTS", "RIGHT_JOINTS",
           "SkeletonClip", "SkeletonDataError", "SkeletonDataset", "clip_from_row", "clips_from_batch",
           "write_dataset"]
