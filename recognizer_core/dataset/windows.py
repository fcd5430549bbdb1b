"""Stage 3: cut per-video skeleton clips into training windows, and assign splits grouped by source video.

Persons are re-ranked inside each window (frames seen x mean detection score) and the top `num_person`
kept in that order, so mmaction2's FormatGCNInput, which keeps the first M persons, sees the main actors.
Splits are drawn per source video (stratified by label), so windows of one video never straddle splits.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Iterable, Iterator, Sequence

import numpy as np

from recognizer_core.skeleton.clip import SkeletonClip

SPLITS = ("train", "val", "test")


def window_starts(num_frames: int, clip_len: int, stride: int, min_frames: int = 1,
                  cover_end: bool = False) -> list[int]:
    """Start frames of the windows of a clip; clip_len 0 = one window over the whole clip.

    A clip shorter than clip_len gives one (short) window if it has at least min_frames frames. `cover_end`
    adds a last window ending at the clip's last frame where the stride would leave frames unseen (recognition
    scores a whole video; training windows keep the stride's grid unless `window.cover_end` is set).
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


def _person_rank(seen: np.ndarray, score: np.ndarray, min_person_frames: int) -> list[int]:
    """People (rows of `seen` / `score`, (P, t)) by frames seen x mean score, best first."""
    frames = seen.sum(1)
    mean_score = np.where(frames > 0, (score * seen).sum(1) / np.maximum(frames, 1), 0.0)
    rank = frames * mean_score
    keep = [m for m in np.argsort(-rank, kind="stable") if frames[m] >= min_person_frames]
    return [int(m) for m in keep]


def per_frame_extras(clip: SkeletonClip) -> list[str]:
    """Names of the clip's extra arrays with a value per person and frame (M, T): box_score, frame_track_ids."""
    shape = clip.keypoint_score.shape[:2]
    return [k for k, v in clip.extra.items() if isinstance(v, np.ndarray) and v.shape == shape]


def window_people(clip: SkeletonClip, t0: int, t1: int, num_person: int, min_person_frames: int = 1):
    """Frames [t0, t1) as the window's `num_person` best people, one row each (frames seen x detection score):
    (keypoint, keypoint_score, {per-frame extra: (P, t)}, track ids or None). A stored row that holds several
    people one after another (tracking reuses rows; frame_track_ids says whose each frame is) counts as one
    person per track id, each with only its own frames, so a window (a whole video at window.clip_len=0) never
    splices two people into one. People are ranked from masks; arrays are built for the chosen ones only."""
    kp, sc = clip.keypoint[:, t0:t1], clip.keypoint_score[:, t0:t1]
    per_frame = {k: clip.extra[k][:, t0:t1] for k in per_frame_extras(clip)}
    ids = None if clip.track_ids is None else np.asarray(clip.track_ids, np.int32)
    owner = per_frame.get("frame_track_ids")
    rows: list[int] = list(range(kp.shape[0]))
    masks: list[np.ndarray | None] = [None] * len(rows)
    people = list(ids) if ids is not None else rows.copy()
    if owner is not None:
        rows, masks, people = [], [], []
        for m in range(kp.shape[0]):
            present = np.unique(owner[m][owner[m] >= 0])
            if len(present) > 1:
                rows += [m] * len(present)
                masks += [owner[m] == tid for tid in present]
                people += [int(tid) for tid in present]
            else:
                rows.append(m)
                masks.append(None)
                people.append(int(present[0]) if len(present) else int(ids[m]) if ids is not None else m)
    seen = (sc.max(-1) > 0)[rows]                                               # (P, t)
    for i, mask in enumerate(masks):
        if mask is not None:
            seen[i] &= mask
    box = per_frame.get("box_score")
    score = box[rows] if box is not None else sc[rows].mean(-1)
    chosen = _person_rank(seen, score, min_person_frames)[:num_person]

    def take(a: np.ndarray, fill) -> np.ndarray:   # the chosen people's rows, others' frames set to `fill`
        out = a[[rows[p] for p in chosen]]
        for i, p in enumerate(chosen):
            if masks[p] is not None:
                out[i][~masks[p]] = fill
        return out
    extras = {k: take(v, -1 if k == "frame_track_ids" else 0) for k, v in per_frame.items()}
    track_ids = None if ids is None and owner is None else np.asarray([people[p] for p in chosen], np.int32)
    return take(kp, 0), take(sc, 0), extras, track_ids


def make_windows(clip: SkeletonClip, clip_len: int, stride: int = 0, num_person: int = 4, min_frames: int = 1,
                 min_person_frames: int = 1, cover_end: bool = False) -> list[SkeletonClip]:
    """Windows of `clip` as new clips (id `<clip_id>@<start>`, or the clip_id itself for a whole clip), each with
    the window's `num_person` best people (frames seen x detection score; `window_people`).

    Windows in which nobody is seen are dropped. frame_inds keep the source video's frame numbers.
    """
    return list(iter_windows(clip, clip_len, stride, num_person, min_frames, min_person_frames, cover_end))


