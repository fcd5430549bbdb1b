"""Decoding review fixes: a shard past an MPEG-TS file's last keyframe, frame counts of lossless cuts and of MKVs
with longer audio, by-timestamp frames that share a number, the recognition overlay of a sharded extraction, and
the model input of batch and stream mode (same pixels; BGR order)."""
from __future__ import annotations

import fractions

import numpy as np

from recognizer_core.extract.config import DecodeConfig
from recognizer_core.extract.finish import truncation
from recognizer_core.extract.video import DecodeStats, iter_frames, plan_shards, probe_video


def _encode(path, values, fps: int = 25, gop: int = 25, pts_ms=None, size=(48, 64), codec: str = "libx264",
            pix_fmt: str = "yuv420p", audio_s: float = 0.0, options: dict | None = None) -> str:
    """Frame i filled with values[i] (a grey level or a BGR triple); pts_ms: timestamps in ms (time base 1/1000);
    audio_s: a silent PCM track of that length after the video."""
    import av

    with av.open(str(path), "w", options=options or {}) as c:
        st = c.add_stream(codec, rate=fps)
        st.height, st.width = size
        st.pix_fmt = pix_fmt
        st.options = {"preset": "ultrafast", "sc_threshold": "0", "keyint_min": str(gop), "crf": "0"}
        st.codec_context.gop_size = gop
        audio = c.add_stream("pcm_s16le", rate=8000) if audio_s else None
        if pts_ms is not None:
            st.time_base = st.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, v in enumerate(values):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), v, np.uint8), format="bgr24")
            if pts_ms is not None:
                frame.pts, frame.time_base = int(pts_ms[i]), fractions.Fraction(1, 1000)
            for packet in st.encode(frame):
                c.mux(packet)
        for packet in st.encode():
            c.mux(packet)
        for k in range(int(audio_s * 10)):
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            chunk.sample_rate, chunk.pts = 8000, k * 800
            for packet in audio.encode(chunk):
                c.mux(packet)
    return str(path)


