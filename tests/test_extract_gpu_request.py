"""GPUs asked of a private local Ray on a machine without them: one error line naming ray.num_gpus_per_actor and
model.onnx.device before Ray starts (the preset's num_gpus_per_actor=1 with only `device: cpu` set waited forever at
0 %, the autoscaler naming no field); a cluster is not refused (its autoscaler may add GPU nodes)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fakes.fake_rtmo import build_fake_rtmo, write_marker_video
from recognizer_core.extract.backends import BackendError
from recognizer_core.extract.config import ExtractionConfig
from recognizer_core.extract.job import prepare_extraction

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory):
    return build_fake_rtmo(tmp_path_factory.mktemp("model") / "fake_rtmo.onnx")


@pytest.fixture
def videos(tmp_path):
    write_marker_video(tmp_path / "videos" / "Fight/a.mp4", [np.full((4, 2), 40.0)])
    return tmp_path / "videos"


@pytest.fixture
def no_ray_here(monkeypatch):
    """This process as a job's: no Ray running in it (the suite's shared test Ray would be a caller's Ray, which the
    job keeps and does not check: test_a_ray_the_caller_already_runs_is_not_this_machines_gpus)."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)


def _skip_with_a_gpu():
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a CUDA device")


def _config(videos: Path, out: Path, model: Path, **ray) -> ExtractionConfig:
    return ExtractionConfig.model_validate({"source": {"input": str(videos)}, "output": str(out),
                                            "model": {"onnx": {"model_path": str(model), "device": "cpu"}},
                                            "ray": ray})


@pytest.mark.timeout(300)
def test_preset_gpus_per_actor_with_device_cpu_fail_before_a_private_ray(tmp_path, videos, fake_model):
    _skip_with_a_gpu()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)  # a private local Ray
    cmd = [sys.executable, str(REPO / "rayjobs/extract_poses.py"), "--config", str(REPO / "configs/extraction.yaml"),
           "--input", str(videos), "--onnx", str(fake_model), "--output", "out", "--set", "model.onnx.device=cpu"]
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)   # the job's Ctrl-C: it shuts its private Ray down
        try:
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        pytest.fail("extract_poses with ray.num_gpus_per_actor=1 on a machine without a GPU still ran after 90 s")
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert "ray.num_gpus_per_actor=1 asks for" in lines[0] and "this machine has 0 CUDA device(s)" in lines[0]
    assert "set ray.num_gpus_per_actor=0 and model.onnx.device=cpu" in lines[0]
    assert time.time() - start < 90 and not (tmp_path / "out").exists()


def test_cuda_provider_error_names_both_fields(tmp_path, videos, fake_model, monkeypatch, no_ray_here):
    """`set device: cpu` alone, as the message said, only moved the job on to the hang above."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has a CUDA provider")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = _config(videos, tmp_path / "out", fake_model, num_gpus_per_actor=1.0)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
        "onnx": cfg.model.onnx.model_copy(update={"device": "cuda"})})})
    with pytest.raises(BackendError) as err:
        prepare_extraction(cfg)
    assert "model.onnx.device='cuda' but ONNX Runtime has no CUDA provider" in str(err.value)
    assert "set model.onnx.device=cpu and ray.num_gpus_per_actor=0" in str(err.value)


def test_only_a_private_ray_refuses_gpus_this_machine_lacks(tmp_path, videos, fake_model, monkeypatch,
                                                           no_ray_here):
    _skip_with_a_gpu()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(BackendError, match="num_gpus_per_actor=0.5 asks for"):   # "local": private too
        prepare_extraction(_config(videos, tmp_path / "out", fake_model, num_gpus_per_actor=0.5, address="local"))
    plan = prepare_extraction(_config(videos, tmp_path / "out", fake_model, num_gpus_per_actor=1.0,
                                      address="10.0.0.1:6379"))
    assert [v.rel_path for v in plan.todo] == ["Fight/a.mp4"]
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert len(prepare_extraction(_config(videos, tmp_path / "out", fake_model, num_gpus_per_actor=1.0)).todo) == 1


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_ray_the_caller_already_runs_is_not_this_machines_gpus(tmp_path, videos, fake_model):
    """A notebook that ray.init()-ed a GPU cluster (no $RAY_ADDRESS set) runs the job there, as start_ray keeps it:
    checking this machine's GPUs refused it. A Ray the process runs that is not ours (here a local one declaring a
    GPU, as a cluster's would) is not checked; once a job's own private Ray runs, it is."""
    _skip_with_a_gpu()
    code = f"""
import ray
from recognizer_core.extract.backends import BackendError
from recognizer_core.extract.config import ExtractionConfig
from recognizer_core.extract.job import prepare_extraction
from recognizer_core.ray_runtime import flush_worker_output, start_ray

cfg = ExtractionConfig.model_validate({{"source": {{"input": {str(videos)!r}}}, "output": {str(tmp_path / "out")!r},
    "model": {{"onnx": {{"model_path": {str(fake_model)!r}, "device": "cpu"}}}}, "ray": {{"num_gpus_per_actor": 1}}}})
ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False)
print("callers ray:", len(prepare_extraction(cfg).todo), "video(s) to do")
ray.shutdown()
start_ray(None, num_cpus=1, dashboard=False, job="extract")
try:
    prepare_extraction(cfg)
    print("private ray: accepted")
except BackendError as err:
    print("private ray: refused", "num_gpus_per_actor" in str(err))
flush_worker_output()
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "callers ray: 1 video(s) to do" in done.stdout and "private ray: refused True" in done.stdout, done.stdout
