"""Stage 2: link per-frame detections into person tracks (box IoU + keypoint OKS, Hungarian matching).

A track's similarity to a detection (box IoU + keypoint OKS) is the better of two: against its last box and
pose, and against them moved on at the box centre's smoothed velocity (constant-velocity prediction, as SORT /
ByteTrack do). With the last box alone two same-size people crossing each other matched the other's box once
they were closer than one step, and swapped identities; with the prediction alone a person whose detected box
jumped a few pixels lost its track to a younger one nearby. The cost: two look-alikes who meet and turn back at
once are taken as crossing.

Tracks are ranked by length x mean detection score; the stored person order is that rank, fixed for the
whole video, so a person keeps its index in every frame (mmaction2's FormatGCNInput keeps the first M).
`max_tracks` caps the persons kept at any one time, not per video: a track is kept if it ranks among the top
max_tracks tracks seen in at least one of its frames, so people who only appear late in a long video (after
16 others came and went) are kept; stage 3 and recognize re-rank the persons per window.
A stored row (person index) is reused by a later track once it has been empty for `row_gap` frames: a long video
with people passing would otherwise store one dense row per person ever seen (memory growing with length
squared). A gap longer than any window keeps every window to one person per row; `frame_track_ids` (M, T) says
whose each row's frames are.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from recognizer_core.track.config import TrackingConfig
from recognizer_core.extract.rtmo import NUM_KEYPOINTS, FramePoses, box_iou
from recognizer_core.skeleton.coco import COCO_SIGMAS

# weight of the newest step in a track's velocity: with the last step alone (1.0) a standing person (box 60 x 120
# px, 3 px detection jitter) missed for 3-10 frames got a new track after most such stretches; 0.2 kept one track
VELOCITY_SMOOTHING = 0.2


def keypoint_similarity(kpts_a: np.ndarray, scores_a: np.ndarray, boxes_a: np.ndarray,
                        kpts_b: np.ndarray, scores_b: np.ndarray) -> np.ndarray:
    """OKS matrix (len(a), len(b)); scale from a's box areas; joints count where both have score > 0."""
    d2 = ((kpts_a[:, None] - kpts_b[None]) ** 2).sum(-1)                      # (A, B, 17)
    area = np.clip(boxes_a[:, 2:] - boxes_a[:, :2], 1, None).prod(-1)        # (A,)
    var = (2 * COCO_SIGMAS) ** 2
    e = np.exp(-d2 / (2 * area[:, None, None] * var + 1e-9))
    vis = (scores_a[:, None] > 0) & (scores_b[None] > 0)
    n = vis.sum(-1)
    return np.where(n > 0, (e * vis).sum(-1) / np.maximum(n, 1), 0.0)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray
    keypoints: np.ndarray
    keypoint_scores: np.ndarray
    last_t: int
    hits: dict = field(default_factory=dict)   # position in the frame list -> detection index
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))  # box centre's move per frame

    def update(self, t: int, box: np.ndarray, keypoints: np.ndarray, keypoint_scores: np.ndarray, det: int) -> None:
        # the centre's move per frame (also across missed frames); not the corners': a box that changes size (a
        # detection of part of a person, then the whole) would be extrapolated growing, and lose its person
        step = ((box[:2] + box[2:]) - (self.box[:2] + self.box[2:])) / (2 * (t - self.last_t))
        # the first step as it is (a crossing starts at once); later ones smoothed (VELOCITY_SMOOTHING)
        a = 1.0 if len(self.hits) == 1 else VELOCITY_SMOOTHING
        self.velocity = (1 - a) * self.velocity + a * step
        self.box, self.keypoints, self.keypoint_scores, self.last_t = box, keypoints, keypoint_scores, t
        self.hits[t] = det

    def score_sum(self, frames: list[FramePoses]) -> float:
        return float(sum(frames[t].scores[d] for t, d in self.hits.items()))


