"""Inference backends for the RTMO end2end model behind one interface (`PoseBackend`).

`inference_mode: onnx` -> `OrtBackend` (ONNX Runtime, CPU or CUDA provider, the training guide's session
options); `inference_mode: tensorrt` -> `tensorrt_backend.TensorRTBackend` (a serialized TensorRT 10 engine;
TensorRT is imported only there). Shared output handling is in model_io.py.
"""
from __future__ import annotations

import os

import numpy as np

from recognizer_core.extract.config import OnnxOptions, PoseModelConfig
from recognizer_core.extract.model_io import BackendError, PoseBackend, check_outputs, pick_outputs, run_in_chunks

__all__ = ["BackendError", "PoseBackend", "OrtBackend", "build_backend", "check_cuda_provider", "check_local_gpus",
           "check_model_file", "preload_cuda_libraries"]


class OrtBackend:
    """ONNX Runtime session with the guide's options; fails loudly when CUDA was asked for and is missing."""

    def __init__(self, opts: OnnxOptions, input_size: tuple[int, int]):
        from recognizer_core.onnx_runtime import import_onnxruntime

        ort = import_onnxruntime()  # one ORT build only (CPU and GPU builds break each other)

        if not opts.model_path or not os.path.isfile(opts.model_path):
            raise BackendError(f"model.onnx.model_path: RTMO ONNX file not found: {opts.model_path!r} "
                               "(see docs/extraction.md for where to get one)")
        so = ort.SessionOptions()
        so.execution_mode = getattr(ort.ExecutionMode, opts.execution_mode)
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, opts.graph_optimization_level)
        so.enable_mem_pattern = opts.enable_mem_pattern
        so.enable_cpu_mem_arena = opts.enable_cpu_mem_arena
        if opts.intra_op_num_threads:
            so.intra_op_num_threads = opts.intra_op_num_threads
        so.log_severity_level = 3
        device = opts.device.lower()
        if device.startswith("cuda"):
            preload_cuda_libraries(ort)
            _need_cuda_provider(opts.device)
            cuda_opts = {
                "device_id": int(device.split(":")[1]) if ":" in device else 0,
                "gpu_mem_limit": int(opts.gpu_mem_limit_gb * 1024**3),
                "arena_extend_strategy": opts.arena_extend_strategy,
                "cudnn_conv_algo_search": opts.cudnn_conv_algo_search,
                "tunable_op_enable": int(opts.tunable_op_enable),
                "tunable_op_tuning_enable": int(opts.tunable_op_tuning_enable),
            }
            providers = [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise BackendError(f"model.onnx.device must be cpu, cuda or cuda:N, got {opts.device!r}")
        try:
            self.session = ort.InferenceSession(opts.model_path, sess_options=so, providers=providers)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"{opts.model_path}: ONNX Runtime cannot load the model: {err}") from None
        self.provider = self.session.get_providers()[0]
        if device.startswith("cuda") and self.provider != "CUDAExecutionProvider":
            raise BackendError(f"{opts.model_path}: CUDA was asked for but the session runs on {self.provider}")
        inp = self.session.get_inputs()
        if len(inp) != 1 or len(inp[0].shape) != 4:
            raise BackendError(f"{opts.model_path}: RTMO model needs one (N, 3, H, W) input, got "
                               f"{[(i.name, i.shape) for i in inp]}")
        self.input_name = inp[0].name
        n, c, h, w = inp[0].shape
        for dim, want, name in ((c, 3, "channels"), (h, input_size[0], "height"), (w, input_size[1], "width")):
            if isinstance(dim, int) and dim != want:
                raise BackendError(f"{opts.model_path}: model input {name} is {dim}, config model_input_size "
                                   f"expects {want}")
        self.fixed_batch = n if isinstance(n, int) and n > 0 else None
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._dets_i, self._kpts_i = pick_outputs(self.output_names)
        self.source = opts.model_path

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.session.run(None, {self.input_name: x})
        return out[self._dets_i], out[self._kpts_i]

    def __call__(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dets, kpts = run_in_chunks(self._run, inputs, self.fixed_batch)
        check_outputs(dets, kpts, len(inputs), self.source)
        return dets, kpts


def check_model_file(cfg: PoseModelConfig) -> None:
    """Driver-side check before Ray starts: the model file exists and is readable, and an ONNX model loads in
    ONNX Runtime (CPU, no graph optimisation: cheap) with RTMO's I/O. Raises BackendError naming the field."""
    field, path = (("model.onnx.model_path", cfg.onnx.model_path) if cfg.inference_mode == "onnx"
                   else ("model.tensorrt.model_path", cfg.tensorrt.model_path))
    if not path:
        raise BackendError(f"{field} is not set (see docs/extraction.md for where to get an RTMO model)")
    if not os.path.isfile(path):
        raise BackendError(f"{field}: file not found: {path}")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise BackendError(f"{field}: cannot read {path}: {err.strerror or err}") from None
    if cfg.inference_mode == "onnx":
        OrtBackend(cfg.onnx.model_copy(update={"device": "cpu", "graph_optimization_level": "ORT_DISABLE_ALL",
                                               "intra_op_num_threads": 1}), cfg.model_input_size)


def preload_cuda_libraries(ort) -> None:
    """Load the CUDA / cuDNN libraries of the pip `nvidia-*` packages before a CUDA session is made.

    onnxruntime-gpu does not search those packages by itself: without this its CUDA provider fails to load and the
    session falls back to the CPU (an error here) unless `import torch` happened to load compatible ones first.
    `preload_dlls` is absent from older builds and returns at once in a CPU build; it is only called for a CUDA
    request, so CPU sessions are untouched."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()


def _need_cuda_provider(device: str) -> None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        # both fields: device: cpu alone left the preset's one GPU per inference actor, which a machine without
        # one never has (check_local_gpus)
        raise BackendError(f"model.onnx.device={device!r} but ONNX Runtime has no CUDA provider "
                           f"(available: {available}); install onnxruntime-gpu, or for CPU inference set "
                           "model.onnx.device=cpu and ray.num_gpus_per_actor=0")


def check_cuda_provider(cfg: PoseModelConfig) -> None:
    """model.onnx.device: cuda needs ONNX Runtime's CUDA provider where the inference runs."""
    if cfg.inference_mode == "onnx" and cfg.onnx.device.lower().startswith("cuda"):
        _need_cuda_provider(cfg.onnx.device)


def check_local_gpus(num_gpus_per_actor: float) -> None:
    """Before a private local Ray starts: the GPUs each inference actor asks for (ray.num_gpus_per_actor), on this
    machine, where that Ray runs them and no autoscaler adds a GPU node. Without them Ray Data waited for its
    actors forever at 0 %, the autoscaler repeating "No available node types can fulfill resource request
    {'CPU': 1.0, 'GPU': 1.0}" and naming no field. A cluster is not checked: its autoscaler may add GPU nodes."""
    if num_gpus_per_actor <= 0:
        return
    import torch

    have = torch.cuda.device_count()  # as train's check_local_gpus: honours CUDA_VISIBLE_DEVICES, NVML, no context
    if num_gpus_per_actor > have:
        raise BackendError(f"ray.num_gpus_per_actor={num_gpus_per_actor:g} asks for that many GPUs per inference "
                           f"actor, but this machine has {have} CUDA device(s) (torch's count) and a private local "
                           "Ray cannot add any: for CPU inference set ray.num_gpus_per_actor=0 and "
                           "model.onnx.device=cpu, or set ray.address to a cluster with GPUs")


def build_backend(cfg: PoseModelConfig) -> PoseBackend:
    if cfg.inference_mode == "onnx":
        return OrtBackend(cfg.onnx, cfg.model_input_size)
    from recognizer_core.extract.tensorrt_backend import TensorRTBackend   # imports tensorrt: only when asked

    return TensorRTBackend(cfg.tensorrt, cfg.model_input_size)
