"""STGCN++ against mmaction2 1.2.0 golden outputs (../shared/golden, see its README)."""
from __future__ import annotations

import pytest
import torch

from recognizer_core.config import ConfigError, validate_config
from recognizer_core.models.recognizer import ModelConfig, build_recognizer
from tests.conftest import shared_path

GOLDEN = ["stgcnpp_seed_fight.pt", "stgcnpp_mmaction_default.pt"]
MMACTION_STGCN_DEFAULTS = dict(num_stages=10, inflate_stages=[5, 8], down_stages=[5, 8])


def golden_model(name: str):
    g = torch.load(shared_path("golden", name), map_location="cpu", weights_only=True)
    c = g["config"]
    cfg = ModelConfig(num_classes=c["num_classes"], in_channels=c["C"], layout="coco", dropout=0.0,
                      **{**MMACTION_STGCN_DEFAULTS, **c["backbone"]})
    assert cfg.head_in_channels == c["in_channels"]
    model = build_recognizer(cfg)
    model.load_state_dict(g["state_dict"], strict=True)
    return g, model.eval()


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_parity(name):
    g, model = golden_model(name)
    assert sum(p.numel() for p in model.parameters()) == g["num_parameters"]
    assert list(model.state_dict()) == list(g["state_dict"])  # same keys, same order as mmaction2
    with torch.no_grad():
        feat = model.extract_feat(g["input"])
        logits = model.cls_head(feat)
        logits_fwd = model(g["input"])
    assert feat.shape == g["backbone_out"].shape
    torch.testing.assert_close(feat, g["backbone_out"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, g["cls_score"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits_fwd, g["cls_score"], atol=1e-5, rtol=0)


def test_predict_averages_softmax_over_clips():
    g, model = golden_model("stgcnpp_seed_fight.pt")
    x = g["input"]  # (3, M, T, V, C): use the 3 samples as 3 clips of one video, plus a reversed copy
    clips = torch.stack([x, x.flip(0)])  # (2, 3, M, T, V, C)
    probs = model.predict(clips)
    expected = torch.softmax(g["cls_score"], dim=1).mean(0)
    assert probs.shape == (2, g["config"]["num_classes"])
    torch.testing.assert_close(probs[0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(probs[1], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.predict(clips, average="score")[0], g["cls_score"].mean(0), atol=1e-5, rtol=0)


def test_input_shape_errors_are_clear():
    model = build_recognizer(ModelConfig(num_stages=2, base_channels=8)).eval()
    with pytest.raises(ValueError, match="V=17 joints"):
        model(torch.zeros(1, 1, 8, 18, 3))
    with pytest.raises(ValueError, match="C=3 channels"):
        model(torch.zeros(1, 1, 8, 17, 2))
    with pytest.raises(ValueError, match="6-D"):
        model.predict(torch.zeros(1, 1, 8, 17, 3))


def test_model_config_validation_and_head_channels():
    assert ModelConfig().head_in_channels == 128
    assert ModelConfig(num_stages=10, inflate_stages=[5, 8], down_stages=[5, 8]).head_in_channels == 256
    for bad in ({"inflate_stages": [5]}, {"down_stages": [0]}, {"base_channels": 0}, {"dropout": 1.0},
                {"dropout": -0.1}, {"in_channels": 0}, {"layout": "kinect"}, {"inflate_stages": [2, 2]},
                {"num_classes": 0}, {"typo_field": 1}):
        with pytest.raises(ConfigError, match="model.yaml"):
            validate_config(ModelConfig, {**bad}, "model.yaml")
    # stage 1 never inflates (mmaction2 skips it too): listing it made head_in_channels 128 for a 64-channel head
    assert build_recognizer(ModelConfig(num_stages=2, inflate_stages=[2])).cls_head.fc.in_features == 128
    with pytest.raises(ConfigError, match="stage 1 is the input block"):
        validate_config(ModelConfig, {"num_stages": 2, "inflate_stages": [1]}, "model.yaml")


def test_training_step_updates_and_dropout_only_in_train():
    torch.manual_seed(0)
    model = build_recognizer(ModelConfig(num_stages=3, base_channels=16, dropout=0.5))
    x = torch.randn(4, 2, 16, 17, 3)
    out = model(x)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():  # dropout 0.5 on the head: train-mode forwards differ, eval-mode ones do not
        assert not torch.allclose(model(x), model(x))
        model.eval()
        torch.testing.assert_close(model(x), model(x))
