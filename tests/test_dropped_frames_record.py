"""Frames a sharded (by-timestamp) decode drops where two timestamps round to one number reach the video's manifest
record and its clip's `extra` as `dropped_frames`, summed over the shards, as `skipped_packets` does. The count
stopped at `DecodeStats`: a video that lost frames this way looked complete. Without Ray: the stage classes and
finish_video chained in this process, as extract/job.py chains them."""
from __future__ import annotations

import fractions

import pytest

from fakes.extract_in_process import extract_in_process
from fakes.fake_rtmo import build_fake_rtmo, draw_markers
from fakes.job_videos import SIDE, linear_track
from recognizer_core.extract.config import DecodeConfig
from recognizer_core.extract.manifest import DONE

FRAMES = 150
EARLY = (75, 120)   # frames whose timestamps come 25 ms early: each rounds onto the frame before it, one per shard


def _jittered_marker_video(path) -> str:
    """A marker crossing the picture at 25 fps, time base 1/1000, frames EARLY 25 ms early (as
    tests/test_video_decode_review.py builds its jittered video): sharded decoding drops one frame per pair."""
    import av

    track = linear_track((40, 60), (260, 160), FRAMES)
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 320, 240, "yuv420p"
        st.options = {"preset": "ultrafast", "crf": "12", "sc_threshold": "0", "keyint_min": "25"}
        st.codec_context.gop_size = 25
        st.time_base = st.codec_context.time_base = fractions.Fraction(1, 1000)
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(draw_markers(320, 240, [track[i]], SIDE), format="bgr24")
            frame.pts, frame.time_base = i * 40 - (25 if i in EARLY else 0), fractions.Fraction(1, 1000)
            for packet in st.encode(frame):
                c.mux(packet)
        for packet in st.encode():
            c.mux(packet)
    return str(path)


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory):
    return build_fake_rtmo(tmp_path_factory.mktemp("model") / "fake_rtmo.onnx")


def test_dropped_frames_reach_the_manifest_record_and_the_clip_summed_over_shards(tmp_path, fake_model):
    from recognizer_core.extract.clip_files import read_clip_file

    uri = _jittered_marker_video(tmp_path / "jit.mkv")
    rec, asm = extract_in_process(uri, fake_model, DecodeConfig(shard_frames=50), tmp_path / "out", video_id="jit",
                                  rel_path="Fight/jit.mkv", batch_size=8)
    assert rec["status"] == DONE and rec.get("dropped_frames") == len(EARLY) and rec["skipped_packets"] == 0
    assert asm.num_shards == 3 and asm.dropped == {0: 0, 1: 1, 2: 1}   # one per shard that held a collision
    assert len(asm.frames) == FRAMES - len(EARLY) and not rec["truncated"]
    clip = read_clip_file(tmp_path / "out" / rec["output"])
    assert clip.extra.get("dropped_frames") == len(EARLY) and clip.extra["decoded_by_time"] is True
    # one shard counts frames in decode order: nothing is dropped, and the record says so
    whole, _ = extract_in_process(uri, fake_model, DecodeConfig(shard_frames=600), tmp_path / "out1",
                                  video_id="jit", rel_path="Fight/jit.mkv", batch_size=8)
    assert whole["status"] == DONE and whole["dropped_frames"] == 0 and whole["decoded_frames"] == FRAMES
