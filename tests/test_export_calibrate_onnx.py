"""export --calibrate-precision calibrates with the model recognize runs: the exported ONNX model, not torch."""
from __future__ import annotations

import numpy as np
import pytest

from recognizer_core.recognize.calibrate import precision_recall_at
from recognizer_core.recognize.model import load_recognizer
from recognizer_core.recognize.spec import ModelSpec
from recognizer_core.skeleton.store import SkeletonDataset
from tests.recognize_helpers import make_run_folder


@pytest.mark.parametrize("seed, precision", [(0, 1.0), (2, 0.6)])
def test_calibrated_threshold_and_recorded_numbers_are_the_onnx_models(tmp_path, seed, precision):
    """The threshold is the boundary clip's score, unrounded, so that the clip fires; it was torch's score, and
    ONNX scores the same clip up to ~3e-7 apart. On this run (seed 0) at precision 1.0 the one Fight clip scores
    0.0034218319 in torch, a hair above its ONNX score: the sidecar said precision 1.0 recall 1.0, and the
    exported model fired on no validation clip (recall 0). Seed 2 at 0.6: a negative clip above torch's threshold
    falls below it in ONNX (recorded precision 0.667, ONNX 1.0)."""
    from rayjobs.export_model import export

    run, cfg = make_run_folder(tmp_path, seed=seed)
    out = tmp_path / "fight.onnx"
    report = export(str(run), str(out), calibrate_precision=precision)
    on = ModelSpec.read(out.with_suffix(".json")).thresholds["Fight"].on
    recorded = report["calibration"]["Fight"]
    assert recorded["threshold"] == on

    rec = load_recognizer(out)  # as recognize loads it: the .onnx with its sidecar
    clips = list(SkeletonDataset(cfg.data.path).iter_clips("val", copy=True))
    scores = rec.predict(rec.prepare(clips))[:, rec.spec.label_names.index("Fight")]
    fight = np.array([c.label for c in clips]) == rec.spec.label_names.index("Fight")
    assert fight.any() and precision_recall_at(scores, fight, on) == (recorded["precision"], recorded["recall"])
    assert recorded["target_reached"] and recorded["recall"] > 0
    assert (scores == on).any()  # the clip whose score set the threshold fires at it