def _predict(live: list[_Track], t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(last boxes, boxes expected at frame t, poses expected at t) of the live tracks: the last box and pose moved
    on at the centre's velocity for the frames since seen (at 10 px a frame, a box
    100 px wide, the other person's unmoved last pose matched better than this one's: crossings still swapped)."""
    boxes = np.stack([tr.box for tr in live])
    move = np.stack([tr.velocity for tr in live]) * np.array([t - tr.last_t for tr in live], np.float32)[:, None]
    return boxes, boxes + np.tile(move, 2), np.stack([tr.keypoints for tr in live]) + move[:, None]


@dataclass
class TrackedPoses:
    """Tracks of one video over its sampled frames, rank-ordered (best first)."""

    frame_inds: np.ndarray       # int32 (T,) source frame indices
    keypoint: np.ndarray         # float32 (M, T, 17, 2), zeros where the person is not seen
    keypoint_score: np.ndarray   # float32 (M, T, 17)
    box_score: np.ndarray        # float32 (M, T) detection score, 0 where not seen
    track_ids: np.ndarray        # int32 (M,) each row's first (best-ranked) track id, in rank order
    frame_track_ids: np.ndarray  # int32 (M, T) the track id of each row's frame, -1 where nobody is seen

    @property
    def num_persons(self) -> int:
        return int(self.keypoint.shape[0])


def _top_at_some_frame(ranked: list[_Track], num_frames: int, k: int) -> list[_Track]:
    """The tracks (in rank order) that are among the k best-ranked tracks seen in at least one of their frames."""
    higher = np.zeros(num_frames, np.int64)   # per frame: better-ranked tracks seen there so far
    kept = []
    for tr in ranked:
        seen = np.fromiter(tr.hits, np.int64, len(tr.hits))
        if (higher[seen] < k).any():
            kept.append(tr)
        higher[seen] += 1
    return kept


def track_poses(frame_inds, frames: list[FramePoses], cfg: TrackingConfig) -> TrackedPoses:
    """Greedy-online Hungarian tracking over frames in time order; returns the kept tracks."""
    tracks: list[_Track] = []
    # the tracks that may still match, in creation order: scanning every track ever made each frame was quadratic
    # in video length (10 min with 2 false detections a frame: 60 s)
    live: list[_Track] = []
    for t, poses in enumerate(frames):
        live = [tr for tr in live if t - tr.last_t <= cfg.max_missing + 1]
        unmatched = set(range(len(poses)))
        if live and len(poses):
            boxes, expected, poses_expected = _predict(live, t)
            scores = np.stack([tr.keypoint_scores for tr in live])
            sims = []
            last = (boxes, np.stack([tr.keypoints for tr in live]))
            # (nothing predicted to move, e.g. the first frames: the prediction is the last box, computed once)
            for b, k in (last, (expected, poses_expected)) if (expected != boxes).any() else (last,):
                sim = cfg.iou_weight * box_iou(b, poses.boxes)
                if cfg.iou_weight < 1:
                    sim = sim + (1 - cfg.iou_weight) * keypoint_similarity(k, scores, boxes, poses.keypoints,
                                                                           poses.keypoint_scores)
                sims.append(sim)
            sim = np.maximum.reduce(sims)
            rows, cols = linear_sum_assignment(-sim)
            for r, c in zip(rows, cols):
                if sim[r, c] < cfg.match_threshold:
                    continue
                live[r].update(t, poses.boxes[c], poses.keypoints[c], poses.keypoint_scores[c], int(c))
                unmatched.discard(c)
        for c in sorted(unmatched):
            tracks.append(_Track(len(tracks), poses.boxes[c], poses.keypoints[c], poses.keypoint_scores[c], t, {t: c}))
            live.append(tracks[-1])

    kept = []
    for tr in tracks:
        n = len(tr.hits)
        mean_score = tr.score_sum(frames) / n
        if n >= cfg.min_track_len and mean_score >= cfg.min_track_score:
            kept.append((n * mean_score, tr))
    kept.sort(key=lambda x: (-x[0], x[1].track_id))
    rows = _pack_rows(_top_at_some_frame([tr for _, tr in kept], len(frames), cfg.max_tracks), cfg.row_gap)

    T, M = len(frames), len(rows)
    keypoint = np.zeros((M, T, NUM_KEYPOINTS, 2), np.float32)
    keypoint_score = np.zeros((M, T, NUM_KEYPOINTS), np.float32)
    box_score = np.zeros((M, T), np.float32)
    frame_track_ids = np.full((M, T), -1, np.int32)
    for m, row in enumerate(rows):
        for tr in row:
            for t, d in tr.hits.items():
                keypoint[m, t] = frames[t].keypoints[d]
                keypoint_score[m, t] = frames[t].keypoint_scores[d]
                box_score[m, t] = frames[t].scores[d]
                frame_track_ids[m, t] = tr.track_id
    return TrackedPoses(np.asarray(frame_inds, np.int32), keypoint, keypoint_score, box_score,
                        np.array([row[0].track_id for row in rows], np.int32), frame_track_ids)


def _pack_rows(ranked: list[_Track], gap: int) -> list[list[_Track]]:
    """Rows of tracks, best first: each track takes the first row whose tracks all end more than `gap` frames
    before it starts or start more than `gap` frames after it ends, else a new row (interval packing)."""
    rows: list[list[_Track]] = []
    spans: list[list[tuple[int, int]]] = []
    for tr in ranked:
        first, last = min(tr.hits), max(tr.hits)
        for row, taken in zip(rows, spans):
            if all(last + gap < a or b + gap < first for a, b in taken):
                row.append(tr)
                taken.append((first, last))
                break
        else:
            rows.append([tr])
            spans.append([(first, last)])
    return rows
