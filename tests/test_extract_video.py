"""Decoding: real videos (h264, HEVC, AVI, mpeg4), shards equal a whole-file decode (MPEG-TS too), AVI in one
shard, phone videos upright, bad files fail clearly."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_path
from fakes.fake_rtmo import write_marker_video
from recognizer_core.extract.config import DecodeConfig
from recognizer_core.extract.stages import plan_video
from recognizer_core.extract.video import (VideoDecodeError, frame_stride_for, iter_frames, letterbox, plan_shards,
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


def test_avi_is_decoded_in_one_shard():
    """AVI frames carry timestamps guessed from packet order (out of order with B-frames): a shard, which indexes
    frames by timestamp, dropped 42 of this file's 103 frames and misplaced the rest."""
    path = str(shared_path("data", "videos", "misc", "mmaction2_S001C001P001R001A001_rgb.avi"))
    rows = plan_video({"video_id": "v", "uri": path, "size": 1}, DecodeConfig(shard_frames=16))
    assert len(rows) == 1 and rows[0]["num_shards"] == 1 and rows[0]["declared"] == 103 and not rows[0]["error"]
    hevc = str(shared_path("data", "videos", "misc", "cctv_fight_hevc.mp4"))
    assert len(plan_video({"video_id": "h", "uri": hevc, "size": 1}, DecodeConfig(shard_frames=250))) == 3


def test_mpeg_ts_shards_match_whole_decode(tmp_path):
    """MPEG-TS has no index: a seek landed after its target, and the frames between belonged to no shard."""
    import av

    path = str(tmp_path / "cam.ts")
    with av.open(path, "w") as c:
        st = c.add_stream("libx264", rate=30)
        st.width, st.height, st.pix_fmt = 128, 96, "yuv420p"
        st.codec_context.gop_size = 60
        rng = np.random.default_rng(0)
        for i in range(1500):
            img = np.full((96, 128, 3), i % 256, np.uint8)
            img[:8, :8] = rng.integers(0, 255, (8, 8, 3))
            for packet in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in st.encode():
            c.mux(packet)
    whole = {i: f for i, f in iter_frames(path, input_size=(64, 64), by_time=True)}
    parts = {}
    for s in plan_shards(probe_video(path).num_frames, 600):
        for i, f in iter_frames(path, s.start, s.end, 1, (64, 64), by_time=True):
            assert i not in parts and s.start <= i and (s.end is None or i < s.end)
            parts[i] = f
    assert sorted(parts) == sorted(whole) == list(range(1500))
    assert all(np.array_equal(parts[i], whole[i]) for i in whole)


def test_a_phone_portrait_video_is_decoded_upright(tmp_path):
    """Phones store portrait video landscape with a display rotation. Decoded as stored, a standing person lay on
    their side: for a fall detector, a fall."""
    import av

    upright = np.zeros((96, 64, 3), np.uint8)  # portrait: H 96, W 64, a bright block top-left (a head)
    upright[4:28, 4:24] = 230
    path = str(tmp_path / "phone.mp4")
    with av.open(path, "w") as c:
        st = c.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 96, 64, "yuv420p"  # stored landscape
        st.options = {"crf": "0"}
        st.set_display_rotation(-90)  # counter-clockwise degrees for display: turned clockwise, as phones record
        for _ in range(5):  # stored: the upright image turned a quarter counter-clockwise
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(upright, 1)), format="bgr24")
            for packet in st.encode(frame):
                c.mux(packet)
        for packet in st.encode():
            c.mux(packet)
    info = probe_video(path)
    assert (info.width, info.height) == (64, 96)
    image = next(iter(iter_frames(path)))[1]
    assert image.shape == (96, 64, 3) and np.abs(image.astype(int) - upright).mean() < 3
    model_input = next(iter(iter_frames(path, input_size=(128, 128))))[1]
    assert np.abs(model_input.astype(int) - letterbox(upright, (128, 128))[0]).mean() < 3


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
