"""Stage 2 tracking: identities through crossings and gaps, filters, stable rank order."""
from __future__ import annotations

import numpy as np
import pytest

from fakes.fake_rtmo import KEYPOINT_OFFSETS
from recognizer_core.track.config import TrackingConfig
from recognizer_core.extract.rtmo import FramePoses
from recognizer_core.track.tracking import track_poses


def _person(cx, cy, s=10.0):
    box = np.array([cx - 1.5 * s, cy - 2.5 * s, cx + 1.5 * s, cy + 2.5 * s], np.float32)
    return box, (np.array([cx, cy]) + KEYPOINT_OFFSETS * s).astype(np.float32)


def _frame(people, scores):
    if not people:
        return FramePoses.empty()
    boxes, kpts = zip(*people)
    return FramePoses(np.stack(boxes), np.array(scores, np.float32), np.stack(kpts),
                      np.full((len(people), 17), 0.9, np.float32))


def test_identities_survive_detection_order_gaps_and_rank_order():
    T = 30
    rng = np.random.default_rng(0)
    frames, truth = [], []
    for t in range(T):
        people = {"a": _person(50 + 2 * t, 100), "b": _person(200 - 2 * t, 104)}  # walk past each other
        if t >= 10:
            people["c"] = _person(300, 50)       # appears late: shorter track, ranked after a and b
        if 14 <= t < 17:
            del people["a"]                      # missed for 3 frames
        if t < 3:
            people["noise"] = _person(400, 300)  # too short: dropped
        names = list(people)
        rng.shuffle(names)                       # detection order carries no identity
        scores = [0.9 if n != "b" else 0.8 for n in names]
        frames.append(_frame([people[n] for n in names], scores))
        truth.append({n: people[n][1] for n in names})
    cfg = TrackingConfig(min_track_len=5, max_missing=5, max_tracks=8)
    tr = track_poses(np.arange(T) * 2, frames, cfg)
    assert tr.num_persons == 3
    assert tr.frame_inds.tolist() == list(range(0, 2 * T, 2))
    for m, name in enumerate(["a", "b", "c"]):   # rank = frames seen x mean score: a 27x0.9, b 30x0.8, c
        for t in range(T):
            if name in truth[t]:
                np.testing.assert_allclose(tr.keypoint[m, t], truth[t][name], atol=1e-5)
                assert tr.box_score[m, t] > 0
            else:
                assert (tr.keypoint[m, t] == 0).all() and (tr.keypoint_score[m, t] == 0).all()
    assert len(set(tr.track_ids.tolist())) == 3


def test_filters_and_max_tracks():
    frames = [_frame([_person(50, 50), _person(200, 50), _person(350, 50)], [0.9, 0.2, 0.7]) for _ in range(6)]
    tr = track_poses(np.arange(6), frames, TrackingConfig(min_track_len=3, min_track_score=0.3, max_tracks=1))
    assert tr.num_persons == 1 and tr.keypoint[0, 0, 0, 0] == np.float32(50)
    tr = track_poses(np.arange(6), frames, TrackingConfig(min_track_len=7))
    assert tr.num_persons == 0 and tr.keypoint.shape == (0, 6, 17, 2)
    empty = track_poses(np.arange(3), [FramePoses.empty()] * 3, TrackingConfig())
    assert empty.num_persons == 0


def test_packed_frame_poses_round_trip_including_empty_frames():
    from recognizer_core.extract.stages import pack_poses, unpack_poses

    rng = np.random.default_rng(0)
    full = FramePoses(rng.random((3, 4), dtype=np.float32), rng.random(3, dtype=np.float32),
                      rng.random((3, 17, 2), dtype=np.float32), rng.random((3, 17), dtype=np.float32))
    for poses in (full, FramePoses.empty()):
        back = unpack_poses(pack_poses(poses))
        assert len(back) == len(poses)
        for name in ("boxes", "scores", "keypoints", "keypoint_scores"):
            np.testing.assert_array_equal(getattr(back, name), getattr(poses, name))
            assert getattr(back, name).shape == getattr(poses, name).shape
    assert len(pack_poses(full)) == 3 * 56 * 4          # compact: 56 float32 per person, no padding


