"""DINO pose estimator: frozen DINO ViT + LightCNNStem + named heads (the guide's DINOv3HumanPoseEstimator).

    images -> DinoBackbone (frozen) -> token maps ─┐
           -> LightCNNStem -> 1/4, 1/8 skips ──────┴─> PoseFeatures -> heads["keypoints"] -> (B,17,Hh,Wh)

Heads live in a ModuleDict keyed by task, so the robot keypoint / angle heads of the guide's next step are
`model.add_head("robot_keypoints", head)`: same backbone features, no copy of the model. Checkpoints hold the
trainable weights only; the backbone is reloaded by name (it would be 90% of the file and never changes).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from recognizer_core.config import StrictModel
from recognizer_core.models.dino_backbone import DinoBackbone, build_backbone, resolve_backbone_dtype
from recognizer_core.models.dino_heads import HumanPoseKeypointHead, LightCNNStem, PoseFeatures

KEYPOINT_HEAD = "keypoints"


class DinoPoseModelConfig(StrictModel):
    backbone: str = Field("facebook/dinov2-base", description="Hugging Face name or local directory of a DINOv2 / "
                          "DINOv2-with-registers / DINOv3 ViT checkpoint (loaded with AutoModel.from_pretrained)")
    feature_layers: list[int] = Field([-4, -3, -2, -1], description="transformer layers whose patch tokens the "
                                      "TokenFuser combines (negative = from the last)")
    backbone_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="frozen backbone precision; auto = bfloat16 on CUDA GPUs that support it")
    stem_channels: tuple[int, int] = Field((64, 128), description="LightCNNStem widths at 1/4 and 1/8 scale")
    fuser_channels: int = Field(256, gt=0)
    decoder_channels: int = Field(128, gt=0, description="UNet decoder width")
    num_keypoints: int = Field(17, gt=0)

    @field_validator("stem_channels")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 2:
            raise ValueError("stem widths must be >= 2")
        return v


class DinoPoseEstimator(nn.Module):
    def __init__(self, backbone: DinoBackbone, stem: LightCNNStem, heads: dict[str, nn.Module] | None = None):
        super().__init__()
        self.backbone = backbone
        self.stem = stem
        self.heads = nn.ModuleDict(heads or {})

    def add_head(self, name: str, head: nn.Module) -> None:
        if name in self.heads:
            raise ValueError(f"head {name!r} already exists")
        self.heads[name] = head

    def features(self, images: torch.Tensor) -> PoseFeatures:
        skip4, skip8 = self.stem(images)
        return PoseFeatures(tokens=self.backbone(images), skip4=skip4, skip8=skip8,
                            image_size=(images.shape[-2], images.shape[-1]))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(images)
        return {name: head(feats) for name, head in self.heads.items()}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.") and p.requires_grad]

    def backbone_parameter_names(self) -> list[str]:
        """Parameter and buffer names DDP must neither broadcast nor all-reduce (same on every rank)."""
        names = [f"backbone.{n}" for n, _ in self.backbone.named_parameters()]
        return names + [f"backbone.{n}" for n, _ in self.backbone.named_buffers()]

    # Checkpoints: trainable weights only. `prefix` handles DDP's `module.` when it calls us.
    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        sd = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [k for k in sd if k.startswith(prefix + "backbone.")]:
            del sd[key]
        return sd

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"DINO pose checkpoint does not match the model: missing {missing[:8]}, "
                               f"unexpected {result.unexpected_keys[:8]}")
        return result


def build_dino_pose_model(cfg: DinoPoseModelConfig, *, image_size: tuple[int, int], heatmap_size: tuple[int, int],
                          device: torch.device | str | None = None) -> DinoPoseEstimator:
    """Load the backbone by name/path and attach the stem and the human keypoint head."""
    backbone = build_backbone(cfg.backbone, cfg.feature_layers, resolve_backbone_dtype(cfg.backbone_dtype, device))
    stem = LightCNNStem(*cfg.stem_channels)
    head = HumanPoseKeypointHead(
        hidden_size=backbone.out_channels, num_token_maps=backbone.num_feature_maps,
        skip4_channels=stem.channels4, skip8_channels=stem.channels8, heatmap_size=tuple(heatmap_size),
        image_size=tuple(image_size), num_keypoints=cfg.num_keypoints, fuser_channels=cfg.fuser_channels,
        decoder_channels=cfg.decoder_channels)
    model = DinoPoseEstimator(backbone, stem, {KEYPOINT_HEAD: head})
    return model.to(device) if device is not None else model
