"""Export a trained STGCN++ detector to ONNX (dynamic batch) with the JSON sidecar recognize needs.

    python rayjobs/export_model.py work_dirs/fight_demo --out exports/fight_demo.onnx
    python rayjobs/export_model.py work_dirs/fight_demo --out exports/fight.onnx --calibrate-precision 0.9
    python rayjobs/export_model.py best.pth --model-config configs/fight_stable.yaml --out exports/fight.onnx

The model is a training run folder, a Tune summary folder, or an mmaction2 .pth with --model-config. The
sidecar (<out>.json) holds the label names, the pipeline (feats, clip_len, num_person, num_clips), the fps and
window length of the training clips, the event thresholds and the source run. --calibrate-precision sets
each class's threshold to the lowest whose precision on the validation split reaches the value, scored by the
exported ONNX model (what recognize runs), after the parity check. The export is
checked against torch on real pipeline input (max |logit difference| printed; fails above --tolerance times
max(1, |logit|)). The .onnx and its sidecar are written under temporary names and moved into place only
after every step passed: a failed re-export leaves the previous pair as it was.
--background-class (a class name, an index or none) sets the class that never makes an event; by default the
class named like background (NonFight, Normal, ...), else class 0 (none for mmaction2 .py models).
--window-mode overrides the model's window kind; with `both`, --track-classes (comma-separated, default the
model's) names the per-person classes scored on per-track windows.
--trt-engine also builds a TensorRT engine of the model for external runtimes (Triton, trtexec): recognize
does not load it.
Run it with: python rayjobs/recognize.py --model <out>.onnx ... (ONNX Runtime, no torch).
Exit codes: 2 for bad options, a file it cannot read or write (`error: <path>: <reason>`) and calibration data
it cannot use (an empty validation split), 1 for a failed step (parity, calibration data not found, tensorrt), 130
when stopped by Ctrl-C or SIGTERM (temporary files removed).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # build_trt_engine beside this script


def export(model: str, out: str, *, model_config: str | None = None, calibrate_precision: float | None = None,
           tolerance: float = 1e-5, window_mode: str | None = None, track_classes: list[str] | None = None,
           background_class: str | None = None, trt_engine: str | None = None, fp16: bool = False) -> dict:
    from recognizer_core.recognize.spec import sidecar_path

    if fp16 and not trt_engine:
        raise ValueError("--fp16 sets the precision of the TensorRT engine: give --trt-engine too")
    if calibrate_precision is not None:
        check_precision(calibrate_precision)
    out_path = Path(resolve_output(out, "--out"))
    trt_engine = resolve_output(trt_engine, "--trt-engine") if trt_engine else trt_engine
    # Written under temporary names beside the target, moved into place at the end: a re-export that fails
    # a check (parity, calibration, engine build) must not leave new weights beside the old sidecar's labels
    # and thresholds.
    tmp = out_path.with_name(f".{out_path.stem}.{os.getpid()}.partial.onnx")
    try:
        report = _export(model, tmp, out_path, model_config=model_config, calibrate_precision=calibrate_precision,
                         tolerance=tolerance, window_mode=window_mode, track_classes=track_classes,
                         background_class=background_class, trt_engine=trt_engine, fp16=fp16)
        # the old sidecar goes first: between the moves there is a model without a sidecar (refused by
        # recognize), never a model with another model's sidecar
        sidecar_path(out_path).unlink(missing_ok=True)
        os.replace(tmp, out_path)
        os.replace(sidecar_path(tmp), sidecar_path(out_path))
    except OSError as err:
        raise _named_as_out(err, tmp, out_path) from err
    finally:
        for p in (tmp, sidecar_path(tmp)):
            # an --out under a file (/dev/full/m.onnx) makes unlink raise too, which hid the real error
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)
    return report


def _named_as_out(err: OSError, tmp: Path, out: Path) -> OSError:
    """`err` naming --out where it is about --out's folders or the temporary names beside it, which mean nothing
    to the user (an unwritable folder, a full disk, a file on the way); else `err` itself."""
    if not isinstance(err.filename, str):
        return err
    where = Path(err.filename)
    if where in out.parents:  # mkdir of /dev/full/m.onnx's folder says only "File exists"
        reason = f"{where} is not a folder" if isinstance(err, FileExistsError) else f"{where}: {err.strerror}"
    elif where.parent == out.parent and tmp.name.removesuffix(".onnx") in where.name:  # .onnx, .json, their .tmp
        reason = err.strerror
    else:
        return err
    return OSError(err.errno, reason, f"--out {out}")


def resolve_output(path: str, option: str) -> str:
    """An output path as every job resolves it (storage.output_uri): a relative one goes under
    $RECOGNIZER_STORAGE when set, and never into the package `ray job submit --working-dir` uploaded, which Ray
    deletes with the session (Path(out) put the model there). The files are written locally and renamed into
    place, so an object-store URI is refused (ValueError): given, or made by an s3:// $RECOGNIZER_STORAGE (then
    Path("s3://...") wrote a local folder "s3:")."""
    from recognizer_core.storage import STORAGE_ENV, is_remote, output_uri

    resolved = output_uri(path)
    if is_remote(resolved):
        if not is_remote(path):  # a relative path under an s3:// $RECOGNIZER_STORAGE
            raise ValueError(f"{option} {path} resolves under {STORAGE_ENV}={os.environ.get(STORAGE_ENV)} to "
                             f"{resolved}, object storage, which is not written here: give an absolute local or "
                             f"shared (NFS) path, or set {STORAGE_ENV} to a folder")
        raise ValueError(f"{option} {path}: give a local or shared (NFS) file path; object storage is not written "
                         "here (copy the files there afterwards)")
    if resolved != str(Path(path).expanduser().resolve()):  # the resolved place is not where a reader would look
        print(f"[export] {option} {path} -> {resolved}", file=sys.stderr, flush=True)
    return resolved


def check_precision(p: float) -> None:
    """--calibrate-precision within recognize's calibrate_precision bounds, (0, 1]: 90 or 1.5 gave threshold 1.0
    (never fires) and 0 or -1 gave 0.0 (fires on everything), written into the sidecar without a word."""
    from pydantic import ValidationError

    from recognizer_core.recognize.runner import RecognizeConfig

    try:
        RecognizeConfig(calibrate_precision=p)
    except ValidationError:
        raise ValueError(f"--calibrate-precision must be a precision in (0, 1] (0.9 = 90 %), got {p:g}") from None


def _export(model: str, tmp: Path, out: Path, *, model_config: str | None, calibrate_precision: float | None,
            tolerance: float, window_mode: str | None, track_classes: list[str] | None,
            background_class: str | None, trt_engine: str | None, fp16: bool) -> dict:
    """The export into `tmp` (.onnx and its .json); `out` is the name it will have (recorded in the sidecar)."""
    import torch

    from recognizer_core.export.onnx import OPSET, check_onnx_parity, export_onnx, write_sidecar
    from recognizer_core.names import spelled_as
    from recognizer_core.recognize.model import load_recognizer
    from recognizer_core.recognize.runner import make_windows_for
    from recognizer_core.recognize.spec import sidecar_path
    from recognizer_core.skeleton.demo_sequence import make_demo_sequence

    if trt_engine:
        try:
            import tensorrt  # noqa: F401
        except ImportError:  # before anything is written: no ONNX file without its engine and sidecar
            raise SystemExit("error: --trt-engine needs the tensorrt package (pip install 'recognizer[tensorrt]' "
                             "on a machine with an NVIDIA GPU); nothing was written") from None
    rec = load_recognizer(model, model_config=model_config, background_class=background_class)
    spec = rec.spec
    names = spec.label_names
    spell = spelled_as(names)   # typed on Linux (NFC) for a model with a Mac's (NFD) class names
    update: dict = {"window_mode": window_mode or spec.window_mode,
                    "track_classes": spec.track_classes if track_classes is None else [spell(n) for n in track_classes]}
    bad = [n for n in update["track_classes"] if n not in names]
    if bad:
        raise ValueError(f"--track-classes: unknown class(es) {bad}; the model's classes are {names}")
    if update["window_mode"] == "both" and not update["track_classes"]:
        raise ValueError("--window-mode both: no per-person classes; name them with --track-classes "
                         f"(of {[names[c] for c in spec.event_classes]})")
    # checked on real pipeline input (windows of the synthetic demo sequence), not on noise
    windows = make_windows_for(make_demo_sequence()[0], spec, stride_s=2.0)[:16]
    x = torch.from_numpy(rec.prepare([w.clip for w in windows])).flatten(0, 1)
    onnx_path = export_onnx(rec.net, tmp, x[:1])
    diff = check_onnx_parity(rec.net, onnx_path, x)
    with torch.no_grad():
        scale = max(1.0, float(rec.net(x).abs().max()))
    if diff > tolerance * scale:
        raise SystemExit(f"error: {out}: ONNX logits differ from torch by {diff:.3g} > {tolerance} x "
                         f"max(1, |logit|) = {tolerance * scale:.3g}; nothing was written")
    import hashlib

    # the model file's hash: recognize refuses a sidecar beside another model (same shapes, other labels)
    digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()
    update["source"] = {**spec.source, "exported_onnx": str(out), "opset": OPSET, "onnx_max_abs_diff": diff,
                        "onnx_sha256": digest}
    report = {"onnx": str(out), "max_abs_diff_vs_torch": diff, "max_abs_logit": round(scale, 3),
              "opset": OPSET}
    if calibrate_precision is not None:
        from recognizer_core.recognize.calibrate import calibrate_thresholds
        from recognizer_core.storage import is_remote

        data = spec.source.get("training_data", "")
        if not data or not (is_remote(data) or Path(data).is_dir()):  # Path("") is the working directory
            raise SystemExit(f"error: --calibrate-precision needs the model's training data; not found: {data!r}")
        split = spec.source.get("val_split", "val")  # the run's validation split (data.val_split)
        if spec.source.get("val_in_training"):   # tune --folds: the winner retrained on train + val
            print(f"[export] warning: calibrating on {split!r}, which this model (the --folds winner retrained on "
                  "train+val) trained on: its scores there are optimistic, and so are the thresholds' precisions",
                  file=sys.stderr, flush=True)
        # scored by the exported ONNX model, which recognize runs: the threshold is a boundary clip's score,
        # unrounded, and torch's score of it differs in the last float32 bits (up to ~3e-7), so a torch-calibrated
        # threshold could sit above that clip's ONNX score and fire on no validation clip
        onnx_rec = load_recognizer(onnx_path, spec=spec)  # the sidecar is written below: given the spec here
        update["thresholds"], report["calibration"] = calibrate_thresholds(onnx_rec, data, split,
                                                                           calibrate_precision)
    if trt_engine:  # same builder as the RTMO engines; needs the tensorrt package and a GPU (imported there)
        from build_trt_engine import build_engine

        p = spec.pipeline
        report["trt_engine"] = str(build_engine(str(onnx_path), trt_engine, min_batch=1, opt_batch=8, max_batch=64,
                                                fp16=fp16, sample_shape=(p.num_person, p.clip_len, 17,
                                                                         p.in_channels)))
        update["source"]["trt_engine"] = report["trt_engine"]
    spec = spec.model_copy(update=update)
    write_sidecar(onnx_path, json.loads(spec.to_json()))
    report["sidecar"] = str(sidecar_path(out))
    report.update(label_names=names, background_class=None if spec.background_class is None else
                  names[spec.background_class], window_s=round(spec.window_s, 3), fps=spec.fps,
                  window_mode=spec.window_mode, thresholds={k: v.on for k, v in spec.thresholds.items()})
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run folder, Tune summary folder, or mmaction2 .pth (with --model-config)")
    parser.add_argument("--out", required=True, help="output .onnx (the sidecar is written beside it as .json)")
    parser.add_argument("--model-config", help="config of a .pth: our training YAML or an mmaction2 .py")
    parser.add_argument("--calibrate-precision", type=float, help="thresholds at this validation precision")
    parser.add_argument("--window-mode", choices=["scene", "track", "both"], help="override the model's window mode")
    parser.add_argument("--track-classes", type=lambda s: [n.strip() for n in s.split(",") if n.strip()],
                        help="per-person classes for --window-mode both, comma-separated (default: the model's)")
    parser.add_argument("--background-class", help="the class that never makes an event: a class name, an index, "
                                                   "none or auto (default auto: named like background, else 0)")
    parser.add_argument("--trt-engine", help="also build a TensorRT engine (batch 1-64) here, for external runtimes "
                                             "(Triton, trtexec); recognize does not load it (GPU + tensorrt)")
    parser.add_argument("--fp16", action="store_true", help="TensorRT engine with fp16 kernels")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="max |logit diff| ONNX vs torch, relative to max(1, |logit|)")
    args = parser.parse_args(argv)
    if not args.out.endswith(".onnx"):
        parser.error("--out must end with .onnx")
    from recognizer_core.ray_runtime import install_stop_handlers

    # SIGTERM (a pod's end, `timeout`) stops as Ctrl-C does, through export()'s cleanup: by default it killed the
    # process and left the .partial.onnx temp files beside --out
    install_stop_handlers()
    try:
        report = export(args.model, args.out, model_config=args.model_config,
                        calibrate_precision=args.calibrate_precision, tolerance=args.tolerance,
                        window_mode=args.window_mode, track_classes=args.track_classes,
                        background_class=args.background_class, trt_engine=args.trt_engine, fp16=args.fp16)
    except KeyboardInterrupt as stop:
        print(f"stopped ({stop or 'Ctrl-C'}); the export's temporary files were removed", file=sys.stderr)
        return 130
    except OSError as err:  # the environment (a folder it cannot write, a full disk, a missing file): one line
        where = f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err)
        print(f"error: {where}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
