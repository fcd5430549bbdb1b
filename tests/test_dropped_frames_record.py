"""Frames a sharded (by-timestamp) decode drops where two timestamps round to one number reach the video's manifest
record and its clip's `extra` as `dropped_frames`, summed over the shards, as `skipped_packets` does. The count
stopped at `DecodeStats`: a video that lost frames this way looked complete. Without Ray: the stage classes and
finish_video chained in this process, as extract/job.py chains them."""
from __future__ import annotations

import fractions

import numpy as np
import pytest

from fakes.fake_rtmo import build_fake_rtmo, draw_markers
from fakes.job_videos import SIDE, linear_track
from recognizer_core.extract.config import DecodeConfig, PoseModelConfig
from recognizer_core.extract.finish import finish_video
from recognizer_core.extract.manifest import DONE
from recognizer_core.extract.stages import PoseInference, VideoAssembler, decode_shard, plan_video
from recognizer_core.track.config import TrackingConfig

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


def _extract(uri: str, model, decode: DecodeConfig, out) -> tuple[dict, VideoAssembler]:
    """plan -> decode -> inference -> assembler -> finish_video, in this process."""
    model_cfg = PoseModelConfig(onnx={"model_path": str(model)}, batch_size=8)
    infer, asm = PoseInference(model_cfg), VideoAssembler("jit")
    for shard in plan_video({"video_id": "jit", "uri": uri, "size": 1}, decode):
        row = {k: np.array([v], dtype=object if isinstance(v, str) else None) for k, v in shard.items()}
        for block in decode_shard(row, decode, model_cfg.model_input_size):
            res = infer(block)
            for i in range(len(res["frame_index"])):
                asm.add({k: v[i] for k, v in res.items()})
    assert asm.complete
    video = {"uri": uri, "rel_path": "Fight/jit.mkv", "video_id": "jit", "label_name": "Fight", "split": ""}
    return finish_video(video, asm.payload(), 1, str(out), decode, TrackingConfig(min_track_len=2)), asm


def test_dropped_frames_reach_the_manifest_record_and_the_clip_summed_over_shards(tmp_path, fake_model):
    from recognizer_core.extract.clip_files import read_clip_file

    uri = _jittered_marker_video(tmp_path / "jit.mkv")
    rec, asm = _extract(uri, fake_model, DecodeConfig(shard_frames=50), tmp_path / "out")
    assert rec["status"] == DONE and rec.get("dropped_frames") == len(EARLY) and rec["skipped_packets"] == 0
    assert asm.num_shards == 3 and asm.dropped == {0: 0, 1: 1, 2: 1}   # one per shard that held a collision
    assert len(asm.frames) == FRAMES - len(EARLY) and not rec["truncated"]
    clip = read_clip_file(tmp_path / "out" / rec["output"])
    assert clip.extra.get("dropped_frames") == len(EARLY) and clip.extra["decoded_by_time"] is True
    # one shard counts frames in decode order: nothing is dropped, and the record says so
    whole, _ = _extract(uri, fake_model, DecodeConfig(shard_frames=600), tmp_path / "out1")
    assert whole["status"] == DONE and whole["dropped_frames"] == 0 and whole["decoded_frames"] == FRAMES
