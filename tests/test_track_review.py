"""Tracking review fixes: crossings, keypoint similarity, linear cost in video length, and reused stored rows in
recognize's track windows and stream buffers (one person per row in both)."""
from __future__ import annotations

import numpy as np
import pytest

from fakes.fake_rtmo import KEYPOINT_OFFSETS
from recognizer_core.extract.rtmo import FramePoses
from recognizer_core.track import tracking
from recognizer_core.track.config import TrackingConfig
from recognizer_core.track.tracking import keypoint_similarity, track_poses


def _person(cx, cy, s=20.0, pose=KEYPOINT_OFFSETS, score=0.9):
    box = np.array([cx - 1.5 * s, cy - 2.5 * s, cx + 1.5 * s, cy + 2.5 * s], np.float32)
    return box, score, (np.array([cx, cy]) + pose * s).astype(np.float32)


def _frame(people) -> FramePoses:
    if not people:
        return FramePoses.empty()
    boxes, scores, kpts = zip(*people)
    return FramePoses(np.stack(boxes), np.array(scores, np.float32), np.stack(kpts),
                      np.full((len(people), 17), 0.9, np.float32))


def _rows_by_score(tr) -> list[list[float]]:
    """Per stored row, the detection scores it holds: one score per row = each person kept apart."""
    return [sorted({round(float(s), 2) for s in tr.box_score[m][tr.box_score[m] > 0]}) for m in range(tr.num_persons)]


@pytest.mark.parametrize("speed", [2, 5, 10])
def test_two_look_alikes_crossing_keep_their_identities(speed):
    """Same size, same pose, walking through each other: matched against the last box and pose, each track took
    the other's detection once they were closer than one step. Tracks now predict at their velocity."""
    n = 60
    frames = [_frame([_person(100 + speed * t, 200, score=0.9), _person(100 + speed * (n - 1 - t), 200, score=0.8)])
              for t in range(n)]
    tr = track_poses(np.arange(n), frames, TrackingConfig())
    assert _rows_by_score(tr) == [[0.9], [0.8]]


def test_keypoints_tell_apart_two_people_in_the_same_box():
    """Both boxes overlap fully (IoU 1 with either track): only keypoint similarity keeps identities, whatever
    order the detector lists them in. A keypoint_similarity that returned zeros passed every other test."""
    crouched = KEYPOINT_OFFSETS * np.array([1.0, 0.4], np.float32)      # same box, a different pose
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(40):
        people = [_person(200, 200, score=0.9), _person(200, 200, pose=crouched, score=0.8)]
        frames.append(_frame([people[i] for i in rng.permutation(2)]))
    tr = track_poses(np.arange(40), frames, TrackingConfig())
    assert _rows_by_score(tr) == [[0.9], [0.8]]
    standing = np.abs(tr.keypoint[0, :, 15, 1] - tr.keypoint[0, :, 0, 1])          # ankle to nose height
    assert np.allclose(standing, 4.2 * 20) and np.allclose(tr.keypoint[1, :, 15, 1] - tr.keypoint[1, :, 0, 1],
                                                           0.4 * 4.2 * 20)


def test_keypoint_similarity_by_hand():
    """OKS: mean over joints seen in both of exp(-d^2 / (2 * area * (2 sigma)^2)), area from a's box."""
    a = np.zeros((1, 17, 2), np.float32)
    b = np.zeros((2, 17, 2), np.float32)
    b[0, 0] = (0.3, 0.4)                       # nose 0.5 px away: d^2 = 0.25; the left eye exactly on
    sa = np.zeros((1, 17), np.float32)
    sa[0, :2] = 0.9                            # a sees nose and left eye
    sb = np.zeros((2, 17), np.float32)
    sb[0, :3] = 0.8                            # b[0]: nose, both eyes (the right eye is not seen by a)
    sb[1, 5:] = 0.8                            # b[1]: no joint a sees too
    box = np.array([[0, 0, 10, 10]], np.float32)  # area 100
    got = keypoint_similarity(a, sa, box, b, sb)
    nose = np.exp(-0.25 / (2 * 100 * (2 * 0.026) ** 2))   # COCO nose sigma 0.026: exp(-0.4623) = 0.6298
    assert got.shape == (1, 2)
    assert got[0, 0] == pytest.approx((nose + 1.0) / 2, rel=1e-5) and got[0, 0] == pytest.approx(0.8149, abs=1e-4)
    assert got[0, 1] == 0.0


def test_tracking_cost_grows_linearly_with_video_length(monkeypatch):
    """Two short false detections a frame, never matched: every frame scanned every track ever created (10 min of
    video: 60 s). The tracks looked at per frame now stay bounded by those that can still match."""
    reads = {"n": 0}

    class CountingTrack(tracking._Track):
        @property
        def last_t(self):
            reads["n"] += 1
            return self._last_t

        @last_t.setter
        def last_t(self, value):
            self._last_t = value

    monkeypatch.setattr(tracking, "_Track", CountingTrack)
    rng = np.random.default_rng(0)

    def per_frame(n: int) -> float:
        frames = [_frame([_person(*rng.uniform(100, 1000, 2), score=0.35) for _ in range(2)]) for _ in range(n)]
        reads["n"] = 0
        track_poses(np.arange(n), frames, TrackingConfig())
        return reads["n"] / n

    short, long = per_frame(300), per_frame(1200)
    assert long < 1.3 * short and long < 200    # the old scan: ~1 read per track so far, per frame (1200 here)


