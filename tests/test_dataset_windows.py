"""Stage 3: windows with per-window person ranking, and splits grouped by source video."""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.dataset.windows import assign_splits, make_windows, split_counts, window_starts


def _clip(T=20, M=3):
    kp = np.arange(M * T * 17 * 2, dtype=np.float32).reshape(M, T, 17, 2) % 300  # inside the 320x240 image
    sc = np.zeros((M, T, 17), np.float32)
    sc[0, :12] = 0.9     # person 0: frames 0-11
    sc[1, 8:] = 0.8      # person 1: frames 8-19
    sc[2, 5:7] = 0.5     # person 2: two frames only
    box = sc.max(-1)
    return SkeletonClip("vid", 1, kp, sc, (240, 320), T, label_name="Fight", split="train", source_video="/v.mp4",
                        fps=25.0, track_ids=np.array([4, 7, 9], np.int32),
                        frame_inds=np.arange(0, 2 * T, 2, dtype=np.int32), extra={"box_score": box})


def test_window_starts():
    assert window_starts(20, 8, 4) == [0, 4, 8, 12]
    assert window_starts(20, 8, 0) == [0, 8]
    assert window_starts(20, 0, 0) == [0]
    assert window_starts(5, 8, 4, min_frames=5) == [0] and window_starts(4, 8, 4, min_frames=5) == []


def test_build_covers_a_videos_last_frames_with_window_cover_end(tmp_path):
    """window.cover_end adds a window ending at the video's last frame where the stride's grid leaves frames out
    (frames 16-19 of 20 at clip_len 8, stride 8); the default keeps the grid, as builds before it did."""
    from recognizer_core.dataset.build import video_windows
    from recognizer_core.dataset.config import DatasetBuildConfig
    from recognizer_core.extract.clip_files import write_clip_file
    path = write_clip_file(_clip(), tmp_path / "vid.parquet")
    for cover_end, starts in ((False, [0, 8]), (True, [0, 8, 12])):
        cfg = DatasetBuildConfig(window={"clip_len": 8, "cover_end": cover_end})
        wins = video_windows(path, "train", 1, "Fight", cfg)
        assert [int(w.extra["window_start"]) for w in wins] == starts
        assert wins[-1].frame_inds.tolist() == _clip().frame_inds[starts[-1]:starts[-1] + 8].tolist()


def test_windows_rank_persons_inside_each_window():
    clip = _clip()
    wins = make_windows(clip, clip_len=8, stride=4, num_person=2, min_person_frames=2)
    assert [w.track_ids.tolist() for w in make_windows(clip, 8, 4, num_person=2, min_person_frames=3)][0] == [4]
    assert [w.clip_id for w in wins] == ["vid@0", "vid@4", "vid@8", "vid@12"]
    w0, w1, w2, w3 = wins
    assert w0.track_ids.tolist() == [4, 9]                 # 4: 8 frames x .9, 9: 2 frames x .5
    assert w1.track_ids.tolist() == [4, 7]                 # 7 (4 frames x .8) now outranks 9 (2 x .5)
    assert w2.track_ids.tolist() == [7, 4]                 # 7: 8 frames x .8 > 4: 4 frames x .9
    assert w3.track_ids.tolist() == [7]
    np.testing.assert_array_equal(w2.keypoint[0], clip.keypoint[1, 8:16])
    assert w2.frame_inds.tolist() == list(range(16, 32, 2)) and w2.total_frames == 8
    assert w2.extra["box_score"].shape == (2, 8) and w2.extra["window_start"] == 8
    for w in wins:
        w.validate("test")
        assert (w.label, w.label_name, w.split, w.source_video) == (1, "Fight", "train", "/v.mp4")
    whole = make_windows(clip, clip_len=0, num_person=4)
    assert len(whole) == 1 and whole[0].clip_id == "vid" and whole[0].track_ids.tolist() == [4, 7, 9]
    nobody = _clip()
    nobody.keypoint_score[:] = 0
    assert make_windows(nobody, 8, 4) == []


def test_splits_are_grouped_by_video_and_stratified():
    videos = [(f"f{i}", "Fight", "") for i in range(10)] + [(f"n{i}", "NonFight", "") for i in range(10)]
    videos += [("given", "Fight", "test")]
    s = assign_splits(videos, (0.6, 0.2, 0.2), seed=1)
    assert s == assign_splits(list(reversed(videos)), (0.6, 0.2, 0.2), seed=1)  # deterministic
    assert s["given"] == "test"
    per = defaultdict(lambda: defaultdict(int))
    for v, label, _ in videos[:-1]:
        per[label][s[v]] += 1
    assert per["Fight"] == {"train": 6, "val": 2, "test": 2} and per["NonFight"] == per["Fight"]
    assert assign_splits(videos, (0.6, 0.2, 0.2), seed=2) != s
    assert assign_splits(videos, mode="ratio", ratios=(1, 0, 0))["given"] == "train"
    with pytest.raises(ValueError, match="no given split"):
        assign_splits(videos, mode="given")
    with pytest.raises(ValueError, match="summing to 1"):
        assign_splits(videos, (0.5, 0.2, 0.2))


def test_adding_videos_moves_only_videos_next_to_a_cut():
    """One RNG shared across labels shuffled by position: adding 5 'fall' videos to 80 re-drew 28 splits (12
    val/test videos into train), 'normal' ones too. Now a label's order is a hash of (seed, video id)."""
    base = [(f"fall_{i:03d}", "fall", "") for i in range(0, 80, 2)] + [(f"normal_{i:03d}", "normal", "")
                                                                         for i in range(40)]
    before = assign_splits(base, (0.8, 0.1, 0.1), seed=0)
    for added in ([("fall_001", "fall", "")], [(f"fall_{i:03d}", "fall", "") for i in range(1, 80, 16)]):
        after = assign_splits(base + added, (0.8, 0.1, 0.1), seed=0)
        moved = [v for v in before if before[v] != after[v]]
        assert len(moved) <= 2 * len(added) and not any(v.startswith("normal") for v in moved), moved
    # a label's splits depend only on its own videos: another label's videos never change them
    fall_only = assign_splits(base[:40], (0.8, 0.1, 0.1), seed=0)
    assert all(before[v] == fall_only[v] for v in fall_only)
    assert assign_splits(base, (0.8, 0.1, 0.1), seed=1) != before


@pytest.mark.parametrize("n, want", [(1, (1, 0, 0)), (2, (2, 0, 0)), (3, (1, 1, 1)), (5, (3, 1, 1)),
                                     (8, (6, 1, 1)), (10, (8, 1, 1)), (15, (12, 2, 1)), (25, (20, 3, 2))])
def test_split_counts_largest_remainder_with_a_val_and_test_video(n, want):
    """round() per split gave 5 videos 4/0/1 and 4 videos 3/0/1: no val video in small classes."""
    assert split_counts(n, (0.8, 0.1, 0.1)) == want
    assert sum(split_counts(n, (0.5, 0.5, 0.0))) == n and split_counts(n, (0.5, 0.5, 0.0))[2] == 0


def test_every_class_of_five_videos_has_val_and_test_videos():
    """10 classes x 5 videos: val was empty, and training stopped on "split 'val' is empty"."""
    videos = [(f"{k}_{i}", k, "") for k in "abcdefghij" for i in range(5)]
    s = assign_splits(videos, (0.8, 0.1, 0.1), 0)
    per = Counter((label, s[v]) for v, label, _ in videos)
    assert all(per[(k, "val")] == 1 and per[(k, "test")] == 1 and per[(k, "train")] == 3 for k in "abcdefghij")