def _colour(i: int) -> tuple[int, int, int]:
    """A frame's number as a BGR colour, 16 levels apart (robust to YUV rounding): see _number."""
    return 16 * (i % 16) + 8, 16 * (i // 16) + 8, 128


def _number(image: np.ndarray) -> int:
    b, g = (int(round((int(image[0, 0, c]) - 8) / 16)) for c in (0, 1))
    return b + 16 * g


def _sharded(path: str, shard_frames: int, input_size=(16, 16)) -> tuple[dict, int]:
    """{index: model input} over every shard of the plan, and the frames the shards dropped."""
    parts, dropped = {}, 0
    for s in plan_shards(probe_video(path).num_frames, shard_frames):
        stats = DecodeStats()
        for i, image in iter_frames(path, s.start, s.end, 1, input_size, by_time=True, stats=stats):
            assert i not in parts and s.start <= i and (s.end is None or i < s.end)
            parts[i] = image
        dropped += stats.dropped_frames
    return parts, dropped


def test_a_shard_past_the_last_keyframe_of_an_mpeg_ts_file_decodes_its_frames(tmp_path):
    """Keyframes at 0 and 300 of 400 frames: the seek to shard 320 decoded nothing, so its 80 frames were lost
    (a 65 s camera file lost 165 of 1965 frames, within the truncation tolerance: not even flagged)."""
    path = _encode(tmp_path / "cam.ts", [i % 250 for i in range(400)], fps=30, gop=300, size=(48, 64))
    parts, _ = _sharded(path, 320)
    assert sorted(parts) == list(range(400))
    assert [i for i, _ in iter_frames(path, 320, None, 1, (16, 16), by_time=True)] == list(range(320, 400))


def test_declared_frames_of_a_lossless_cut_and_of_an_mkv_with_longer_audio(tmp_path):
    """A cut made without re-encoding keeps its pre-roll packets behind an edit list (the header counted 50, 20
    decode), and an MKV's container duration is its audio's: both were flagged truncated."""
    import av

    src = _encode(tmp_path / "src.mp4", [i * 5 for i in range(50)], gop=25)
    with av.open(src) as s, av.open(str(tmp_path / "cut.mp4"), "w") as d:   # cut at frame 30, as ffmpeg -c copy
        out = d.add_stream_from_template(s.streams.video[0])
        for packet in s.demux(s.streams.video[0]):
            if packet.dts is not None:
                packet.pts, packet.dts, packet.stream = packet.pts - 30 * 512, packet.dts - 30 * 512, out
                d.mux(packet)
    mkv = _encode(tmp_path / "long_audio.mkv", [i * 5 for i in range(50)], audio_s=4.0)
    verdicts = {}
    for path in (str(tmp_path / "cut.mp4"), mkv):
        decoded = np.array([i for i, _ in iter_frames(path, input_size=(16, 16))])
        verdicts[path] = truncation({"frame_inds": decoded, "declared": probe_video(path).num_frames, "stride": 1},
                                    DecodeConfig())
    assert [(v["decoded_frames"], v["declared_frames"], v["truncated"]) for v in verdicts.values()] == \
        [(20, 20, False), (50, 50, False)], verdicts


def test_frames_whose_timestamps_round_to_one_number_are_kept_or_counted_and_shards_agree(tmp_path):
    """Jittered timestamps: a late frame rounds to the next frame's number (its own slot empty), an early one to
    the previous frame's. Decoding by time dropped one frame of each pair, uncounted. A late one now takes the
    free number below; where none is free a frame is dropped and counted (`dropped_frames`), in one shard only."""
    late, early = [10, 49, 99, 130], [75, 120]   # 49 and 99 end a shard (shards of 50, a keyframe every 25)
    pts = [i * 40 + (25 if i in late else -25 if i in early else 0) for i in range(150)]
    path = _encode(tmp_path / "jitter.mkv", [_colour(i) for i in range(150)], pts_ms=pts)   # (mp4: 200 fps)
    stats = DecodeStats()
    whole = dict(iter_frames(path, input_size=(16, 16), by_time=True, stats=stats))
    assert len(whole) == 150 - len(early) and stats.dropped_frames == len(early)
    for i, image in whole.items():   # each frame's picture names its true number: at most 1 away
        assert abs(_number(image) - i) <= 1, (i, _number(image))
    assert all(_number(whole[i]) == i for i in late)
    parts, dropped = _sharded(path, 50)
    assert sorted(parts) == sorted(whole) and dropped == stats.dropped_frames
    assert all(np.array_equal(parts[i], whole[i]) for i in whole)


def test_the_recognition_overlay_of_a_sharded_clip_draws_each_skeleton_on_its_frame(tmp_path, monkeypatch):
    """A sharded extraction numbers frames by timestamp; the overlay counted them, so after a 1 s gap in the
    timestamps every skeleton was drawn on the wrong frame or not at all."""
    import recognizer_core.extract.overlay as extract_overlay
    from recognizer_core.recognize.overlay import render_recognition_overlay
    from recognizer_core.recognize.spec import ModelSpec
    from recognizer_core.skeleton.clip import SkeletonClip
    from recognizer_core.train.stgcn.config import PipelineConfig

    times = [i * 40 for i in range(20)] + [2000 + i * 40 for i in range(20)]   # 25 fps, then 1.2 s without frames
    path = _encode(tmp_path / "gap.mkv", [_colour(t // 40) for t in times], pts_ms=times)
    inds = np.array([t // 40 for t in times], np.int32)   # 0..19, 50..69: as the shards numbered them
    kp = np.zeros((1, 40, 17, 2), np.float32)
    kp[..., 0] = inds[None, :, None]                       # each skeleton names its frame in its x
    clip = SkeletonClip("c", 0, kp, np.ones((1, 40, 17), np.float32), (48, 64), 40, source_video=path, fps=25.0,
                        frame_inds=inds, extra={"decoded_by_time": True})
    drawn = []
    monkeypatch.setattr(extract_overlay, "draw_skeletons",
                        lambda image, k, s, ids: drawn.append((int(k[0, 0, 0]), _number(image))) or image)
    spec = ModelSpec(label_names=["NonFight", "Fight"], pipeline=PipelineConfig(), fps=25, window_frames=25)
    render_recognition_overlay(clip, path, [], np.zeros((0, 2)), spec, tmp_path / "overlay.mp4")
    assert len(drawn) == 40 and all(f == shown for f, shown in drawn), drawn


def _stream_inputs(path: str, input_size) -> list[np.ndarray]:
    """Stream mode's model inputs: its reader's frames through the letterboxing its loop applies."""
    from recognizer_core.recognize import stream

    reader = stream.FrameReader(path, queue_frames=1000, speed=0)
    reader.run()   # in this thread: the whole file into the queue
    letterbox = stream._pose_pieces()[2]
    return [letterbox(reader.frames.get_nowait()[2], input_size)[0] for _ in range(reader.frames.qsize())]


def test_batch_and_stream_give_the_model_the_same_pixels_for_a_frame(tmp_path):
    """Batch converted and resized in one libswscale call, stream resized a full-size BGR copy: about one grey
    level apart on every pixel, so a threshold tuned on batch output meant something else live."""
    rng = np.random.default_rng(0)
    colours = [rng.integers(0, 256, 3) for _ in range(6)]
    path = _encode(tmp_path / "colours.mp4", colours, size=(96, 128))
    batch = [image for _, image in iter_frames(path, input_size=(64, 64))]
    live = _stream_inputs(path, (64, 64))
    assert len(batch) == len(live) == 6
    assert all(np.array_equal(b, s) for b, s in zip(batch, live))


def test_a_blue_frame_reaches_the_model_as_channel_0_in_batch_and_stream(tmp_path):
    """The model takes BGR: decoding rgb24 instead passed every test, the fake RTMO averaging the channels."""
    from recognizer_core.extract.config import PoseModelConfig
    from recognizer_core.extract.rtmo import RtmoPoseEstimator
    from recognizer_core.extract.stages import decode_shard, plan_video

    seen = []

    def backend(x):   # records the model input; no person
        seen.append(x)
        return np.zeros((len(x), 0, 5), np.float32), np.zeros((len(x), 0, 17, 3), np.float32)

    path = _encode(tmp_path / "blue.mp4", [(255, 0, 0)] * 3, codec="libx264rgb", pix_fmt="bgr24", size=(48, 64))
    estimator = RtmoPoseEstimator(backend, PoseModelConfig(model_input_size=(64, 64)))
    row = plan_video({"video_id": "v", "uri": path, "size": 1}, DecodeConfig())[0]
    for block in decode_shard({k: np.array([v]) for k, v in row.items()}, DecodeConfig(), (64, 64)):
        estimator(block["image"], block["ratio"], np.stack([block["img_h"], block["img_w"]], 1))
    for padded in _stream_inputs(path, (64, 64)):
        estimator(padded[None], [1.0], [(48, 64)])
    assert len(seen) == 4   # one decode block, three stream frames
    for x in seen:          # (N, 3, H, W): the picture is the top 48 rows of the 64 x 64 letterbox
        assert (x[:, 0, :48] == 255).all() and (x[:, 1:, :48] == 0).all(), x[:, :, 0, 0]


def test_a_shard_past_the_cut_of_a_truncated_mp4_decodes_nothing(tmp_path, monkeypatch):
    """An interrupted copy of an indexed file (mp4): the seek retry meant for MPEG-TS also ran there, and every
    shard past the cut decoded back to the cut and threw it away (work quadratic in what was lost)."""
    import recognizer_core.extract.video as video

    full = _encode(tmp_path / "full.mp4", [i % 250 for i in range(300)], fps=25, gop=25,
                   options={"movflags": "faststart"})  # the index first: a cut copy still opens
    cut = tmp_path / "cut.mp4"
    data = open(full, "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    decoded = [0]
    real = video._decode_skipping

    def counting(*a, **k):
        for f in real(*a, **k):
            decoded[0] += 1
            yield f

    monkeypatch.setattr(video, "_decode_skipping", counting)
    kept = [i for i, _ in iter_frames(str(cut), 250, 300, 1, (16, 16), by_time=True)]
    assert kept == [] and decoded[0] == 0, (kept, decoded)


def test_frames_after_a_mid_stream_size_change_keep_the_first_frames_geometry(tmp_path):
    """A TS whose frames go from 64x48 to 48x48 midway: each frame was letterboxed at its own size while the poses
    are mapped back with the video's one ratio and size (stages.py), so keypoints after the change landed off the
    image. Every frame is letterboxed as the first one was, as before the shared letterbox_frame."""
    a = _encode(tmp_path / "a.ts", [0] * 30, size=(48, 64))
    b = _encode(tmp_path / "b.ts", [255] * 30, size=(48, 48))
    ab = tmp_path / "ab.ts"
    ab.write_bytes(open(a, "rb").read() + open(b, "rb").read())
    images = dict(iter_frames(str(ab), 0, None, 1, (64, 64), by_time=False))
    late = images[max(images)]
    assert max(images) >= 50 and late.mean() > 150
    # the first frame's geometry: 64 wide x 48 high -> ratio 1.0, rows 48..63 are padding (114) in every frame
    assert (late[48:] == 114).all() and (late[:48, :, 0] > 200).all()


def test_a_ts_shard_inside_the_first_gop_keeps_its_frames(tmp_path):
    """A TS with B-frames (its first pts after start_time) and one keyframe every 120 frames: the last retry seeked
    to start_time itself, landed on the keyframe at 120, and shard 100-200 lost frames 100-119 without a word."""
    import av

    path = str(tmp_path / "k.ts")
    with av.open(path, "w", format="mpegts") as c:
        st = c.add_stream("libx264", rate=25, options={"g": "120", "keyint_min": "120", "sc_threshold": "0",
                                                       "bf": "2"})
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for i in range(300):
            for packet in st.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), _colour(i), np.uint8), "bgr24")):
                c.mux(packet)
        for packet in st.encode():
            c.mux(packet)
    got = [i for i, _ in iter_frames(path, 100, 200, 1, (16, 16), by_time=True)]
    assert got == list(range(100, 200)), (got[:3], len(got))
