"""GCN classification head (mmaction2 1.2.0 `GCNHead`): pool over T, V and persons, dropout, linear."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def average_clips(cls_scores: torch.Tensor, num_clips: int, mode: str | None = "prob") -> torch.Tensor:
    """mmaction2 BaseHead.average_clip: (N*num_clips, K) -> (N, K); 'prob' = softmax then mean over clips,
    'score' = mean of logits, None = (N, num_clips, K) unchanged."""
    if mode not in ("prob", "score", None):
        raise ValueError(f"average_clips must be 'prob', 'score' or None, got {mode!r}")
    scores = cls_scores.view((cls_scores.shape[0] // num_clips, num_clips) + cls_scores.shape[1:])
    if mode == "prob":
        return F.softmax(scores, dim=2).mean(dim=1)
    if mode == "score":
        return scores.mean(dim=1)
    return scores


class GCNHead(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else None
        self.fc = nn.Linear(in_channels, num_classes)
        # mmaction2 GCNHead init_cfg: Normal(std=0.01) on the Linear, zero bias.
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: backbone features (N, M, C, T, V) -> logits (N, num_classes)."""
        N, M, C, T, V = x.shape
        if C != self.in_channels:
            raise ValueError(f"GCNHead expects {self.in_channels} feature channels, got {C}")
        # mmaction2's AdaptiveAvgPool2d(1) over (T, V), then the mean over persons. As a sum then a scale
        # on the pooled values: the sum's gradient is a broadcast view, so the backbone's last backward ops
        # write their outputs in the backbone's own memory format (channels_last). A mean over (T, V) would
        # materialise its gradient as a fresh NCHW tensor and turn the last block's backward into NCHW.
        x = (x.sum(dim=(3, 4)) * (1.0 / (T * V))).mean(dim=1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)
