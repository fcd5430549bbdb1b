"""Stage 3: cut per-video skeleton clips into training windows, and assign splits grouped by source video.

Persons are re-ranked inside each window (frames seen x mean detection score) and the top `num_person`
kept in that order, so mmaction2's FormatGCNInput, which keeps the first M persons, sees the main actors.
Splits are drawn per source video (stratified by label), so windows of one video never straddle splits.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from recognizer_core.skeleton.clip import SkeletonClip

SPLITS = ("train", "val", "test")


def window_starts(num_frames: int, clip_len: int, stride: int, min_frames: int = 1,
                  cover_end: bool = False) -> list[int]:
    """Start frames of the windows of a clip; clip_len 0 = one window over the whole clip.

    A clip shorter than clip_len gives one (short) window if it has at least min_frames frames. `cover_end`
    adds a last window ending at the clip's last frame where the stride would leave frames unseen (recognition
    scores a whole video; training windows keep the stride's grid).
    """
    if num_frames < min_frames or num_frames == 0:
        return []
    if clip_len <= 0 or num_frames <= clip_len:
        return [0]
    stride = stride or clip_len
    starts = list(range(0, num_frames - clip_len + 1, stride))
    if cover_end and starts[-1] != num_frames - clip_len:
        starts.append(num_frames - clip_len)
    return starts


def _person_rank(clip: SkeletonClip, t0: int, t1: int, min_person_frames: int) -> list[int]:
    seen = clip.keypoint_score[:, t0:t1].max(-1) > 0                         # (M, t)
    box_score = clip.extra.get("box_score")
    if isinstance(box_score, np.ndarray) and box_score.shape == clip.keypoint_score.shape[:2]:
        score = box_score[:, t0:t1]
    else:
        score = clip.keypoint_score[:, t0:t1].mean(-1)
    frames = seen.sum(1)
    mean_score = np.where(frames > 0, (score * seen).sum(1) / np.maximum(frames, 1), 0.0)
    rank = frames * mean_score
    keep = [m for m in np.argsort(-rank, kind="stable") if frames[m] >= min_person_frames]
    return [int(m) for m in keep]


def make_windows(clip: SkeletonClip, clip_len: int, stride: int = 0, num_person: int = 4, min_frames: int = 1,
                 min_person_frames: int = 1, cover_end: bool = False) -> list[SkeletonClip]:
    """Windows of `clip` as new clips (id `<clip_id>@<start>`, or the clip_id itself for a whole clip).

    Windows in which nobody is seen are dropped. frame_inds keep the source video's frame numbers.
    """
    out = []
    starts = window_starts(clip.num_frames, clip_len, stride, min_frames, cover_end)
    whole = clip_len <= 0
    for t0 in starts:
        t1 = clip.num_frames if whole else min(t0 + clip_len, clip.num_frames)
        persons = _person_rank(clip, t0, t1, min_person_frames)[:num_person]
        if not persons:
            continue
        extra = {k: v for k, v in clip.extra.items() if k != "box_score"}
        box_score = clip.extra.get("box_score")
        if isinstance(box_score, np.ndarray) and box_score.ndim == 2:
            extra["box_score"] = np.ascontiguousarray(box_score[persons, t0:t1])
        extra["window_start"] = int(t0)
        frame_inds = clip.frame_inds[t0:t1] if clip.frame_inds is not None else np.arange(t0, t1, dtype=np.int32)
        out.append(SkeletonClip(
            clip_id=clip.clip_id if len(starts) == 1 and whole else f"{clip.clip_id}@{t0}",
            label=clip.label, keypoint=np.ascontiguousarray(clip.keypoint[persons, t0:t1]),
            keypoint_score=np.ascontiguousarray(clip.keypoint_score[persons, t0:t1]), img_shape=clip.img_shape,
            total_frames=t1 - t0, label_name=clip.label_name, split=clip.split,
            source_video=clip.source_video or clip.clip_id, fps=clip.fps,
            track_ids=None if clip.track_ids is None else clip.track_ids[persons],
            frame_inds=np.asarray(frame_inds, np.int32), original_shape=clip.original_shape, extra=extra))
    return out


def assign_splits(videos: Iterable[tuple[str, str, str]], ratios: Sequence[float] = (0.8, 0.1, 0.1),
                  seed: int = 0, mode: str = "given_or_ratio") -> dict[str, str]:
    """{video: split} from (video, label_name, given_split) triples.

    mode 'given' keeps the given split (error if one is missing); 'ratio' ignores it and draws splits by
    `ratios` (train, val, test) per label, shuffled with `seed`; 'given_or_ratio' draws only for videos
    without a given split. Deterministic for a given set of videos and seed.
    """
    if len(ratios) != 3 or abs(sum(ratios) - 1) > 1e-6 or min(ratios) < 0:
        raise ValueError(f"split ratios must be 3 non-negative numbers summing to 1, got {list(ratios)}")
    result: dict[str, str] = {}
    by_label: dict[str, list[str]] = defaultdict(list)
    for video, label, given in videos:
        if given and mode != "ratio":
            result[video] = given
        elif mode == "given":
            raise ValueError(f"video {video!r} has no given split (split.mode=given); set split.mode=ratio "
                             "or give splits in the folder layout / CSV")
        else:
            by_label[label].append(video)
    rng = random.Random(seed)
    for label in sorted(by_label):
        group = sorted(set(by_label[label]))
        rng.shuffle(group)
        n = len(group)
        n_train = int(round(ratios[0] * n))
        n_val = min(int(round(ratios[1] * n)), n - n_train)
        if ratios[0] > 0 and n_train == 0 and n > 0:
            n_train = 1
            n_val = min(n_val, n - 1)
        for i, video in enumerate(group):
            result[video] = SPLITS[0] if i < n_train else SPLITS[1] if i < n_train + n_val else SPLITS[2]
    return result
