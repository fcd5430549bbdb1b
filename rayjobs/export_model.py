"""Export a trained STGCN++ detector to ONNX (dynamic batch) with the JSON sidecar recognize needs.

    python rayjobs/export_model.py work_dirs/fight_demo --out exports/fight_demo.onnx
    python rayjobs/export_model.py work_dirs/fight_demo --out exports/fight.onnx --calibrate-precision 0.9
    python rayjobs/export_model.py best.pth --model-config configs/fight_stable.yaml --out exports/fight.onnx

The model is a training run folder, a Tune summary folder, or an mmaction2 .pth with --model-config. The
sidecar (<out>.json) holds the label names, the pipeline (feats, clip_len, num_person, num_clips), the fps and
window length of the training clips, the event thresholds and the source run. --calibrate-precision sets
each class's threshold to the lowest whose precision on the validation split reaches the value. The export is
checked against torch on real pipeline input (max |logit difference| printed; fails above --tolerance times
max(1, |logit|)).
Run it with: python rayjobs/recognize.py --model <out>.onnx ... (ONNX Runtime, no torch).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # build_trt_engine beside this script


def export(model: str, out: str, *, model_config: str | None = None, calibrate_precision: float | None = None,
           tolerance: float = 1e-5, window_mode: str | None = None, trt_engine: str | None = None,
           fp16: bool = False) -> dict:
    import torch

    from recognizer_core.export.onnx import OPSET, check_onnx_parity, export_onnx, write_sidecar
    from recognizer_core.recognize.model import load_recognizer

    from recognizer_core.recognize.runner import make_windows_for
    from recognizer_core.skeleton.demo_sequence import make_demo_sequence

    if trt_engine:
        try:
            import tensorrt  # noqa: F401
        except ImportError:  # before anything is written: no ONNX file without its engine and sidecar
            raise SystemExit("error: --trt-engine needs the tensorrt package (pip install 'recognizer[tensorrt]' "
                             "on a machine with an NVIDIA GPU); nothing was written") from None
    rec = load_recognizer(model, model_config=model_config)
    spec = rec.spec
    # checked on real pipeline input (windows of the synthetic demo sequence), not on noise
    windows = make_windows_for(make_demo_sequence()[0], spec, stride_s=2.0)[:16]
    x = torch.from_numpy(rec.prepare([w.clip for w in windows])).flatten(0, 1)
    onnx_path = export_onnx(rec.net, out, x[:1])
    diff = check_onnx_parity(rec.net, onnx_path, x)
    with torch.no_grad():
        scale = max(1.0, float(rec.net(x).abs().max()))
    if diff > tolerance * scale:
        raise SystemExit(f"error: {onnx_path}: ONNX logits differ from torch by {diff:.3g} > {tolerance} x "
                         f"max(1, |logit|) = {tolerance * scale:.3g}")
    update: dict = {"source": {**spec.source, "exported_onnx": str(onnx_path), "opset": OPSET,
                               "onnx_max_abs_diff": diff}}
    report = {"onnx": str(onnx_path), "max_abs_diff_vs_torch": diff, "max_abs_logit": round(scale, 3),
              "opset": OPSET}
    if calibrate_precision is not None:
        from recognizer_core.recognize.calibrate import calibrate_thresholds

        data = spec.source.get("training_data", "")
        if not Path(data).is_dir():
            raise SystemExit(f"error: --calibrate-precision needs the model's training data; not found: {data!r}")
        split = spec.source.get("val_split", "val")  # the run's validation split (data.val_split)
        update["thresholds"], report["calibration"] = calibrate_thresholds(rec, data, split, calibrate_precision)
    if window_mode:
        update["window_mode"] = window_mode
    if trt_engine:  # same builder as the RTMO engines; needs the tensorrt package and a GPU (imported there)
        from build_trt_engine import build_engine

        p = spec.pipeline
        report["trt_engine"] = str(build_engine(str(onnx_path), trt_engine, min_batch=1, opt_batch=8, max_batch=64,
                                                fp16=fp16, sample_shape=(p.num_person, p.clip_len, 17,
                                                                         p.in_channels)))
        update["source"]["trt_engine"] = report["trt_engine"]
    spec = spec.model_copy(update=update)
    report["sidecar"] = str(write_sidecar(onnx_path, json.loads(spec.to_json())))
    report.update(label_names=spec.label_names, window_s=round(spec.window_s, 3), fps=spec.fps,
                  window_mode=spec.window_mode, thresholds={k: v.on for k, v in spec.thresholds.items()})
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run folder, Tune summary folder, or mmaction2 .pth (with --model-config)")
    parser.add_argument("--out", required=True, help="output .onnx (the sidecar is written beside it as .json)")
    parser.add_argument("--model-config", help="config of a .pth: our training YAML or an mmaction2 .py")
    parser.add_argument("--calibrate-precision", type=float, help="thresholds at this validation precision")
    parser.add_argument("--window-mode", choices=["scene", "track", "both"], help="override the model's window mode")
    parser.add_argument("--trt-engine", help="also build a TensorRT engine (batch 1-64) here (GPU + tensorrt)")
    parser.add_argument("--fp16", action="store_true", help="TensorRT engine with fp16 kernels")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="max |logit diff| ONNX vs torch, relative to max(1, |logit|)")
    args = parser.parse_args(argv)
    if not args.out.endswith(".onnx"):
        parser.error("--out must end with .onnx")
    try:
        report = export(args.model, args.out, model_config=args.model_config,
                        calibrate_precision=args.calibrate_precision, tolerance=args.tolerance,
                        window_mode=args.window_mode, trt_engine=args.trt_engine, fp16=args.fp16)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