def _crossing_clip(with_earlier_person: bool):
    """C stands throughout; A walks by at frames 400-460 of 600; P (optional) leaves 340 frames before A comes,
    so P and A share a stored row (row_gap 300)."""
    from recognizer_core.extract.clip_files import make_video_clip

    frames = []
    for t in range(600):
        people = [_person(900, 400, score=0.6)]
        if 400 <= t <= 460:
            people.append(_person(200 + t, 300, score=0.9))
        if with_earlier_person and t < 60:
            people.append(_person(1500, 300, score=0.95))
        frames.append(_frame(people))
    tr = track_poses(np.arange(600), frames, TrackingConfig())
    clip = make_video_clip(tr, clip_id="v", label=0, label_name="x", split="", source_video="v", image_hw=(720, 1280),
                           fps=30, stride=1)
    return tr, clip


def test_track_windows_of_a_person_do_not_depend_on_who_shared_its_row():
    """A person alone in its row got the whole clip's grid of windows; sharing the row with someone gone long
    before cut it one window over its own frames only, so its windows (and events) depended on an unrelated
    person. Each person of a reused row now gets the same windows as alone, the others blanked."""
    from recognizer_core.recognize.windows import video_windows

    def a_windows(with_p: bool):
        tr, clip = _crossing_clip(with_p)
        owners = [sorted(set(r[r >= 0].tolist())) for r in tr.frame_track_ids]
        a_id = int(tr.frame_track_ids[tr.box_score == np.float32(0.9)][0])
        windows = video_windows(clip, fps=30, window_frames=90, num_person=2, mode="track", stride_s=0.5)
        return owners, a_id, [w for w in windows if w.track_ids == [a_id]]

    owners, _, alone = a_windows(False)
    assert all(len(o) == 1 for o in owners)
    owners, a_id, shared = a_windows(True)
    assert any(len(o) == 2 and a_id in o for o in owners)       # A shares its stored row with P
    assert [(w.start_s, w.end_s) for w in shared] == [(w.start_s, w.end_s) for w in alone]
    assert len(shared) == 10 and shared[0].start_s == pytest.approx(10.5)
    for s, a in zip(shared, alone):
        np.testing.assert_array_equal(s.clip.keypoint, a.clip.keypoint)
        np.testing.assert_array_equal(s.clip.keypoint_score, a.clip.keypoint_score)
        np.testing.assert_array_equal(s.clip.extra["box_score"], a.clip.extra["box_score"])
        assert set(s.clip.extra["frame_track_ids"][0].tolist()) <= {-1, a_id}   # P never in A's windows


def test_track_windows_of_a_reused_row_cover_the_whole_grid_with_the_others_blanked():
    """row_gap 5: two people in one row, 20 frames apart. Each gets every window of the clip's grid that sees it
    (starts 0 and 20 of 100 frames, window 80), holding its own frames only. (Before, a reused row was one
    sequence in recognize's track mode, and with a window longer than row_gap only one of its people got it.)"""
    from recognizer_core.extract.clip_files import make_video_clip
    from recognizer_core.recognize.windows import video_windows

    frames = [_frame([_person(60 + t * 0.3, 100)] if t < 40 else [_person(300, 200)] if t >= 60 else [])
              for t in range(100)]
    tr = track_poses(np.arange(100), frames, TrackingConfig(row_gap=5, min_track_len=5))
    assert tr.num_persons == 1 and sorted(set(tr.frame_track_ids[0].tolist()) - {-1}) == [0, 1]
    clip = make_video_clip(tr, clip_id="v", label=0, label_name="a", split="", source_video="v.mp4",
                           image_hw=(480, 640), fps=30.0, stride=1)
    windows = video_windows(clip, fps=30.0, window_frames=80, num_person=1, mode="track", stride_s=1.0)
    for key, own in (("track0", range(0, 40)), ("track1", range(60, 100))):
        mine = [w for w in windows if w.key == key]
        assert [x for w in mine for x in (w.start_s, w.end_s)] == pytest.approx([0.0, 80 / 30, 20 / 30, 100 / 30])
        for w in mine:
            t0 = int(round(w.start_s * 30))
            seen = np.nonzero(w.clip.keypoint_score[0].max(-1) > 0)[0] + t0
            assert seen.tolist() == [t for t in own if t0 <= t < t0 + 80]


def test_stream_buffer_longer_than_row_gap_keeps_one_person_per_row():
    """A 12 s buffer at 30 fps (360 frames) is longer than the default row_gap (300): A, gone after 1.3 s, and
    B, coming at 11.5 s, shared a row, StableTrackIds gave it one id, and stream windows spliced them into one
    skeleton. The buffer is tracked with a row_gap of at least its length."""
    from recognizer_core.recognize.stream import StableTrackIds, _buffer_clip
    from recognizer_core.recognize.windows import video_windows

    fps, n = 30.0, 360
    buf = []
    for i in range(n):
        people = [_person(900, 400, score=0.6)]
        if i < 40:
            people.append(_person(200 + i, 300, score=0.9))
        if i >= 345:
            people.append(_person(1500, 300, score=0.85))
        buf.append((i / fps, 0.0, _frame(people), (720, 1280)))
    clip = _buffer_clip(buf, track_poses, TrackingConfig(min_track_len=3), "cam", StableTrackIds(), fps)
    assert clip.num_person == 3 and len(set(clip.track_ids.tolist())) == 3
    for w in video_windows(clip, fps=fps, window_frames=n, num_person=3, mode="track", stride_s=1e9,
                           cover_end=False):
        nose_x = w.clip.keypoint[0, w.clip.keypoint_score[0].max(-1) > 0, 0, 0]
        assert np.ptp(nose_x) < 50, f"{w.key}: one window holds people {np.ptp(nose_x):.0f} px apart"
