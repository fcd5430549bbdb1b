"""STGCN++ recognizer (mmaction2 1.2.0 `RecognizerGCN` = STGCN backbone + GCNHead) and its typed config."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from recognizer_core.config import StrictModel

from .gcn_head import GCNHead, average_clips
from .graph import LAYOUTS
from .stgcn import STGCN


class ModelConfig(StrictModel):
    """STGCN++ (gcn_adaptive='init', gcn_with_res, mstcn, 'spatial' graph) + GCNHead."""

    num_classes: int = Field(2, gt=0, description="number of action classes")
    in_channels: int = Field(3, gt=0, description="input channels C per joint (3 for x, y, score; 2 for x, y)")
    layout: Literal["coco", "nturgb+d", "openpose", "handmp"] = Field("coco", description="skeleton graph layout")
    num_stages: int = Field(4, ge=1, description="number of ST-GCN blocks")
    base_channels: int = Field(64, gt=0, description="channels of the first block")
    inflate_stages: list[int] = Field([2], description="1-based blocks that double the channels")
    down_stages: list[int] = Field([2], description="1-based blocks that halve the temporal length")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="dropout before the classifier")
    with_cp: bool = Field(False, description="gradient checkpointing per block (less memory, more compute)")

    @field_validator("inflate_stages", "down_stages")
    @classmethod
    def _sorted_unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"stages must be unique, got {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _stages_in_range(self) -> "ModelConfig":
        # stage 1 is the input block, which neither mmaction2 nor this STGCN ever inflates or downsamples: with
        # it listed, head_in_channels (and the exported mmaction2 config's GCNHead) counted one doubling too many
        for name in ("inflate_stages", "down_stages"):
            bad = [s for s in getattr(self, name) if not 2 <= s <= self.num_stages]
            if bad:
                raise ValueError(f"{name} {bad} outside 2..num_stages ({self.num_stages}): stage 1 is the input "
                                 "block, which never changes channels or length")
        return self

    @property
    def num_joints(self) -> int:
        return LAYOUTS[self.layout][0]

    @property
    def head_in_channels(self) -> int:
        return self.base_channels * 2 ** len(self.inflate_stages)


class RecognizerGCN(nn.Module):
    """`backbone` + `cls_head` (mmaction2 submodule names, so state_dict keys match)."""

    def __init__(self, backbone: STGCN, cls_head: GCNHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.cls_head = cls_head

    def _check_input(self, x: torch.Tensor, ndim: int) -> None:
        shape = "(N, num_clips, M, T, V, C)" if ndim == 6 else "(N, M, T, V, C)"
        if x.ndim != ndim:
            raise ValueError(f"expected a {ndim}-D input {shape}, got shape {tuple(x.shape)}")
        V, C = x.shape[-2:]
        if V != self.backbone.num_joints or C != self.backbone.in_channels:
            raise ValueError(f"input {shape} has V={V}, C={C}; the model expects V={self.backbone.num_joints} "
                             f"joints ({self.backbone.graph.layout}) and C={self.backbone.in_channels} channels")

    def extract_feat(self, x: torch.Tensor) -> torch.Tensor:
        """(N, M, T, V, C) -> backbone features (N, M, C_out, T_out, V)."""
        self._check_input(x, 5)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, M, T, V, C) -> logits (N, num_classes). A 6-D (N, num_clips, ...) batch is flattened to
        N*num_clips samples, as mmaction2 does for the loss."""
        if x.ndim == 6:
            x = x.flatten(0, 1)
        return self.cls_head(self.extract_feat(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, average: Literal["prob", "score"] = "prob") -> torch.Tensor:
        """(N, num_clips, M, T, V, C) -> class probabilities averaged over clips (N, num_classes)
        (mmaction2 average_clips='prob'; 'score' averages logits instead)."""
        self._check_input(x, 6)
        N, num_clips = x.shape[:2]
        return average_clips(self.forward(x.flatten(0, 1)), num_clips, average)


def build_recognizer(cfg: ModelConfig) -> RecognizerGCN:
    backbone = STGCN(layout=cfg.layout, mode="spatial", in_channels=cfg.in_channels,
                     base_channels=cfg.base_channels, num_stages=cfg.num_stages,
                     inflate_stages=cfg.inflate_stages, down_stages=cfg.down_stages,
                     gcn_adaptive="init", gcn_with_res=True, tcn_type="mstcn", with_cp=cfg.with_cp)
    head = GCNHead(cfg.num_classes, backbone.out_channels, dropout=cfg.dropout)
    return RecognizerGCN(backbone, head)
