"""RTMO on a serialized TensorRT engine (TensorRT 10.x: the named-tensor API, `execute_async_v3`).

The RTMO end2end export contains NMS, so its outputs can have data-dependent shapes (`-1` in the engine's
output shape even after the input shape is set): such outputs get an `IOutputAllocator` that TensorRT calls
with the size it needs and then the real shape (`OutputBuffers`, Ray-free and TensorRT-free, so the shape
logic is unit-tested on CPU). Outputs whose shapes are known once the input shape is set (an export with a
fixed max-detections axis) get plain preallocated buffers. Device buffers are torch tensors (no pycuda).
TensorRT is imported only here, and only when `inference_mode: tensorrt`.
"""
from __future__ import annotations

import os

import numpy as np

from recognizer_core.extract.config import TensorRTOptions
from recognizer_core.extract.model_io import (BackendError, check_outputs, pad_detections, pick_outputs,
                                              run_in_chunks)

SUPPORTED_MAJOR = 10   # 11 changed the builder's precision API (weak typing, FP16 flags): pinned < 11


def check_tensorrt_version(version: str) -> None:
    major = int(version.split(".")[0])
    if major != SUPPORTED_MAJOR:
        raise BackendError(f"TensorRT {version} is installed; this code supports TensorRT {SUPPORTED_MAJOR}.x "
                           f"(pip install 'tensorrt>={SUPPORTED_MAJOR},<{SUPPORTED_MAJOR + 1}')")


def static_shape(shape) -> tuple[int, ...] | None:
    """The shape if every dim is known, else None (a data-dependent output: needs an output allocator)."""
    shape = tuple(int(d) for d in shape)
    return None if any(d < 0 for d in shape) else shape


class OutputBuffers:
    """The allocation and shape bookkeeping of a TensorRT output allocator, with torch as the memory.

    `reallocate(name, nbytes)` returns a device pointer to at least `nbytes` (the buffer only grows, so a
    steady batch size allocates once); `notify_shape(name, shape)` records the shape TensorRT computed;
    `result(name, dtype)` is the output as a tensor view of that shape.
    """

    def __init__(self, device="cpu"):
        import torch

        self._torch, self.device = torch, device
        self.buffers: dict = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def reallocate(self, name: str, nbytes: int) -> int:
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < nbytes:
            buf = self._torch.empty(max(int(nbytes), 1), dtype=self._torch.uint8, device=self.device)
            self.buffers[name] = buf
        return buf.data_ptr()

    def notify_shape(self, name: str, shape) -> None:
        self.shapes[name] = tuple(int(d) for d in shape)

    def result(self, name: str, dtype):
        shape = self.shapes[name]
        n = int(np.prod(shape)) if shape else 1
        nbytes = n * self._torch.empty((), dtype=dtype).element_size()
        return self.buffers[name][:nbytes].view(dtype).reshape(shape)


def _allocator(trt, buffers: OutputBuffers):
    class _TrtOutputAllocator(trt.IOutputAllocator):
        def __init__(self):
            trt.IOutputAllocator.__init__(self)

        def reallocate_output(self, tensor_name, memory, size, alignment):  # noqa: ARG002 - TensorRT's API
            return buffers.reallocate(tensor_name, size)

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):  # noqa: ARG002
            return buffers.reallocate(tensor_name, size)

        def notify_shape(self, tensor_name, shape):
            buffers.notify_shape(tensor_name, shape)

    return _TrtOutputAllocator()


class TensorRTBackend:
    """A serialized TensorRT 10 engine; outputs of data-dependent shape through an output allocator."""

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

        check_tensorrt_version(trt.__version__)
        if not torch.cuda.is_available():
            raise BackendError(f"model.tensorrt.device={opts.device!r}: no CUDA device visible")
        self.device = torch.device(opts.device)
        self._torch, self._trt = torch, trt
        # TensorRT puts an engine and its context on the *current* CUDA device; the inputs and buffers go to
        # opts.device, so both are made (and run, in _run) with that device current
        with torch.cuda.device(self.device):
            self._load(opts, input_size)

    def _load(self, opts: TensorRTOptions, input_size: tuple[int, int]) -> None:
        torch, trt = self._torch, self._trt
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
        d, k = pick_outputs(outputs)
        self.output_names = [outputs[d], outputs[k]]
        self.dtypes = {n: torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype
                       for n in self.output_names}
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if tuple(shape[2:]) != tuple(input_size) and -1 not in shape[2:]:
            raise BackendError(f"{opts.model_path}: engine input is {shape}, config expects {input_size}")
        self.fixed_batch = shape[0] if shape[0] > 0 else None
        if self.fixed_batch is None:  # dynamic: the largest batch of optimization profile 0
            self.max_batch = self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0]
        else:
            self.max_batch = self.fixed_batch
        self.buffers = OutputBuffers(self.device)
        self._allocator = _allocator(trt, self.buffers)   # kept alive: TensorRT holds only a pointer
        self.provider = "TensorRT"
        self.source = opts.model_path
        self.stream = torch.cuda.Stream(device=self.device)

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            inp = torch.from_numpy(x).to(self.device, non_blocking=True)
            self.context.set_input_shape(self.input_name, tuple(inp.shape))
            self.context.set_tensor_address(self.input_name, inp.data_ptr())
            fixed = {}
            for name in self.output_names:
                shape = static_shape(self.context.get_tensor_shape(name))
                if shape is None:   # NMS output: its size is known only after execution
                    self.context.set_output_allocator(name, self._allocator)
                else:
                    fixed[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                    self.context.set_tensor_address(name, fixed[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendError(f"{self.source}: TensorRT execution failed")
            outs = [fixed[n] if n in fixed else self.buffers.result(n, self.dtypes[n]) for n in self.output_names]
            result = [o.float().cpu().numpy() for o in outs]
        self.stream.synchronize()
        return result[0], result[1]

    def __call__(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = self.fixed_batch or self.max_batch
        if self.fixed_batch is None and len(inputs) > batch:
            dets, kpts = zip(*(self._run(inputs[s : s + batch]) for s in range(0, len(inputs), batch)))
            dets, kpts = pad_detections(dets, kpts)
        else:
            dets, kpts = run_in_chunks(self._run, inputs, self.fixed_batch)
        check_outputs(dets, kpts, len(inputs), self.source)
        return dets, kpts
