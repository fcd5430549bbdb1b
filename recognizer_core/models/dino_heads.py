"""Trainable parts of the DINO pose model: the CNN stem and the keypoint heatmap head.

Every head reads one shared `PoseFeatures` (backbone token maps + stem skips), so the guide's later heads
(robot keypoints, robot joint angles) plug into the same estimator next to the human keypoint head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PoseFeatures:
    """What the estimator computes once per image batch and hands to every head."""

    tokens: list[torch.Tensor]  # backbone patch tokens as maps, each (B, hidden, H/patch, W/patch)
    skip4: torch.Tensor  # stem features at 1/4 input resolution
    skip8: torch.Tensor  # stem features at 1/8 input resolution
    image_size: tuple[int, int]  # (H, W) of the input


def conv_bn_act(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.GELU())


class LightCNNStem(nn.Module):
    """A few strided convs on the image: fine spatial detail the 14/16-pixel ViT patches lose."""

    def __init__(self, channels4: int = 64, channels8: int = 128, in_channels: int = 3):
        super().__init__()
        self.to4 = nn.Sequential(conv_bn_act(in_channels, channels4 // 2, stride=2),
                                 conv_bn_act(channels4 // 2, channels4, stride=2), conv_bn_act(channels4, channels4))
        self.to8 = nn.Sequential(conv_bn_act(channels4, channels8, stride=2), conv_bn_act(channels8, channels8))
        self.channels4, self.channels8 = channels4, channels8

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f4 = self.to4(images)
        return f4, self.to8(f4)


class TokenFuser(nn.Module):
    """Backbone token maps of several layers -> one feature map (concat, 1x1 projection, 3x3 refinement)."""

    def __init__(self, hidden_size: int, num_maps: int, out_channels: int):
        super().__init__()
        self.project = conv_bn_act(hidden_size * num_maps, out_channels, kernel=1)
        self.refine = conv_bn_act(out_channels, out_channels)

    def forward(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        return self.refine(self.project(torch.cat(tokens, dim=1)))


class UpBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, two convs (a UNet decoder stage)."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.convs = nn.Sequential(conv_bn_act(cin + cskip, cout), conv_bn_act(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int] | None = None) -> torch.Tensor:
        size = tuple(skip.shape[-2:]) if skip is not None else size
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.convs(torch.cat([x, skip], dim=1) if skip is not None else x)


class HumanPoseKeypointHead(nn.Module):
    """TokenFuser -> UNet decoder (skips at 1/8 and 1/4 from the stem) -> K heatmaps at `heatmap_size`.

    Heatmaps finer than 1/4 of the input (the guide's 512x512 at 512x512) get extra upsampling stages at half
    the decoder width, so no stage jumps more than 2x without convolutions after it.
    """

    def __init__(self, *, hidden_size: int, num_token_maps: int, skip4_channels: int, skip8_channels: int,
                 heatmap_size: tuple[int, int], image_size: tuple[int, int], num_keypoints: int = 17,
                 fuser_channels: int = 256, decoder_channels: int = 128):
        super().__init__()
        self.heatmap_size = tuple(heatmap_size)
        self.fuser = TokenFuser(hidden_size, num_token_maps, fuser_channels)
        self.up8 = UpBlock(fuser_channels, skip8_channels, decoder_channels)
        self.up4 = UpBlock(decoder_channels, skip4_channels, decoder_channels)
        q_h, q_w = image_size[0] // 4, image_size[1] // 4
        fine = []
        c = decoder_channels
        while self.heatmap_size[0] > q_h * (2 ** len(fine)) or self.heatmap_size[1] > q_w * (2 ** len(fine)):
            fine.append(UpBlock(c, 0, max(decoder_channels // 2, 16)))
            c = max(decoder_channels // 2, 16)
        self.fine = nn.ModuleList(fine)
        self.predictor = nn.Sequential(conv_bn_act(c, c), nn.Conv2d(c, num_keypoints, 1))

    def forward(self, feats: PoseFeatures) -> torch.Tensor:
        x = self.fuser(feats.tokens)
        x = self.up8(x, feats.skip8)
        x = self.up4(x, feats.skip4)
        h, w = x.shape[-2:]
        for i, block in enumerate(self.fine):
            last = i == len(self.fine) - 1
            size = self.heatmap_size if last else (h * 2 ** (i + 1), w * 2 ** (i + 1))
            x = block(x, None, size=size)
        if tuple(x.shape[-2:]) != self.heatmap_size:
            x = F.interpolate(x, size=self.heatmap_size, mode="bilinear", align_corners=False)
        return self.predictor(x)


def weighted_heatmap_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over (B, K, H, W) of weight[b, k] * (pred - target)^2; weight 1 visible, 0.5 occluded, 0 unlabelled."""
    if pred.shape != target.shape:
        raise ValueError(f"heatmap shapes differ: prediction {tuple(pred.shape)} vs target {tuple(target.shape)}")
    err = (pred.float() - target.float()).pow(2).mean(dim=(2, 3))
    return (err * weight.float()).mean()