def iter_windows(clip: SkeletonClip, clip_len: int, stride: int = 0, num_person: int = 4, min_frames: int = 1,
                 min_person_frames: int = 1, cover_end: bool = False) -> Iterator[SkeletonClip]:
    """make_windows one window at a time: each window copies its frames, so a whole day's list of them held
    many times the video's own arrays (recognize scores them a batch at a time)."""
    starts = window_starts(clip.num_frames, clip_len, stride, min_frames, cover_end)
    whole = clip_len <= 0
    for t0 in starts:
        t1 = clip.num_frames if whole else min(t0 + clip_len, clip.num_frames)
        kp, sc, per_frame, ids = window_people(clip, t0, t1, num_person, min_person_frames)
        if not len(kp):
            continue
        extra = {k: v for k, v in clip.extra.items() if k not in per_frame}
        extra.update({k: np.ascontiguousarray(v) for k, v in per_frame.items()})
        extra["window_start"] = int(t0)
        frame_inds = clip.frame_inds[t0:t1] if clip.frame_inds is not None else np.arange(t0, t1, dtype=np.int32)
        yield SkeletonClip(
            clip_id=clip.clip_id if len(starts) == 1 and whole else f"{clip.clip_id}@{t0}",
            label=clip.label, keypoint=np.ascontiguousarray(kp),
            keypoint_score=np.ascontiguousarray(sc), img_shape=clip.img_shape,
            total_frames=t1 - t0, label_name=clip.label_name, split=clip.split,
            source_video=clip.source_video or clip.clip_id, fps=clip.fps,
            track_ids=ids,
            frame_inds=np.asarray(frame_inds, np.int32), original_shape=clip.original_shape, extra=extra)


def split_counts(n: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    """(train, val, test) video counts of a label with n videos: largest remainder over the three splits (round()
    per split gave 5 videos at 0.8/0.1/0.1 as 4/0/1), then at least one val and one test video where n >= 3 and
    that ratio is > 0 (else 10 classes x 5 videos had no val video at all), and one train video where n >= 1."""
    exact = [r * n for r in ratios]
    counts = [int(x) for x in exact]
    # ties go to the earlier split (train, val, test): deterministic, and train comes first
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    for i, floor in ((0, 1), (1, 3), (2, 3)):
        if ratios[i] > 0 and counts[i] == 0 and n >= floor:
            donor = max(range(3), key=lambda j: (counts[j], -j))  # the largest split: n >= 3 leaves it >= 1
            counts[donor] -= 1
            counts[i] += 1
    return counts[0], counts[1], counts[2]


def _rank(seed: int, video: str) -> str:
    # A video's place in its label's order depends only on the seed and its own id, so adding or removing videos
    # never reshuffles the others (one shared RNG shuffling by position re-drew every split after a new video).
    return hashlib.sha256(f"{seed}:{video}".encode()).hexdigest()


def assign_splits(videos: Iterable[tuple[str, str, str]], ratios: Sequence[float] = (0.8, 0.1, 0.1),
                  seed: int = 0, mode: str = "given_or_ratio") -> dict[str, str]:
    """{video: split} from (video, label_name, given_split) triples.

    mode 'given' keeps the given split (error if one is missing); 'ratio' ignores it and draws splits by
    `ratios` (train, val, test) per label; 'given_or_ratio' draws only for videos without a given split.
    Drawing: each label's videos are ordered by a hash of (seed, video id) and cut into train | val | test by
    `split_counts`. A label's splits depend only on that label's videos; adding a video moves at most the few
    videos next to a cut (the counts shift by one), never the rest.
    """
    if len(ratios) != 3 or abs(sum(ratios) - 1) > 1e-6 or min(ratios) < 0:
        raise ValueError(f"split ratios must be 3 non-negative numbers summing to 1, got {list(ratios)}")
    result: dict[str, str] = {}
    by_label: dict[str, set[str]] = defaultdict(set)
    for video, label, given in videos:
        if given and mode != "ratio":
            result[video] = given
        elif mode == "given":
            raise ValueError(f"video {video!r} has no given split (split.mode=given); set split.mode=ratio "
                             "or give splits in the folder layout / CSV")
        else:
            by_label[label].add(video)
    for group in by_label.values():
        order = sorted(group, key=lambda v: (_rank(seed, v), v))
        n_train, n_val, _ = split_counts(len(order), ratios)
        for i, video in enumerate(order):
            result[video] = SPLITS[0] if i < n_train else SPLITS[1] if i < n_train + n_val else SPLITS[2]
    return result


def missing_labels(labels_by_split: dict[str, set[str]], splits: Iterable[str]) -> dict[str, list[str]]:
    """{split: [labels with no clip in it]} for each of `splits`, over the labels seen in any split."""
    every = set().union(*labels_by_split.values()) if labels_by_split else set()
    out = {s: sorted(every - labels_by_split.get(s, set())) for s in splits}
    return {s: v for s, v in out.items() if v}
