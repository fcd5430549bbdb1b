"""The extraction job's per-video chain without Ray: plan -> decode -> inference -> assembler -> finish_video, in
this process (what the Ray Data job chains across actors), for tests of what one video's record and clip hold."""
from __future__ import annotations

import numpy as np

from recognizer_core.extract.config import DecodeConfig, PoseModelConfig
from recognizer_core.extract.finish import finish_video
from recognizer_core.extract.stages import PoseInference, VideoAssembler, decode_shard, plan_video
from recognizer_core.track.config import TrackingConfig


def extract_in_process(uri: str, model, decode: DecodeConfig, out, *, video_id: str, rel_path: str,
                       batch_size: int = 4) -> tuple[dict, VideoAssembler]:
    """(the video's manifest record, its assembler) for `uri` through the fake RTMO `model` into `out`."""
    model_cfg = PoseModelConfig(onnx={"model_path": str(model)}, batch_size=batch_size)
    infer, asm = PoseInference(model_cfg), VideoAssembler(video_id)
    for shard in plan_video({"video_id": video_id, "uri": uri, "size": 1}, decode):
        row = {k: np.array([v], dtype=object if isinstance(v, str) else None) for k, v in shard.items()}
        for block in decode_shard(row, decode, model_cfg.model_input_size):
            res = infer(block)
            for i in range(len(res["frame_index"])):
                asm.add({k: v[i] for k, v in res.items()})
    assert asm.complete
    video = {"uri": uri, "rel_path": rel_path, "video_id": video_id, "label_name": rel_path.split("/")[0],
             "split": ""}
    return finish_video(video, asm.payload(), 1, str(out), decode, TrackingConfig(min_track_len=2)), asm
