"""DINO pose model on tiny random DINOv2 / DINOv2-with-registers / DINOv3 checkpoints loaded by local path."""
from __future__ import annotations

import pytest
import torch
from dino_tiny import make_tiny_dino
from torch import nn

from recognizer_core.models.dino_backbone import BackboneError, build_backbone, load_vit
from recognizer_core.models.dino_heads import weighted_heatmap_mse
from recognizer_core.models.dino_pose import KEYPOINT_HEAD, DinoPoseModelConfig, build_dino_pose_model

SMALL = dict(feature_layers=[-2, -1], stem_channels=(8, 16), fuser_channels=16, decoder_channels=16)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("dino")
    return {k: str(make_tiny_dino(root / k, k)) for k in ("dinov2", "dinov2_registers", "dinov3")}


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_registers", "dinov3"])
def test_patch_tokens_without_cls_and_registers(checkpoints, kind):
    vit = load_vit(checkpoints[kind])
    bb = build_backbone(checkpoints[kind], [-1], torch.float32)
    x = torch.randn(2, 3, 64, 48)
    (fmap,) = bb(x)
    p = 14 if kind.startswith("dinov2") else 16
    grid = (5, 3) if p == 14 else (4, 3)  # 64 x 48 is 4.6 x 3.4 patches of 14: resized to 70 x 42
    assert fmap.shape == (2, 32, *grid)
    prefix = 1 + (4 if kind != "dinov2" else 0)
    with torch.no_grad():
        sized = torch.nn.functional.interpolate(x, size=(grid[0] * p, grid[1] * p), mode="bilinear")
        ref = vit.eval()(pixel_values=sized).last_hidden_state[:, prefix:]
    torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), ref)


def test_every_pixel_of_the_crop_reaches_the_backbone(checkpoints):
    """A crop whose sides are not whole patches: the ViT used to see only the floored part (36 patches of 14 =
    504 of 512 px), and the head stretched that over the whole crop, misplacing features toward the far edges."""
    bb = build_backbone(checkpoints["dinov2"], [-1], torch.float32)
    x = torch.zeros(1, 3, 70, 70)
    edge = x.clone()
    edge[..., 64:, 64:] = 3.0  # something in the bottom-right corner only: beyond 5 whole patches (70 // 14 = 5)
    crop = (slice(None), slice(None), slice(0, 66), slice(0, 66))  # 66 px: 4.7 patches, so 5 resized
    (plain,), (seen,) = bb(x[crop]), bb(edge[crop])
    assert plain.shape[-2:] == (5, 5)
    changed = (seen - plain).abs().amax(1)[0]
    assert changed[-1, -1] > 1e-3  # the corner patch sees it (floored to 4 patches, nothing did)


def test_float32_backbone_stays_float32_under_the_loops_autocast(checkpoints):
    x = torch.randn(1, 3, 56, 42)
    bb = build_backbone(checkpoints["dinov2"], [-1], torch.float32)
    (ref,) = bb(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as train_one_epoch / predict_heatmaps call the model
        (got,) = bb(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["dinov2", "dinov3"])
@pytest.mark.parametrize("image_size,heatmap_size", [((64, 48), (16, 12)), ((256, 192), (64, 48)),
                                                     ((64, 64), (64, 64))])
def test_heatmap_shapes(checkpoints, kind, image_size, heatmap_size):
    cfg = DinoPoseModelConfig(backbone=checkpoints[kind], **SMALL)
    model = build_dino_pose_model(cfg, image_size=image_size, heatmap_size=heatmap_size)
    out = model(torch.randn(2, 3, *image_size))
    assert set(out) == {KEYPOINT_HEAD}
    assert out[KEYPOINT_HEAD].shape == (2, 17, *heatmap_size)


def test_backbone_is_frozen_and_stays_in_eval_mode(checkpoints):
    model = build_dino_pose_model(DinoPoseModelConfig(backbone=checkpoints["dinov3"], **SMALL),
                                  image_size=(64, 48), heatmap_size=(16, 12))
    model.train()
    assert model.stem.training and not model.backbone.training and not model.backbone.vit.training
    # DINOv3 jitters its RoPE coordinates in train mode: the frozen backbone must give the same features twice
    x = torch.randn(2, 3, 64, 48)
    torch.testing.assert_close(model.backbone(x)[0], model.backbone(x)[0], rtol=0, atol=0)
    before = {k: v.clone() for k, v in model.backbone.vit.state_dict().items()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    out = model(torch.randn(2, 3, 64, 48))[KEYPOINT_HEAD]
    out.pow(2).mean().backward()
    opt.step()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.heads.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.backbone.vit.state_dict().items())
    n_trainable = sum(p.numel() for p in model.trainable_parameters())
    assert n_trainable == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))