def test_max_tracks_caps_persons_at_one_time_not_per_video():
    """Walkers pass one after another, at most two in view: a per-video cap of 2 kept the two best and dropped
    everyone who came later (a fight at the end of a long CCTV video was never stored). Three in view at once
    with a cap of 2: the worst of them is dropped where it is never among the best two."""
    frames = [dict() for _ in range(6 * 5 + 5)]
    for walker in range(6):                          # each walks for 10 frames; the next starts 5 frames later
        for t in range(10):
            frames[walker * 5 + t][walker] = _person(40 + 80 * walker + 3 * t, 100)
    frames = [_frame(list(f.values()), [0.9] * len(f)) for f in frames]
    tr = track_poses(np.arange(len(frames)), frames, TrackingConfig(min_track_len=5, max_tracks=2))
    assert tr.num_persons == 6
    assert sorted(float(tr.keypoint[m][tr.box_score[m] > 0][0, 0, 0]) for m in range(6)) == pytest.approx(
        [40 + 80 * w + KEYPOINT_OFFSETS[0, 0] * 10 for w in range(6)])
    crowd = [_frame([_person(50, 50), _person(200, 50), _person(350, 50)], [0.9, 0.5, 0.7]) for _ in range(6)]
    tr = track_poses(np.arange(6), crowd, TrackingConfig(min_track_len=3, max_tracks=2))
    assert tr.num_persons == 2 and tr.box_score[:, 0].tolist() == pytest.approx([0.9, 0.7])


def test_rows_are_reused_after_a_gap_so_memory_follows_the_crowd_not_the_video_length(tmp_path):
    """People pass one at a time through a long video: one dense row per person ever seen grew with length x
    people (999 rows, 793 MiB for 4,000 frames). A row takes a later person once empty for row_gap frames;
    frame_track_ids says whose each frame is, and windows, clip files and recognize carry the right ids."""
    from recognizer_core.dataset.windows import make_windows
    from recognizer_core.extract.clip_files import make_video_clip, read_clip_file, write_clip_file
    from recognizer_core.recognize.windows import video_windows

    T, span = 600, 40
    frames = [_frame([_person(40 + 5 * (t % span), 100 + 30 * (t // span % 3))], [0.9]) for t in range(T)]
    tr = track_poses(np.arange(T), frames, TrackingConfig(row_gap=100))
    people = T // span
    assert len(set(tr.frame_track_ids[tr.frame_track_ids >= 0].tolist())) == people
    assert tr.num_persons == 4          # a row is free again 100 frames after its person left: 3 spans + 1
    assert ((tr.frame_track_ids >= 0) == (tr.box_score > 0)).all()
    clip = make_video_clip(tr, clip_id="v", label=0, label_name="a", split="train", source_video="v.mp4",
                           image_hw=(480, 640), fps=30.0, stride=1)
    back = read_clip_file(write_clip_file(clip, tmp_path / "v.parquet"))
    np.testing.assert_array_equal(back.extra["frame_track_ids"], tr.frame_track_ids)
    for w in make_windows(back, clip_len=span, stride=span, num_person=2):   # each window: one person
        t0 = int(w.extra["window_start"])
        (row,) = np.nonzero(tr.frame_track_ids[:, t0] >= 0)[0]
        assert w.track_ids.tolist() == [tr.frame_track_ids[row, t0]]
        assert (w.extra["frame_track_ids"][0] == tr.frame_track_ids[row, t0]).all()
    keys = {w.key for w in video_windows(back, fps=30.0, window_frames=span, num_person=1, mode="track",
                                         stride_s=span / 30.0)}
    assert len(keys) == people          # recognize's per-person sequences: one per person, not per row


def test_a_whole_video_window_keeps_the_people_of_a_reused_row_apart():
    """window.clip_len=0 (the default: one window per video) is longer than row_gap: a reused row's two people were
    spliced into one training 'person' named after the first. Windows take one row per person."""
    from recognizer_core.dataset.windows import make_windows
    from recognizer_core.extract.clip_files import make_video_clip

    frames = []
    for t in range(550):
        people = [_person(50 + t * 0.2, 100), _person(300, 100 + t * 0.1)] if t < 100 else []
        people += [_person(150, 300)] if 450 <= t else []
        frames.append(_frame(people, [0.9, 0.8][:len(people)] if t < 100 else [0.7] * len(people)))
    tr = track_poses(np.arange(550), frames, TrackingConfig(row_gap=300))
    assert tr.num_persons == 2 and sorted(set(tr.frame_track_ids[0].tolist()) - {-1}) == [0, 2]
    clip = make_video_clip(tr, clip_id="v", label=0, label_name="a", split="train", source_video="v.mp4",
                           image_hw=(480, 640), fps=30.0, stride=1)
    (whole,) = make_windows(clip, clip_len=0, num_person=4)
    assert sorted(whole.track_ids.tolist()) == [0, 1, 2]
    for p, tid in enumerate(whole.track_ids):
        seen = whole.keypoint_score[p].max(-1) > 0
        assert (whole.extra["frame_track_ids"][p][seen] == tid).all()
        assert seen.sum() == 100                  # each person only its own 100 frames
