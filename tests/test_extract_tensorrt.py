"""The TensorRT backend's shape logic, testable without TensorRT or a GPU: data-dependent (NMS) outputs go
through an output allocator whose buffers only grow and whose results take the shape TensorRT reports;
chunk outputs with different detection counts are joined by padding with zero-score rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recognizer_core.extract.backends import BackendError, build_backend
from recognizer_core.extract.config import PoseModelConfig
from recognizer_core.extract.model_io import pad_detections, run_in_chunks
from recognizer_core.extract.rtmo import postprocess
from recognizer_core.extract.tensorrt_backend import OutputBuffers, check_tensorrt_version, static_shape


def test_static_shape_flags_data_dependent_outputs():
    assert static_shape((4, 100, 5)) == (4, 100, 5)
    assert static_shape((4, -1, 5)) is None and static_shape([-1, 17, 3]) is None


def test_output_buffers_grow_only_and_view_the_notified_shape():
    bufs = OutputBuffers("cpu")
    want = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    p1 = bufs.reallocate("dets", want.nbytes)
    bufs.buffers["dets"][: want.nbytes].view(torch.float32).copy_(torch.from_numpy(want.ravel()))  # "TensorRT"
    bufs.notify_shape("dets", (2, 3, 5))
    np.testing.assert_array_equal(bufs.result("dets", torch.float32).numpy(), want)
    assert bufs.reallocate("dets", 8) == p1                 # a smaller request reuses the buffer
    p2 = bufs.reallocate("dets", want.nbytes * 4)
    assert bufs.buffers["dets"].numel() == want.nbytes * 4 and p2 == bufs.buffers["dets"].data_ptr()
    bufs.notify_shape("dets", (2, 0, 5))                    # no person in the batch: an empty, well-shaped output
    assert bufs.result("dets", torch.float32).shape == (2, 0, 5)


def test_chunks_with_different_detection_counts_join_and_pads_are_dropped():
    cfg = PoseModelConfig()
    d1 = np.zeros((2, 1, 5), np.float32)
    d1[:, 0] = [10, 10, 50, 90, 0.9]
    k1 = np.ones((2, 1, 17, 3), np.float32)
    d2 = np.zeros((1, 3, 5), np.float32)
    d2[0, :, :4] = [[10, 10, 50, 90], [200, 10, 250, 90], [400, 10, 450, 90]]
    d2[0, :, 4] = 0.8
    k2 = np.ones((1, 3, 17, 3), np.float32)
    dets, kpts = pad_detections([d1, d2], [k1, k2])
    assert dets.shape == (3, 3, 5) and kpts.shape == (3, 3, 17, 3)
    assert [len(postprocess(dets[i], kpts[i], 1.0, (480, 640), cfg)) for i in range(3)] == [1, 1, 3]
    calls = []

    def run(x):                                             # a static-batch-2 model whose K depends on the data
        calls.append(len(x))
        k = int(x[0, 0, 0, 0])
        return np.zeros((len(x), k, 5), np.float32), np.zeros((len(x), k, 17, 3), np.float32)

    x = np.zeros((3, 3, 4, 4), np.float32)
    x[2] = 4.0
    dets, kpts = run_in_chunks(run, x, 2)
    assert calls == [2, 2] and dets.shape == (3, 4, 5) and kpts.shape == (3, 4, 17, 3)


def test_tensorrt_version_and_missing_package_errors(tmp_path):
    check_tensorrt_version("10.7.0")
    with pytest.raises(BackendError, match="supports TensorRT 10.x"):
        check_tensorrt_version("11.0.0")
    engine = tmp_path / "rtmo.trt"
    engine.write_bytes(b"engine")
    cfg = PoseModelConfig(inference_mode="tensorrt", tensorrt={"model_path": str(engine)})
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="needs the tensorrt package"):
            build_backend(cfg)


def test_build_trt_engine_takes_fp16_and_paths_from_the_config(tmp_path):
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("build_trt_engine", repo / "rayjobs" / "build_trt_engine.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    yaml_path = tmp_path / "x.yaml"
    yaml_path.write_text("model:\n  batch_size: 16\n  model_input_size: [480, 640]\n  onnx: {model_path: a.onnx}\n"
                         "  tensorrt: {model_path: a.trt, fp16_mode: true}\n")
    import argparse

    def resolve(argv):
        ns = argparse.Namespace(onnx="", config=None, output="", input_size=None, min_batch=1, opt_batch=0,
                                max_batch=32, fp16=None, workspace_gb=4.0)
        for k, v in argv.items():
            setattr(ns, k, v)
        return job.resolve_args(ns)

    got = resolve({"config": str(yaml_path)})
    assert got == {"onnx_path": "a.onnx", "output": "a.trt", "input_size": (480, 640), "min_batch": 1,
                   "opt_batch": 16, "max_batch": 32, "fp16": True, "workspace_gb": 4.0}
    assert resolve({"config": str(yaml_path), "fp16": False, "opt_batch": 64})["fp16"] is False
    assert resolve({"config": str(yaml_path), "opt_batch": 64})["max_batch"] == 64
    assert resolve({"onnx": "b.onnx", "output": "b.trt"})["fp16"] is False   # PoseModelConfig's default
    with pytest.raises(Exception, match="give the ONNX file"):
        resolve({})


def test_engine_is_made_and_run_with_the_configured_device_current(tmp_path, monkeypatch):
    """TensorRT makes an engine and its context on the *current* CUDA device: with model.tensorrt.device=cuda:1
    they were made on cuda:0 while the inputs went to cuda:1. A stand-in tensorrt module records the device
    current at each call (no GPU here)."""
    import contextlib
    import sys
    import types

    from recognizer_core.extract.config import TensorRTOptions
    from recognizer_core.extract.tensorrt_backend import TensorRTBackend

    current, seen = ["cuda:0"], {}

    @contextlib.contextmanager
    def device(d):
        before, current[0] = current[0], str(d)
        try:
            yield
        finally:
            current[0] = before

    class Context:
        def set_input_shape(self, *_): pass
        def set_tensor_address(self, *_): pass
        def get_tensor_shape(self, name): return (2, 1, 5) if name == "dets" else (2, 1, 17, 3)

        def execute_async_v3(self, _stream):
            seen["run"] = current[0]
            return True

    class Engine:
        num_io_tensors = 3

        def __init__(self): seen["engine"] = current[0]
        def get_tensor_name(self, i): return ["input", "dets", "keypoints"][i]
        def get_tensor_mode(self, name): return "in" if name == "input" else "out"
        def get_tensor_dtype(self, _name): return "float32"
        def get_tensor_shape(self, _name): return (2, 3, 64, 64)

        def create_execution_context(self):
            seen["context"] = current[0]
            return Context()

    class Logger:
        WARNING = 2

        def __init__(self, _level): pass

    class Runtime:
        def __init__(self, _logger): pass
        def deserialize_cuda_engine(self, _blob): return Engine()

    trt = types.SimpleNamespace(__version__="10.7.0", Logger=Logger, Runtime=Runtime, IOutputAllocator=object,
                                TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"), nptype=np.dtype)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: types.SimpleNamespace(cuda_stream=0,
                                                                                       synchronize=lambda: None))
    monkeypatch.setattr(torch.cuda, "stream", lambda _s: contextlib.nullcontext())
    engine = tmp_path / "rtmo.trt"
    engine.write_bytes(b"engine")
    backend = TensorRTBackend(TensorRTOptions(model_path=str(engine), device="cuda:1"), (64, 64))
    assert seen == {"engine": "cuda:1", "context": "cuda:1"} and current == ["cuda:0"]
    backend.device = torch.device("cpu")   # the run's tensors stay on the CPU here; the device made current is it
    dets, kpts = backend(np.zeros((2, 3, 64, 64), np.float32))
    assert seen["run"] == "cpu" and dets.shape == (2, 1, 5) and kpts.shape == (2, 1, 17, 3)