def test_bf16_backbone_matches_fp32(checkpoints):
    x = torch.randn(1, 3, 64, 48)
    (f32,) = build_backbone(checkpoints["dinov2"], [-1], torch.float32)(x)
    (b16,) = build_backbone(checkpoints["dinov2"], [-1], torch.bfloat16)(x)
    assert b16.dtype == torch.float32
    assert (b16 - f32).abs().mean() < 0.05 * f32.abs().mean()


def test_checkpoint_holds_trainable_weights_only(checkpoints):
    cfg = DinoPoseModelConfig(backbone=checkpoints["dinov2"], **SMALL)
    a = build_dino_pose_model(cfg, image_size=(64, 48), heatmap_size=(16, 12))
    sd = a.state_dict()
    assert sd and not any(k.startswith("backbone.") for k in sd)
    torch.manual_seed(5)
    b = build_dino_pose_model(cfg, image_size=(64, 48), heatmap_size=(16, 12))
    b.load_state_dict(sd)
    x = torch.randn(1, 3, 64, 48)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x)[KEYPOINT_HEAD], b(x)[KEYPOINT_HEAD])
    with pytest.raises(RuntimeError, match="missing"):
        b.load_state_dict({k: v for k, v in sd.items() if not k.startswith("stem.")})


def test_more_heads_share_the_backbone_features(checkpoints):
    model = build_dino_pose_model(DinoPoseModelConfig(backbone=checkpoints["dinov2"], **SMALL),
                                  image_size=(64, 48), heatmap_size=(16, 12))

    class AngleHead(nn.Module):  # the guide's robot joint-angle head, as a stand-in
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 6)

        def forward(self, feats):
            return self.fc(feats.tokens[-1].mean(dim=(2, 3)))

    model.add_head("robot_angles", AngleHead())
    out = model(torch.randn(2, 3, 64, 48))
    assert out["robot_angles"].shape == (2, 6) and out[KEYPOINT_HEAD].shape == (2, 17, 16, 12)
    assert any(n.startswith("heads.robot_angles.") for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="already"):
        model.add_head("robot_angles", AngleHead())


def test_weighted_mse():
    target = torch.zeros(1, 3, 4, 4)
    pred = torch.ones(1, 3, 4, 4)
    assert weighted_heatmap_mse(pred, target, torch.tensor([[1.0, 0.5, 0.0]])).item() == pytest.approx(1.5 / 3)
    assert weighted_heatmap_mse(pred, target, torch.zeros(1, 3)).item() == 0.0
    with pytest.raises(ValueError, match="shapes"):
        weighted_heatmap_mse(pred, torch.zeros(1, 3, 2, 2), torch.ones(1, 3))


def test_bad_backbone_settings(checkpoints, tmp_path):
    with pytest.raises(BackboneError, match="feature_layers"):
        build_backbone(checkpoints["dinov2"], [-5], torch.float32)
    with pytest.raises(BackboneError, match="model.backbone"):
        load_vit(str(tmp_path / "no_such_model"))
