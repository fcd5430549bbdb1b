r"""Build a TensorRT engine from an RTMO end2end ONNX file (the training guide's onnx2tensorrt step).

    python rayjobs/build_trt_engine.py checkpoints/end2end_l.onnx --output checkpoints/rtmo.trt \
        --min-batch 1 --opt-batch 16 --max-batch 32 --fp16

Run it on the GPU model that will run the job (an engine is specific to the GPU and TensorRT version), then
set `model.inference_mode=tensorrt` and `model.tensorrt.model_path`. A model exported with a static batch
(no dynamic axis) gets an engine of that batch size; the job then runs it one batch at a time.
Needs the `tensorrt` package (pip install 'recognizer[tensorrt]'); nothing here runs without it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def build_engine(onnx_path: str, output: str, input_size=(640, 640), min_batch: int = 1, opt_batch: int = 8,
                 max_batch: int = 32, fp16: bool = False, workspace_gb: float = 4.0,
                 sample_shape: tuple[int, ...] | None = None) -> Path:
    """sample_shape: the input's shape after the batch axis when it is not an image (3, H, W), e.g. STGCN++'s
    (M, T, V, C) from rayjobs/export_model.py."""
    try:
        import tensorrt as trt
    except ImportError:
        raise SystemExit("build_trt_engine: the tensorrt package is not installed "
                         "(pip install 'recognizer[tensorrt]' on a machine with an NVIDIA GPU)") from None
    if not os.path.isfile(onnx_path):
        raise SystemExit(f"build_trt_engine: {onnx_path}: ONNX file not found")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise SystemExit(f"build_trt_engine: need 1 <= min_batch <= opt_batch <= max_batch, got "
                         f"{min_batch}, {opt_batch}, {max_batch}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise SystemExit(f"build_trt_engine: {onnx_path}: TensorRT cannot parse the model:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        if not builder.platform_has_fast_fp16:
            print("build_trt_engine: warning: this GPU has no fast fp16; building anyway", file=sys.stderr)
        config.set_flag(trt.BuilderFlag.FP16)
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    if shape[0] == -1:  # dynamic batch axis: one optimization profile over the batch range
        tail = tuple(sample_shape) if sample_shape else (3, *input_size)
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, (min_batch, *tail), (opt_batch, *tail), (max_batch, *tail))
        config.add_optimization_profile(profile)
    else:
        print(f"build_trt_engine: {onnx_path} has a static input {shape}: batch ranges ignored", file=sys.stderr)
    t0 = time.time()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SystemExit("build_trt_engine: TensorRT failed to build the engine (see the log above)")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, out)
    print(f"build_trt_engine: wrote {out} ({out.stat().st_size / 1e6:.1f} MB, fp16={fp16}) "
          f"in {time.time() - t0:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", help="RTMO end2end ONNX file")
    parser.add_argument("--output", required=True, help="engine file to write (e.g. checkpoints/rtmo.trt)")
    parser.add_argument("--input-size", type=int, nargs=2, default=[640, 640], metavar=("H", "W"))
    parser.add_argument("--min-batch", type=int, default=1)
    parser.add_argument("--opt-batch", type=int, default=16, help="batch TensorRT tunes for (= model.batch_size)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--fp16", action="store_true", help="allow fp16 kernels (the guide's fp16_mode)")
    parser.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace memory limit")
    args = parser.parse_args(argv)
    build_engine(args.onnx, args.output, tuple(args.input_size), args.min_batch, args.opt_batch, args.max_batch,
                 args.fp16, args.workspace_gb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
