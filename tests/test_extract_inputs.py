"""Extraction input errors (before Ray starts, one line, nothing created) and truncated videos, without Ray."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fakes.extract_in_process import extract_in_process
from fakes.fake_rtmo import build_fake_rtmo, write_marker_video
from fakes.job_videos import SIDE, linear_track, write_truncated_mkv
from recognizer_core.extract.config import DecodeConfig
from recognizer_core.extract.manifest import DONE, FAILED
from recognizer_core.extract.video import iter_frames, probe_video

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory):
    return build_fake_rtmo(tmp_path_factory.mktemp("model") / "fake_rtmo.onnx")


def _job(*args: str, cwd: Path, ray_address: str = "127.0.0.1:1") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ray_address}  # a Ray start would fail loudly
    return subprocess.run([sys.executable, str(REPO / "rayjobs/extract_poses.py"), "--quiet", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def test_bad_inputs_fail_before_ray_in_one_line_and_create_nothing(tmp_path, fake_model):
    videos = tmp_path / "videos"
    write_marker_video(videos / "Fight/a.mp4", [np.full((4, 2), 40.0)])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    cases = [
        (["--input", str(tmp_path / "nope"), "--onnx", str(fake_model)], f"{tmp_path / 'nope'} is not a folder"),
        (["--input", str(videos), "--onnx", str(tmp_path / "missing.onnx")],
         f"model.onnx.model_path: file not found: {tmp_path / 'missing.onnx'}"),
        (["--input", str(videos), "--onnx", str(garbage)], f"{garbage}: ONNX Runtime cannot load the model"),
        (["--input", str(videos)], "model.onnx.model_path is not set"),
    ]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        locked = tmp_path / "locked.onnx"
        locked.write_bytes(fake_model.read_bytes())
        locked.chmod(0)
        cases.append((["--input", str(videos), "--onnx", str(locked)], f"cannot read {locked}"))
    for args, expected in cases:
        out = tmp_path / "out"
        proc = _job(*args, "--output", "out", cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
        assert expected in lines[0]
        assert not out.exists(), args


def test_cuda_device_without_a_cuda_onnx_runtime_fails_before_a_local_ray(tmp_path, fake_model):
    """A private local Ray runs the inference actors here: the missing CUDA provider was found in the first actor
    (after Ray's start, with labels.json, the config and listings written). On a cluster the workers check it."""
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has a CUDA provider")
    videos = tmp_path / "videos"
    write_marker_video(videos / "Fight/a.mp4", [np.full((4, 2), 40.0)])
    proc = _job("--input", str(videos), "--onnx", str(fake_model), "--set", "model.onnx.device=cuda", "--output",
                "out", cwd=tmp_path, ray_address="")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "model.onnx.device='cuda' but ONNX Runtime has no CUDA provider" in lines[0]
    assert not (tmp_path / "out").exists()


def _run_video_without_ray(uri: str, model: Path, decode: DecodeConfig, out: Path) -> dict:
    return extract_in_process(uri, model, decode, out, video_id="cut", rel_path="Fight/cut.mkv")[0]


def test_truncated_mkv_is_flagged_and_kept_or_failed_by_config(tmp_path, fake_model):
    track = linear_track((30, 35), (50, 35), 40)
    cut = write_truncated_mkv(tmp_path / "cut.mkv", [track], 0.6)
    assert probe_video(str(cut)).num_frames == 40                    # the header survived the cut
    assert [i for i, _ in iter_frames(str(cut))] == [0, 1, 2, 3]     # ... but only 4 frames decode

    kept = _run_video_without_ray(str(cut), fake_model, DecodeConfig(), tmp_path / "out")
    assert kept["status"] == DONE and (kept["truncated"], kept["decoded_frames"], kept["declared_frames"]) == \
        (True, 4, 40)
    assert (tmp_path / "out" / kept["output"]).is_file()
    dropped = _run_video_without_ray(str(cut), fake_model, DecodeConfig(keep_truncated=False), tmp_path / "out2")
    assert dropped["status"] == FAILED and dropped["truncated"] is True
    assert dropped["reason"].startswith("truncated: decoded 4 of 40 frames") and not (tmp_path / "out2").exists()

    whole = write_marker_video(tmp_path / "whole.mkv", [track], side=SIDE)   # a complete file is not flagged
    rec = _run_video_without_ray(str(whole), fake_model, DecodeConfig(frame_stride=3), tmp_path / "out3")
    assert rec["status"] == DONE and not rec["truncated"] and rec["declared_frames"] == 40


def test_actor_pool_is_sized_from_the_cluster_gpus():
    from recognizer_core.extract.config import ExtractionConfig
    from recognizer_core.extract.job import actor_pool_size

    def cfg(**ray):
        return ExtractionConfig.model_validate({"source": {"input": "x"}, "ray": ray})

    assert actor_pool_size(cfg(num_gpus_per_actor=1.0), cluster_gpus=8) == (1, 8)
    assert actor_pool_size(cfg(num_gpus_per_actor=0.5, num_actors=2), cluster_gpus=3) == (2, 6)
    # a scale-from-zero cluster (no GPU node yet): the pool grows as the autoscaler adds GPU nodes; a fixed pool of
    # num_actors used one GPU of the manifests' eight
    assert actor_pool_size(cfg(num_gpus_per_actor=1.0, num_actors=2), cluster_gpus=0) == (2, None)
    assert actor_pool_size(cfg(num_gpus_per_actor=1.0, max_actors=3), cluster_gpus=8) == (1, 3)
    assert actor_pool_size(cfg(), cluster_gpus=8) == (1, 1)   # CPU inference: ORT already uses every core


def test_build_dataset_without_extracted_videos_fails_before_ray(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "127.0.0.1:1"}
    proc = subprocess.run([sys.executable, str(REPO / "rayjobs/build_dataset.py"), "--poses", "nothing_here",
                           "--output", "ds"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: poses: {tmp_path / 'nothing_here'} has no finished videos (run rayjobs/extract_poses.py first)"]
    assert not (tmp_path / "ds").exists()


def test_extract_build_dataset_with_no_finished_video_is_one_error_line(tmp_path, fake_model):
    """extract_poses --build-dataset where every video failed (here in an earlier run, so no Ray starts): stage 3
    has nothing to build; it said so in a traceback until 2026-12-05."""
    from recognizer_core.extract.config import SourceConfig
    from recognizer_core.extract.manifest import ExtractionManifest
    from recognizer_core.extract.sources import list_videos

    videos = tmp_path / "videos"
    write_marker_video(videos / "Fight/a.mp4", [np.full((4, 2), 40.0)])
    (video,) = list_videos(SourceConfig(input=str(videos)))
    ExtractionManifest(str(tmp_path / "out")).record(FAILED, video.key, rel_path=video.rel_path,
                                                     video_id=video.video_id, reason="decode error")
    proc = _job("--input", str(videos), "--onnx", str(fake_model), "--output", "out", "--build-dataset", "ds",
                cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]   # nothing extracted (docs/extraction.md), not a usage error
    assert proc.stderr.strip().splitlines() == [
        "[extract] failed: Fight/a.mp4: decode error",
        f"error: --build-dataset: poses: {tmp_path / 'out'} has no finished videos "
        "(run rayjobs/extract_poses.py first)",
        f"error: no video was extracted: 1 of 1 failed (1 in an earlier run); failures.jsonl in {tmp_path / 'out'} "
        "says why (--set retry_failed=true tries them again)"]
    assert not (tmp_path / "ds").exists()


def test_a_damaged_video_is_kept_to_its_end_with_its_skipped_packets_recorded(tmp_path, fake_model):
    """One bad packet mid-video ended the decode: the rest of the video was lost and reported `truncated`."""
    import av

    from recognizer_core.extract.clip_files import read_clip_file

    track = linear_track((30, 35), (150, 135), 90)
    whole = write_marker_video(tmp_path / "whole.mp4", [track], side=SIDE)
    with av.open(str(whole)) as c:   # zero the data of the packet holding frame 40, as a bad sector would
        st = c.streams.video[0]
        pos, size = next((p.pos, p.size) for p in c.demux(st) if p.size and round(p.pts * st.time_base * 25) == 40)
    data = bytearray(whole.read_bytes())
    data[pos + 5: pos + size] = bytes(size - 5)
    (tmp_path / "hit.mp4").write_bytes(bytes(data))
    for shard_frames in (600, 30):   # one shard (frames counted) and several (frames by timestamp)
        rec = _run_video_without_ray(str(tmp_path / "hit.mp4"), fake_model, DecodeConfig(shard_frames=shard_frames),
                                     tmp_path / f"out{shard_frames}")
        assert rec["status"] == DONE and not rec["truncated"] and rec["skipped_packets"] == 1
        assert rec["decoded_frames"] == rec["declared_frames"] == 90
        clip = read_clip_file(tmp_path / f"out{shard_frames}" / rec["output"])
        assert clip.extra["skipped_packets"] == 1 and 40 not in clip.frame_inds and clip.frame_inds[-1] == 89
