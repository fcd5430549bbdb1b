"""The COCO-17 body layout used by RTMO / mmpose and mmaction2's `dataset='coco'` skeleton transforms."""
from __future__ import annotations

import numpy as np

JOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_JOINTS = len(JOINT_NAMES)

# (child, parent) pairs of mmaction2 1.2.0 `JointToBone(dataset='coco')`: bone[v1] = joint[v1] - joint[v2].
# The root (nose) points at itself, so its bone is zero; the order matters for bone features.
BONES: tuple[tuple[int, int], ...] = (
    (0, 0), (1, 0), (2, 0), (3, 1), (4, 2), (5, 0), (6, 0), (7, 5), (8, 6), (9, 7), (10, 8),
    (11, 0), (12, 0), (13, 11), (14, 12), (15, 13), (16, 14),
)

# mmaction2's Flip / GeneratePoseTarget defaults for COCO-17 (left_kp, right_kp).
LEFT_JOINTS: tuple[int, ...] = (1, 3, 5, 7, 9, 11, 13, 15)
RIGHT_JOINTS: tuple[int, ...] = (2, 4, 6, 8, 10, 12, 14, 16)
FLIP_PAIRS: tuple[tuple[int, int], ...] = tuple(zip(LEFT_JOINTS, RIGHT_JOINTS))
# Index permutation that swaps left and right joints: keypoint[..., FLIP_INDEX, :] mirrors the labels.
FLIP_INDEX: tuple[int, ...] = tuple(
    {**{l: r for l, r in FLIP_PAIRS}, **{r: l for l, r in FLIP_PAIRS}}.get(v, v) for v in range(NUM_JOINTS)
)

# Per-keypoint OKS sigmas of the COCO keypoint metric (pycocotools / mmpose): AP evaluation and tracking.
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89],
                       np.float32) / 10.0

# The drawing skeleton (mmpose / mmaction2 GeneratePoseTarget limbs), for overlays and demo figures.
LIMBS: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 3), (2, 4), (0, 5), (5, 7), (7, 9), (0, 6), (6, 8), (8, 10),
    (5, 11), (11, 13), (13, 15), (6, 12), (12, 14), (14, 16), (11, 12),
)
