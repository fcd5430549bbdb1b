"""Decoding: real videos (h264, HEVC, AVI, mpeg4), shards equal a whole-file decode, bad files fail clearly."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_path
from fakes.fake_rtmo import write_marker_video
from recognizer_core.extract.video import (VideoDecodeError, frame_stride_for, iter_frames, plan_shards,
                                        probe_video)


@pytest.mark.parametrize("rel,codec,frames,hw", [
    ("fight/fi001.mp4", "h264", 53, (360, 480)),
    ("misc/mmaction2_S001C001P001R001A001_rgb.avi", "h264", 103, (1080, 1920)),
    ("misc/mmpose_posetrack18_000001_mpiinew_test.mp4", "mpeg4", 5, (720, 1280)),
])
def test_real_videos_decode_every_frame(rel, codec, frames, hw):
    path = str(shared_path("data", "videos", rel))
    info = probe_video(path)
    assert info.codec == codec and (info.height, info.width) == hw and info.num_frames == frames
    inds = []
    for idx, img in iter_frames(path, input_size=(640, 640)):
        assert img.shape == (640, 640, 3) and img.dtype == np.uint8
        inds.append(idx)
    assert inds == list(range(frames))  # the AVI's shuffled timestamps do not reorder or drop frames
    first = next(iter_frames(path))[1]
    assert first.shape == (*hw, 3)


def test_hevc_shards_match_whole_decode():
    path = str(shared_path("data", "videos", "misc", "cctv_fight_hevc.mp4"))
    info = probe_video(path)
    assert info.codec == "hevc" and info.fps == 20.0
    shards = plan_shards(info.num_frames, 250)
    assert len(shards) == 3 and shards[-1].end is None and shards[1].start == 250
    whole = {i: f for i, f in iter_frames(path, stride=7, input_size=(160, 160), by_time=True)}
    parts = {}
    for s in shards:
        for i, f in iter_frames(path, s.start, s.end, 7, (160, 160), by_time=True):
            assert i not in parts and s.start <= i and (s.end is None or i < s.end)
            parts[i] = f
    assert sorted(parts) == sorted(whole) == list(range(0, 700, 7))
    assert all(np.array_equal(parts[i], whole[i]) for i in whole)


def test_stride_plan_and_target_fps(tmp_path):
    assert frame_stride_for(30.0, 1, 10.0) == 3 and frame_stride_for(25.0, 2, 0.0) == 2
    assert plan_shards(100, 600) == plan_shards(0, 600)  # one open-ended shard
    assert [(s.start, s.end) for s in plan_shards(1010, 500)] == [(0, 500), (500, None)]  # tiny tail folded
    path = write_marker_video(tmp_path / "v.mp4", [np.full((20, 2), 50.0)])
    assert [i for i, _ in iter_frames(str(path), stride=3)] == list(range(0, 20, 3))


def test_bad_files_raise_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(b"")
    for path in (corrupt, empty, tmp_path / "missing.mp4"):
        with pytest.raises(VideoDecodeError, match=path.name):
            probe_video(str(path))
        with pytest.raises(VideoDecodeError, match=path.name):
            list(iter_frames(str(path)))
