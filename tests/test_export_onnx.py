"""STGCN++ -> ONNX: logits equal to the mmaction2 goldens; the exported model + sidecar run without torch."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recognizer_core.export.onnx import export_onnx, onnx_session
from tests.recognize_helpers import make_run_folder
from tests.test_models_parity import GOLDEN, golden_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", GOLDEN)
def test_onnx_logits_equal_the_goldens_with_a_dynamic_batch(tmp_path, name):
    g, model = golden_model(name)
    path = export_onnx(model, tmp_path / "m.onnx", g["input"][:1])  # traced at batch 1, run at batch 3
    out = onnx_session(path).run(None, {"skeletons": g["input"].numpy()})[0]
    assert out.shape == tuple(g["cls_score"].shape)
    np.testing.assert_allclose(out, g["cls_score"].numpy(), atol=1e-5, rtol=0)


_NO_TORCH = """
import json, sys
sys.modules["torch"] = None  # any torch import now fails
from recognizer_core.recognize.model import load_recognizer
from recognizer_core.recognize.runner import RecognizeConfig, effective_spec, recognize_clip
from recognizer_core.skeleton.demo_sequence import make_demo_sequence
rec = load_recognizer(sys.argv[1])
clip, _ = make_demo_sequence((("fight", 0, 4), ("fight", 1, 5)), seed=1)
res = recognize_clip(rec, clip, effective_spec(rec.spec, RecognizeConfig()), RecognizeConfig())
print(json.dumps({"probs": res.probs.tolist(), "type": type(rec).__name__}))
"""


def test_calibration_uses_the_runs_validation_split(tmp_path):
    """A run trained with data.val_split=xsub_val (NTU-style pickles): calibration looked for a split named 'val'
    and failed, or would have calibrated on other clips where one exists."""
    from rayjobs.export_model import export

    run, _ = make_run_folder(tmp_path, val_split="xsub_val")
    report = export(str(run), str(tmp_path / "fight.onnx"), calibrate_precision=0.5)
    assert report["calibration"]["split"] == "xsub_val" and report["calibration"]["clips"] > 0


def test_calibration_reads_training_data_on_object_storage(tmp_path, s3):
    """A model trained on an s3:// data.path (training reads one since 2026-12-05): export's calibration refused
    its training data as 'not found' (a folder check)."""
    from recognizer_core import storage
    from recognizer_core.config import dump_config
    from rayjobs.export_model import export

    run, cfg = make_run_folder(tmp_path)
    s3.create_bucket(Bucket="data")
    storage.copy_tree(cfg.data.path, "s3://data/ds")
    dump_config(cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": "s3://data/ds"})}),
                run / "config.yaml")
    report = export(str(run), str(tmp_path / "fight.onnx"), calibrate_precision=0.5)
    assert report["calibration"]["clips"] > 0


def test_export_job_sidecar_and_torch_free_recognize(tmp_path):
    from recognizer_core.recognize.model import load_recognizer
    from recognizer_core.recognize.runner import RecognizeConfig, effective_spec, recognize_clip
    from recognizer_core.recognize.spec import ModelSpec
    from recognizer_core.skeleton.demo_sequence import make_demo_sequence

    run, _ = make_run_folder(tmp_path)
    out = tmp_path / "export" / "fight.onnx"
    proc = subprocess.run([sys.executable, str(ROOT / "rayjobs/export_model.py"), str(run), "--out", str(out),
                           "--calibrate-precision", "0.5"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["max_abs_diff_vs_torch"] < 1e-5 and report["label_names"] == ["NonFight", "Fight"]
    spec = ModelSpec.read(out.with_suffix(".json"))
    assert spec.pipeline.feats == ["j", "b"] and spec.pipeline.num_person == 2 and spec.fps == 30.0
    assert spec.thresholds["Fight"].source.startswith("validation: precision")
    assert spec.source["checkpoint"].endswith("best_acc_top1_epoch_3.pth")

    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["type"] == "OnnxRecognizer"
    torch_rec = load_recognizer(run)
    clip, _ = make_demo_sequence((("fight", 0, 4), ("fight", 1, 5)), seed=1)
    ref = recognize_clip(torch_rec, clip, effective_spec(torch_rec.spec, RecognizeConfig()), RecognizeConfig()).probs
    assert len(ref) > 10
    np.testing.assert_allclose(np.array(got["probs"]), ref, atol=1e-5, rtol=0)
    bad = tmp_path / "other.onnx"
    bad.write_bytes(out.read_bytes())  # no sidecar beside it: one clear error
    with pytest.raises(FileNotFoundError, match="other.json: model sidecar not found"):
        load_recognizer(bad)
    # a sidecar that describes another model: one line at load, not a shape error in every window (exit 0)
    side = json.loads(out.with_suffix(".json").read_text())
    for change, named in ((lambda d: d["pipeline"].update(clip_len=48), "frames (pipeline.clip_len) 48"),
                          (lambda d: d["pipeline"].update(feats=["j"]), "channels (pipeline.feats) 3"),
                          (lambda d: d.update(label_names=["NonFight", "Fight", "Fall"]), "3 labels")):
        wrong = json.loads(json.dumps(side))
        change(wrong)
        if len(wrong["label_names"]) == 3:
            wrong["model"]["num_classes"], wrong["thresholds"]["Fall"] = 3, wrong["thresholds"]["Fight"]
        bad.with_suffix(".json").write_text(json.dumps(wrong))
        with pytest.raises(ValueError, match=rf"other.json does not describe .*other.onnx: {re.escape(named)}"):
            load_recognizer(bad)
    # same shapes, another model file (labels that would be silently wrong): the export's sha256 tells them apart;
    # a sidecar from before the hash was recorded still loads
    assert len(side["source"]["onnx_sha256"]) == 64
    other = json.loads(json.dumps(side))
    other["source"]["onnx_sha256"] = "0" * 64
    bad.with_suffix(".json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"other.json does not describe .*: the model file is not the one exported"):
        load_recognizer(bad)
    del other["source"]["onnx_sha256"]
    bad.with_suffix(".json").write_text(json.dumps(other))
    assert load_recognizer(bad).spec.label_names == ["NonFight", "Fight"]


def test_tensorrt_engine_request_without_tensorrt_fails_before_writing(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed: the engine would be built")
    except ImportError:
        pass
    out = tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, str(ROOT / "rayjobs/export_model.py"), str(tmp_path / "run"), "--out",
                           str(out), "--trt-engine", str(tmp_path / "m.trt")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "needs the tensorrt package" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def _mmaction_py(tmp_path, cfg) -> Path:
    from recognizer_core.models.checkpoint import mmaction_config_text

    py = tmp_path / "stgcnpp.py"
    py.write_text(mmaction_config_text(cfg.model) + "test_pipeline = [dict(type='GenSkeFeat', dataset='coco', "
                  "feats=['j', 'b']), dict(type='UniformSampleFrames', clip_len=24, num_clips=2, test_mode=True), "
                  "dict(type='FormatGCNInput', num_person=2)]\n")
    return py


def test_a_failed_reexport_leaves_the_previous_model_and_sidecar(tmp_path):
    """Re-export to the same --out, failing at calibration: the new .onnx was written before the check, beside
    the old sidecar, so recognize ran the new weights with the old labels and thresholds."""
    import shutil

    from rayjobs.export_model import export
    from recognizer_core.recognize.spec import ModelSpec

    out = tmp_path / "export" / "model.onnx"
    first, _ = make_run_folder(tmp_path / "a")
    export(str(first), str(out))
    before = out.read_bytes(), out.with_suffix(".json").read_text()
    second, _ = make_run_folder(tmp_path / "b", seed=1, task="falldown")   # other weights, other classes
    shutil.rmtree(tmp_path / "b" / "dataset")                             # so calibration cannot run
    with pytest.raises(SystemExit, match="needs the model's training data"):
        export(str(second), str(out), calibrate_precision=0.9)
    assert (out.read_bytes(), out.with_suffix(".json").read_text()) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.json", "model.onnx"]  # no partial files
    # a successful one replaces both, and --track-classes reaches the sidecar with --window-mode both
    with pytest.raises(ValueError, match="--window-mode both: no per-person classes"):
        export(str(second), str(out), window_mode="both")
    report = export(str(second), str(out), window_mode="both", track_classes=["Falldown"])
    spec = ModelSpec.read(out.with_suffix(".json"))
    assert out.read_bytes() != before[0] and report["onnx"] == str(out) and spec.source["exported_onnx"] == str(out)
    assert spec.label_names == ["Normal", "Falldown"] and spec.track_classes == ["Falldown"]
    assert spec.background_class == 0 and spec.source["background_class"] == "auto: class named 'Normal'"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.json", "model.onnx"]


def test_calibration_without_training_data_is_an_error_not_the_working_directory(tmp_path, monkeypatch, capsys):
    """An mmaction2 .pth + .py model records no training data: "" was read as Path(""), the working directory."""
    from rayjobs.export_model import export
    from rayjobs.recognize import main as recognize_main

    run, cfg = make_run_folder(tmp_path)
    pth, py = next(run.glob("best_*.pth")), _mmaction_py(tmp_path, cfg)
    monkeypatch.chdir(cfg.data.path)   # a dataset in the working directory: it was calibrated on
    with pytest.raises(SystemExit, match="needs the model's training data; not found: ''"):
        export(str(pth), str(tmp_path / "m.onnx"), model_config=str(py), calibrate_precision=0.5)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.json").exists()
    rc = recognize_main(["--model", str(pth), "--model-config", str(py), "--input", str(tmp_path / "none"),
                         "--output", str(tmp_path / "out"), "--set", "calibrate_precision=0.5"])
    assert rc == 2 and "calibrate_precision: the model's training data is not here ('')" in capsys.readouterr().err


def test_fp16_without_a_trt_engine_is_an_error(tmp_path, capsys):
    from rayjobs.export_model import main

    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx"), "--fp16"]) == 2
    assert "--fp16 sets the precision of the TensorRT engine: give --trt-engine too" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_track_classes_typed_in_nfc_are_written_as_a_macs_nfd_class_names(tmp_path):
    """A model trained from a Mac's folders has NFD class names; --track-classes typed on Linux is NFC. The
    sidecar must hold the model's own spelling, or recognize never matches the class as per-person."""
    import unicodedata

    import torch

    from rayjobs.export_model import export
    from recognizer_core.recognize.spec import ModelSpec

    nfd = [unicodedata.normalize("NFD", n) for n in ("정상", "싸움")]
    assert nfd[1] != "싸움"
    run, _ = make_run_folder(tmp_path)
    pth = next(run.glob("best_*.pth"))
    ckpt = torch.load(pth, weights_only=True)
    ckpt["meta"]["dataset_meta"]["classes"] = nfd   # the checkpoint's classes name the model's labels
    torch.save(ckpt, pth)
    out = tmp_path / "m.onnx"
    export(str(run), str(out), window_mode="both", track_classes=["싸움"])
    spec = ModelSpec.read(out.with_suffix(".json"))
    assert spec.label_names == nfd and spec.track_classes == [nfd[1]] and spec.window_mode == "both"
