"""Recognition windows: the training set's windowing (dataset/windows.py `make_windows`) over a whole video.

- scene windows (interactions such as fights): the top-M tracks of each window, ranked as build_dataset
  ranks them, one window per start;
- track windows (per-person classes such as falls): one window per track and start, that track alone, on the
  same grid of starts whether or not the track shares its stored row with others (tracking reuses rows).
Window length is the model's training clip length at its fps; a video at another fps is resampled to the
model's fps first (nearest frame in time), so a window spans the same seconds as a training clip.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal

import numpy as np

from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.dataset.windows import iter_windows, per_frame_extras, window_starts


@dataclass
class Window:
    video: str
    kind: Literal["scene", "track"]
    start_s: float
    end_s: float
    track_ids: list[int]
    # None once scored: recognize_clip keeps only the metadata (the arrays of every window of a day's video
    # were many times the video's own)
    clip: SkeletonClip | None = field(repr=False)

    @property
    def key(self) -> str:
        """Windows with the same key form one score sequence (the scene, or one track)."""
        return "scene" if self.kind == "scene" else f"track{self.track_ids[0]}"


def frame_times(clip: SkeletonClip) -> np.ndarray:
    """Seconds of each frame in the source video: frame_inds / source fps, else index / fps."""
    fps = clip.fps or 30.0
    if clip.frame_inds is None:
        return np.arange(clip.num_frames) / fps
    source_fps = float(clip.extra.get("source_fps", 0) or fps * int(clip.extra.get("frame_stride", 1) or 1))
    return np.asarray(clip.frame_inds, np.float64) / source_fps


def nearest_frames(times: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the frame (sorted `times`) nearest each `grid` time; a tie goes to the earlier frame. Batch mode's
    resampling and stream mode's windows both pick frames by this one rule, so the two modes show the same frames."""
    idx = np.clip(np.searchsorted(times, grid), 0, len(times) - 1)
    prev = np.clip(idx - 1, 0, len(times) - 1)
    return np.where(np.abs(times[prev] - grid) <= np.abs(times[idx] - grid) + 1e-6, prev, idx)


def resample(clip: SkeletonClip, fps: float, tolerance: float = 0.02) -> tuple[SkeletonClip, np.ndarray]:
    """(clip at `fps`, seconds of its frames). Unchanged when its frame rate is within 2 % of `fps`."""
    times = frame_times(clip)
    have = clip.fps or 30.0
    if abs(have - fps) <= tolerance * fps or clip.num_frames < 2:
        return clip, times
    grid = np.arange(times[0], times[-1] + 0.5 / fps, 1.0 / fps)
    idx = nearest_frames(times, grid)
    extra = dict(clip.extra)
    extra.update({k: np.ascontiguousarray(extra[k][:, idx]) for k in per_frame_extras(clip)})
    out = SkeletonClip(
        clip_id=clip.clip_id, label=clip.label, keypoint=np.ascontiguousarray(clip.keypoint[:, idx]),
        keypoint_score=np.ascontiguousarray(clip.keypoint_score[:, idx]), img_shape=clip.img_shape,
        total_frames=len(idx), label_name=clip.label_name, split=clip.split, source_video=clip.source_video,
        fps=fps, track_ids=clip.track_ids,
        frame_inds=None if clip.frame_inds is None else np.asarray(clip.frame_inds)[idx].astype(np.int32),
        original_shape=clip.original_shape, extra=extra)
    return out, times[idx]


def _track_clip(clip: SkeletonClip, m: int, a: int = 0, b: int | None = None, tid: int | None = None,
                keep: np.ndarray | None = None) -> SkeletonClip:
    """Row m of `clip` over frames [a, b) as a one-person clip; frames where `keep` (b - a,) is False are blanked
    (no keypoints, score 0, frame_track_ids -1), as window_people blanks a reused row's other people."""
    b = clip.num_frames if b is None else b
    kp, sc = clip.keypoint[m:m + 1, a:b], clip.keypoint_score[m:m + 1, a:b]
    per_frame = {k: clip.extra[k][m:m + 1, a:b] for k in per_frame_extras(clip)}
    if keep is not None:
        def blank(x: np.ndarray, fill) -> np.ndarray:
            x = x.copy()
            x[0, ~keep] = fill
            return x
        kp, sc = blank(kp, 0), blank(sc, 0)
        per_frame = {k: blank(v, -1 if k == "frame_track_ids" else 0) for k, v in per_frame.items()}
    extra = dict(clip.extra)
    extra.update(per_frame)
    return SkeletonClip(
        clip_id=clip.clip_id, label=clip.label, keypoint=kp, keypoint_score=sc, img_shape=clip.img_shape,
        total_frames=b - a, label_name=clip.label_name, split=clip.split, source_video=clip.source_video,
        fps=clip.fps, track_ids=np.asarray([_track_id(clip, m) if tid is None else tid], np.int32),
        frame_inds=None if clip.frame_inds is None else clip.frame_inds[a:b],
        original_shape=clip.original_shape, extra=extra)


