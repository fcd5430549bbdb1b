"""Decoding: real videos (h264, HEVC, AVI, mpeg4), shards equal a whole-file decode (MPEG-TS too), AVI in one
shard, phone videos upright, bad files fail clearly, a damaged packet costs its frame only (a gap, counted)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_path
from fakes.fake_rtmo import draw_markers, write_marker_video
from fakes.job_videos import linear_track, write_truncated_mkv
from recognizer_core.extract.config import DecodeConfig
from recognizer_core.extract.stages import plan_video
from recognizer_core.extract.frame_image import letterbox
from recognizer_core.extract.video import (DecodeStats, VideoDecodeError, _place_gap, frame_stride_for, iter_frames,
                                        plan_shards, probe_video)


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


def _write_moving_marker(path, num_frames: int = 60, gop: int = 12) -> str:
    """x264 (preset medium: B-frames, so packets and frames leave in different orders) whose frame t shows a
    square at x = 20 + 2t: a frame's picture names its true index."""
    import av

    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 320, 96, "yuv420p"
        st.options = {"crf": "18", "preset": "medium"}
        st.codec_context.gop_size = gop
        for t in range(num_frames):
            image = draw_markers(320, 96, [(20 + 2 * t, 48)], 12)
            for packet in st.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                c.mux(packet)
        for packet in st.encode():
            c.mux(packet)
    return str(path)


def _damage_frames(src: str, dst, frames) -> None:
    """Copy of `src` with the data of the packets holding `frames` (None: all) zeroed past the length prefix and
    NAL header, as a bad sector would leave them."""
    import av

    with av.open(src) as c:
        st = c.streams.video[0]
        packets = {int(round(p.pts * st.time_base * 25)): (p.pos, p.size) for p in c.demux(st) if p.size}
    data = bytearray(open(src, "rb").read())
    for pos, size in (packets.values() if frames is None else [packets[i] for i in frames]):
        data[pos + 5: pos + size] = bytes(size - 5)
    open(dst, "wb").write(bytes(data))


@pytest.mark.parametrize("by_time", [False, True])
def test_a_damaged_packet_costs_its_frame_not_the_rest_of_the_video(tmp_path, by_time):
    """One bad packet ended the decode: 23 of 49 frames kept of a real video, the rest reported as truncated."""
    lost = [23, 45]
    _damage_frames(_write_moving_marker(tmp_path / "v.mp4", 90), tmp_path / "hit.mp4", lost)
    stats = DecodeStats()
    frames = dict(iter_frames(str(tmp_path / "hit.mp4"), by_time=by_time, stats=stats))
    assert sorted(frames) == [i for i in range(90) if i not in lost]   # a gap where each was, no shift after it
    assert stats.skipped_packets == 2 and stats.first_skip.startswith("frame 23: InvalidDataError")
    damaged_gops = {i // 12 for i in lost}   # frames predicted from a lost one show a concealed picture
    for i, image in frames.items():   # elsewhere each frame's picture is the frame its index names
        xs = np.nonzero(image[:, :, 1].max(axis=0) > 150)[0]
        assert i // 12 in damaged_gops or abs(xs.mean() - (20 + 2 * i)) < 1, (i, xs.mean())


def test_shards_of_a_damaged_video_match_its_whole_decode_and_count_each_skip_once(tmp_path):
    """Frame 30 opens shard 1 (which starts decoding at keyframe 24); frame 59 ends shard 1 just before keyframe 60,
    where shard 2 starts: each skip is counted by the shard that holds its frame, whenever the decoder reports it."""
    lost = [30, 59, 80]
    _damage_frames(_write_moving_marker(tmp_path / "v.mp4", 120), tmp_path / "hit.mp4", lost)
    path = str(tmp_path / "hit.mp4")
    whole = DecodeStats()
    want = [i for i, _ in iter_frames(path, stride=2, input_size=(32, 32), by_time=True, stats=whole)]
    got, skipped = [], []
    for s in plan_shards(120, 30):
        stats = DecodeStats()
        got += [i for i, _ in iter_frames(path, s.start, s.end, 2, (32, 32), by_time=True, stats=stats)]
        skipped.append(stats.skipped_packets)
    assert got == want == [i for i in range(0, 120, 2) if i not in lost]
    assert skipped == [0, 2, 1, 0] and whole.skipped_packets == 3


def test_nothing_decodable_fails_naming_the_file_and_a_truncated_file_is_only_short(tmp_path):
    _damage_frames(_write_moving_marker(tmp_path / "v.mp4", num_frames=20), tmp_path / "all_bad.mp4", None)
    with pytest.raises(VideoDecodeError, match=r"all_bad\.mp4: no frame decodes: the decoder rejected \d+ packet"):
        list(iter_frames(str(tmp_path / "all_bad.mp4")))
    cut = write_truncated_mkv(tmp_path / "cut.mkv", [linear_track((30, 35), (50, 35), 40)], 0.6)
    stats = DecodeStats()   # cut data ends the stream (finish.py flags it truncated); nothing is skipped
    assert [i for i, _ in iter_frames(str(cut), stats=stats)] == [0, 1, 2, 3] and stats.skipped_packets == 0


@pytest.mark.parametrize("pts,exact,want", [
    (72, True, (5, 0, 32)),     # constant frame rate: the whole jump (a damaged reference costs more frames)
    (72, False, (1, 0, 32)),    # variable rate / AVI: timestamps skip where nothing is missing, so only owed
    (67, True, (0, 1, 31)),     # no jump yet: keep looking
    (None, True, (1, 0, 0)),    # no timestamps: the gap goes here
])
def test_count_mode_places_a_skipped_packets_gap_where_the_timestamps_jump(pts, exact, want):
    assert _place_gap(1, 32, None if pts is None else pts * 512, 66 * 512, 1 / 512, exact) == want
    assert _place_gap(1, 1, 67 * 512, 66 * 512, 1 / 512, True) == (0, 0, 0)   # none within the window: no gap
