r"""Build a TensorRT engine from an RTMO end2end ONNX file (the training guide's onnx2tensorrt step).

    python rayjobs/build_trt_engine.py --config configs/extraction.yaml      # paths, size, fp16 from the YAML
    python rayjobs/build_trt_engine.py checkpoints/end2end_l.onnx --output checkpoints/rtmo.trt \
        --min-batch 1 --opt-batch 16 --max-batch 32 --fp16

With `--config` (an extraction YAML) the ONNX file, engine path, input size, batch size (the optimisation
target) and `model.tensorrt.fp16_mode` come from its `model:` section; arguments given here override them.
Run it on the GPU model that will run the job (an engine is specific to the GPU and TensorRT version), then
set `model.inference_mode=tensorrt` and `model.tensorrt.model_path`. A model exported with a static batch
(no dynamic axis) gets an engine of that batch size; the job then runs it one batch at a time.
Needs TensorRT 10.x (pip install 'recognizer[tensorrt]'); nothing here runs without it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognizer_core.config import ConfigError, read_yaml, validate_config  # noqa: E402
from recognizer_core.extract.config import PoseModelConfig  # noqa: E402
from recognizer_core.extract.model_io import BackendError  # noqa: E402
from recognizer_core.extract.tensorrt_backend import check_tensorrt_version  # noqa: E402


def build_engine(onnx_path: str, output: str, input_size=(640, 640), min_batch: int = 1, opt_batch: int = 8,
                 max_batch: int = 32, fp16: bool = False, workspace_gb: float = 4.0,
                 sample_shape: tuple[int, ...] | None = None) -> Path:
    """sample_shape: the input's shape after the batch axis when it is not an image (3, H, W), e.g. STGCN++'s
    (M, T, V, C) from rayjobs/export_model.py. `output` is resolved as every job's outputs are
    (storage.output_uri): a relative path under $RECOGNIZER_STORAGE when set, never inside the package
    `ray job submit --working-dir` uploaded (Ray deletes it with the session, and the engine with it). An
    object-store result (given, or under an s3:// $RECOGNIZER_STORAGE) is refused: the engine is a local file."""
    from recognizer_core.storage import STORAGE_ENV, is_remote, output_uri

    resolved = output_uri(output)
    if is_remote(resolved):  # given, or made by an s3:// $RECOGNIZER_STORAGE (Path() made a local folder "s3:")
        if not is_remote(output):
            raise SystemExit(f"error: build_trt_engine: --output {output} resolves under {STORAGE_ENV}="
                             f"{os.environ.get(STORAGE_ENV)} to {resolved}, object storage: the engine is written "
                             f"as a local file; give an absolute local or shared (NFS) path, or set {STORAGE_ENV} "
                             "to a folder")
        raise SystemExit(f"error: build_trt_engine: --output {output}: give a local or shared (NFS) file path; "
                         "the engine is written as a local file")
    out = Path(resolved)
    try:
        import tensorrt as trt
    except ImportError:
        raise SystemExit("error: build_trt_engine: the tensorrt package is not installed "
                         "(pip install 'recognizer[tensorrt]' on a machine with an NVIDIA GPU)") from None
    try:
        check_tensorrt_version(trt.__version__)
    except BackendError as err:
        raise SystemExit(f"error: build_trt_engine: {err}") from None
    if not os.path.isfile(onnx_path):
        raise SystemExit(f"build_trt_engine: {onnx_path}: ONNX file not found")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise SystemExit(f"build_trt_engine: need 1 <= min_batch <= opt_batch <= max_batch, got "
                         f"{min_batch}, {opt_batch}, {max_batch}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)   # TensorRT 10: explicit batch is the only mode (the flag is gone)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise SystemExit(f"build_trt_engine: {onnx_path}: TensorRT cannot parse the model:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:  # TensorRT 10's weakly typed network: FP16 is a builder flag (11 moved precision into the graph)
        if not getattr(builder, "platform_has_fast_fp16", True):
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, out)
    print(f"build_trt_engine: wrote {out} ({out.stat().st_size / 1e6:.1f} MB, fp16={fp16}) "
          f"in {time.time() - t0:.0f} s")
    return out


def resolve_args(args: argparse.Namespace) -> dict:
    """build_engine's arguments: the command line, else the config's `model:` section, else the defaults."""
    model = PoseModelConfig()
    if args.config:
        data = read_yaml(args.config).get("model", {})
        model = validate_config(PoseModelConfig, data, f"{args.config} (model)")
    onnx = args.onnx or model.onnx.model_path
    output = args.output or model.tensorrt.model_path
    if not onnx or not output:
        raise ConfigError("give the ONNX file and --output (or model.onnx.model_path and "
                          "model.tensorrt.model_path in --config)")
    opt = args.opt_batch or model.batch_size
    return {"onnx_path": onnx, "output": output,
            "input_size": tuple(args.input_size or model.model_input_size),
            "min_batch": min(args.min_batch, opt), "opt_batch": opt, "max_batch": max(args.max_batch, opt),
            "fp16": args.fp16 if args.fp16 is not None else model.tensorrt.fp16_mode,
            "workspace_gb": args.workspace_gb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", nargs="?", default="", help="RTMO end2end ONNX file (default: the config's)")
    parser.add_argument("--config", help="extraction YAML whose `model:` section gives the defaults")
    parser.add_argument("--output", default="", help="engine file to write (default: model.tensorrt.model_path)")
    parser.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--min-batch", type=int, default=1)
    parser.add_argument("--opt-batch", type=int, default=0, help="batch TensorRT tunes for (default: "
                        "model.batch_size)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None,
                        help="allow fp16 kernels (default: model.tensorrt.fp16_mode)")
    parser.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace memory limit")
    args = parser.parse_args(argv)
    try:
        kwargs = resolve_args(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    build_engine(**kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