def _track_parts(clip: SkeletonClip, window_frames: int, stride: int,
                 cover_end: bool) -> list[tuple[SkeletonClip, int]]:
    """(one-person clip, its first frame in `clip`) per person. A stored row that holds several people one after
    another (tracking reuses rows; frame_track_ids) gives one per person with the others blanked, so each person
    gets the windows it would get alone in a row: those of the whole clip's grid that see it (a part spans just
    them, cut on that grid: a copy per person of the whole row would grow with people x video length)."""
    owner = clip.extra.get("frame_track_ids")
    if not (isinstance(owner, np.ndarray) and owner.shape == clip.keypoint_score.shape[:2]):
        owner = None
    span = window_frames if window_frames > 0 else clip.num_frames
    starts = np.asarray(window_starts(clip.num_frames, window_frames, stride, 1, cover_end), np.int64)
    parts = []
    for m in range(clip.num_person):
        people = np.unique(owner[m][owner[m] >= 0]) if owner is not None else ()
        if len(people) <= 1:
            parts.append((_track_clip(clip, m), 0))
            continue
        for tid in people:
            mine = owner[m] == tid
            frames = np.nonzero(mine)[0]
            hit = starts[(starts > frames[0] - span) & (starts <= frames[-1])]
            if not len(hit):   # only in the tail that no window reaches (cover_end off)
                continue
            # the part starts on a grid start, and ends where the last window that sees this person ends (the
            # clip's end for its cover_end window), so make_windows cuts the part on the clip's grid
            a, b = int(hit[0]), min(clip.num_frames, int(hit[-1]) + span)
            parts.append((_track_clip(clip, m, a, b, int(tid), keep=mine[a:b]), a))
    return parts


def _track_id(clip: SkeletonClip, m: int) -> int:
    return int(clip.track_ids[m]) if clip.track_ids is not None else int(m)


def video_windows(clip: SkeletonClip, *, fps: float, window_frames: int, num_person: int,
                  mode: Literal["scene", "track", "both"], stride_s: float = 0.5,
                  min_person_frames: int = 1, cover_end: bool = True) -> list[Window]:
    """list(iter_video_windows(...))."""
    return list(iter_video_windows(clip, fps=fps, window_frames=window_frames, num_person=num_person, mode=mode,
                                   stride_s=stride_s, min_person_frames=min_person_frames, cover_end=cover_end))


def iter_video_windows(clip: SkeletonClip, *, fps: float, window_frames: int, num_person: int,
                       mode: Literal["scene", "track", "both"], stride_s: float = 0.5,
                       min_person_frames: int = 1, cover_end: bool = True) -> Iterator[Window]:
    """Every window of a whole-video clip, in time order (per sequence); 'both' gives scene and track windows.
    The last window ends at the video's last frame (`cover_end`), so its final fraction of a stride is scored too."""
    video = clip.source_video or clip.clip_id
    c, times = resample(clip, fps)
    stride = max(1, int(round(stride_s * fps)))
    dt = 1.0 / fps
    parts = [(c, 0, num_person, "scene")] if mode in ("scene", "both") else []
    if mode in ("track", "both"):
        parts += [(part, first, 1, "track") for part, first in _track_parts(c, window_frames, stride, cover_end)]
    for part, first, persons, kind in parts:
        for w in iter_windows(part, window_frames, stride, num_person=persons, min_frames=1,
                              min_person_frames=min_person_frames, cover_end=cover_end):
            t0 = first + int(w.extra["window_start"])
            t1 = t0 + w.num_frames - 1
            ids = [int(i) for i in w.track_ids] if w.track_ids is not None else []
            yield Window(video, kind, float(times[t0]), float(times[t1] + dt), ids, w)
