"""SYNTHETIC demo *sequence*: a minute-long scene in which fights and falls start and stop, with the true
event intervals, for the embedded default of rayjobs/recognize.py and for tests.

Built from the demo clip generator (demo_data.py): segments of the fight task (Fight / NonFight) and the
falldown task (Falldown / Normal) follow each other on one timeline at demo_body.FPS. Each segment's people
are new tracks (their track ids never repeat), and every clip's pixel coordinates are rescaled per axis to the
sequence's frame size (the pipeline normalises each axis by the frame size, so the model sees the same input).
Not real footage, and marked synthetic.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .clip import SkeletonClip
from .demo_body import FPS
from .demo_data import DEMO_LABEL_NAMES, _make_clip

# (task, label, seconds): about a minute with 3 fights and 2 falls between normal activity
DEFAULT_SCRIPT: tuple[tuple[str, int, float], ...] = (
    ("fight", 0, 6), ("fight", 1, 6), ("fight", 0, 5), ("falldown", 0, 4), ("falldown", 1, 4),
    ("fight", 0, 6), ("fight", 1, 7), ("falldown", 0, 5), ("fight", 0, 4), ("falldown", 1, 4),
    ("fight", 0, 4), ("fight", 1, 5))
IMG_SHAPE = (720, 1280)


def _segment_clips(task: str, label: int, frames: int, seed: int, first_index: int) -> tuple[list[SkeletonClip], int]:
    """Demo clips of one class whose lengths add up to at least `frames`; (clips, next index)."""
    clips, total, i = [], 0, first_index
    while total < frames:
        c = _make_clip(task, i, seed, label, "test")
        clips.append(c)
        total += c.num_frames
        i += 1
    return clips, i


def make_demo_sequence(script: Sequence[tuple[str, int, float]] = DEFAULT_SCRIPT, seed: int = 0,
                       img_shape: tuple[int, int] = IMG_SHAPE) -> tuple[SkeletonClip, list[dict]]:
    """(one whole-video SkeletonClip, true events [{label, start_s, end_s, task}]) of the scripted scene."""
    H, W = img_shape
    gen_seed = 10_000 + seed  # other clips than the demo training set (seed 0, indices < demo_num_clips)
    parts: list[tuple[int, SkeletonClip]] = []  # (start frame, clip cut to its segment)
    truth, t, index = [], 0, 0
    for task, label, seconds in script:
        if task not in DEMO_LABEL_NAMES or label not in (0, 1):
            raise ValueError(f"script entry {(task, label, seconds)}: task must be fight/falldown, label 0/1")
        frames = int(round(seconds * FPS))
        clips, index = _segment_clips(task, label, frames, gen_seed, index)
        pos = t
        for c in clips:
            n = min(c.num_frames, t + frames - pos)
            if n <= 0:
                break
            parts.append((pos, c, n))
            pos += n
        if label == 1:
            truth.append({"label": DEMO_LABEL_NAMES[task][1], "task": task, "start_s": t / FPS,
                          "end_s": (t + frames) / FPS})
        t += frames
    M = sum(c.num_person for _, c, _ in parts)
    kp = np.zeros((M, t, 17, 2), np.float32)
    sc = np.zeros((M, t, 17), np.float32)
    m = 0
    for start, c, n in parts:
        h, w = c.img_shape
        scale = np.array([W / w, H / h], np.float32)
        kp[m:m + c.num_person, start:start + n] = c.keypoint[:, :n] * scale
        sc[m:m + c.num_person, start:start + n] = c.keypoint_score[:, :n]
        m += c.num_person
    clip = SkeletonClip(
        clip_id=f"synthetic_sequence_{seed}", label=0, keypoint=kp, keypoint_score=sc, img_shape=(H, W),
        total_frames=t, label_name="", source_video=f"synthetic://demo_sequence_{seed}", fps=FPS,
        track_ids=np.arange(M, dtype=np.int32), frame_inds=np.arange(t, dtype=np.int32),
        extra={"synthetic": True, "source_fps": FPS})
    return clip, truth
