"""Inference backends for the RTMO end2end model behind one interface (`PoseBackend`).

`inference_mode: onnx` -> `OrtBackend` (ONNX Runtime, CPU or CUDA provider, the training guide's session
options); `inference_mode: tensorrt` -> `TensorRTBackend` (a serialized engine; TensorRT is imported only here).
"""
from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from recognizer_core.pose.config import OnnxOptions, PoseModelConfig, TensorRTOptions


class BackendError(RuntimeError):
    """A model that cannot be loaded or run as asked (missing file, provider, wrong I/O); names the cause."""


class PoseBackend(Protocol):
    provider: str               # what actually runs the model, e.g. "CUDAExecutionProvider", "TensorRT"
    fixed_batch: int | None     # the model's static batch size, None when the batch axis is dynamic

    def __call__(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) float32 -> dets (N, K, 5), keypoints (N, K, 17, 3)."""


def _pick_outputs(names: list[str]) -> tuple[int, int]:
    """Indices of (dets, keypoints): by name when the export kept mmdeploy's names, else by order."""
    if "dets" in names and "keypoints" in names:
        return names.index("dets"), names.index("keypoints")
    if len(names) != 2:
        raise BackendError(f"RTMO model must have 2 outputs (dets, keypoints), found {names}")
    return 0, 1


def _run_in_chunks(run, inputs: np.ndarray, fixed_batch: int | None) -> tuple[np.ndarray, np.ndarray]:
    if fixed_batch is None:
        return run(inputs)
    dets, kpts = [], []
    for s in range(0, len(inputs), fixed_batch):
        chunk = inputs[s : s + fixed_batch]
        n = len(chunk)
        if n < fixed_batch:  # a static batch > 1 needs a full batch: pad with copies, drop their outputs
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed_batch - n, axis=0)])
        d, k = run(chunk)
        dets.append(d[:n])
        kpts.append(k[:n])
    return np.concatenate(dets), np.concatenate(kpts)


def _check_outputs(dets: np.ndarray, kpts: np.ndarray, n: int, source: str) -> None:
    if dets.ndim != 3 or dets.shape[0] != n or dets.shape[2] != 5:
        raise BackendError(f"{source}: output dets must be (N={n}, K, 5), got {dets.shape}")
    if kpts.ndim != 4 or kpts.shape[:2] != dets.shape[:2] or kpts.shape[2:] != (17, 3):
        raise BackendError(f"{source}: output keypoints must be (N, K, 17, 3) matching dets, got {kpts.shape}")


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
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise BackendError(f"model.onnx.device={opts.device!r} but ONNX Runtime has no CUDA provider "
                                   f"(available: {available}); install onnxruntime-gpu or set device: cpu")
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
        self._dets_i, self._kpts_i = _pick_outputs(self.output_names)
        self.source = opts.model_path

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.session.run(None, {self.input_name: x})
        return out[self._dets_i], out[self._kpts_i]

    def __call__(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dets, kpts = _run_in_chunks(self._run, inputs, self.fixed_batch)
        _check_outputs(dets, kpts, len(inputs), self.source)
        return dets, kpts


class TensorRTBackend:
    """A serialized TensorRT engine (TensorRT >= 10 tensor API), device buffers held by torch."""

    def __init__(self, opts: TensorRTOptions, input_size: tuple[int, int]):
        if not opts.model_path or not os.path.isfile(opts.model_path):
            raise BackendError(f"model.tensorrt.model_path: engine not found: {opts.model_path!r} "
                               "(build one with rayjobs/build_trt_engine.py)")
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendError("inference_mode=tensorrt needs the tensorrt package (pip install "
                               "'recognizer[tensorrt]')") from None
        import torch

        if not torch.cuda.is_available():
            raise BackendError(f"model.tensorrt.device={opts.device!r}: no CUDA device visible")
        self.device = torch.device(opts.device)
        self._torch, self._trt = torch, trt
        logger = trt.Logger(trt.Logger.WARNING)
        with open(opts.model_path, "rb") as f:
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise BackendError(f"{opts.model_path}: TensorRT cannot deserialize the engine (built by another "
                               "TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise BackendError(f"{opts.model_path}: RTMO engine needs one input, found {inputs}")
        self.input_name = inputs[0]
        d, k = _pick_outputs(outputs)
        self.output_names = [outputs[d], outputs[k]]
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if tuple(shape[2:]) != tuple(input_size) and -1 not in shape[2:]:
            raise BackendError(f"{opts.model_path}: engine input is {shape}, config expects {input_size}")
        self.fixed_batch = shape[0] if shape[0] > 0 else None
        if self.fixed_batch is None:  # dynamic: the largest batch of optimization profile 0
            self.max_batch = self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0]
        else:
            self.max_batch = self.fixed_batch
        self.provider = "TensorRT"
        self.source = opts.model_path
        self.stream = torch.cuda.Stream(device=self.device)

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch, trt = self._torch, self._trt
        with torch.cuda.stream(self.stream):
            inp = torch.from_numpy(x).to(self.device, non_blocking=True)
            self.context.set_input_shape(self.input_name, tuple(inp.shape))
            self.context.set_tensor_address(self.input_name, inp.data_ptr())
            outs = []
            for name in self.output_names:
                dtype = torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
                out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device=self.device)
                self.context.set_tensor_address(name, out.data_ptr())
                outs.append(out)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendError(f"{self.source}: TensorRT execution failed")
            result = [o.float().cpu().numpy() for o in outs]
        self.stream.synchronize()
        return result[0], result[1]

    def __call__(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = self.fixed_batch or self.max_batch
        if self.fixed_batch is None and len(inputs) > batch:
            dets, kpts = zip(*(self._run(inputs[s : s + batch]) for s in range(0, len(inputs), batch)))
            dets, kpts = np.concatenate(dets), np.concatenate(kpts)
        else:
            dets, kpts = _run_in_chunks(self._run, inputs, self.fixed_batch)
        _check_outputs(dets, kpts, len(inputs), self.source)
        return dets, kpts


def build_backend(cfg: PoseModelConfig) -> PoseBackend:
    if cfg.inference_mode == "onnx":
        return OrtBackend(cfg.onnx, cfg.model_input_size)
    return TensorRTBackend(cfg.tensorrt, cfg.model_input_size)
