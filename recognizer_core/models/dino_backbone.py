"""Frozen DINO vision transformer (DINOv2, DINOv2 with registers, DINOv3 ViT) as a patch-feature extractor.

Loaded with `transformers.AutoModel.from_pretrained(name_or_path)`, so a Hub name (`facebook/dinov2-base`) and
a local directory (`huggingface-cli download ... --local-dir`, or a `save_pretrained` folder) take the same path.
The backbone is never trained here: no gradients, always eval mode (DINOv3's RoPE jitters its coordinates in
train mode), optionally run in bfloat16. Position encodings follow the input size: DINOv2 interpolates its
learned table (`Dinov2Embeddings.interpolate_pos_encoding`), DINOv3 computes RoPE from the patch grid.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

# ImageNet statistics: what every DINOv2 / DINOv3 (LVD-1689M) checkpoint's image processor normalises with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(ValueError):
    """A backbone that cannot be used (wrong architecture, bad layer index)."""


def load_vit(name_or_path: str) -> nn.Module:
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(name_or_path)
    except OSError as err:
        raise BackboneError(
            f"model.backbone={name_or_path!r}: cannot load it with transformers ({err}). Give a Hub name "
            "(facebook/dinov2-base, facebook/dinov3-vitb16-pretrain-lvd1689m after accepting its licence) or a "
            "local directory holding config.json and model.safetensors") from None
    return model


def _final_norm_name(model: nn.Module) -> str:
    # Dinov2Model / Dinov2WithRegistersModel call it `layernorm`, DINOv3ViTModel `norm`.
    for name in ("layernorm", "norm"):
        if isinstance(getattr(model, name, None), nn.LayerNorm):
            return name
    raise BackboneError(f"{type(model).__name__}: no final LayerNorm found; is this a DINO ViT?")


class DinoBackbone(nn.Module):
    """Patch tokens of selected transformer layers as feature maps `(B, hidden, H/patch, W/patch)`."""

    def __init__(self, vit: nn.Module, feature_layers: list[int], dtype: torch.dtype = torch.float32):
        super().__init__()
        cfg = vit.config
        self.vit = vit
        self._norm_name = _final_norm_name(vit)  # a name, not a second reference (no duplicate state keys)
        self.hidden_size = int(cfg.hidden_size)
        patch = cfg.patch_size
        self.patch_size = tuple(patch) if isinstance(patch, (list, tuple)) else (int(patch), int(patch))
        # CLS plus register tokens precede the patch tokens (4 registers in dinov2-with-registers and DINOv3).
        self.num_prefix_tokens = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        depth = int(cfg.num_hidden_layers)
        bad = [i for i in feature_layers if not -depth <= i < depth]
        if bad or not feature_layers:
            raise BackboneError(f"model.feature_layers={feature_layers}: this backbone has {depth} layers, "
                                f"give indices in [-{depth}, {depth - 1}]")
        self.feature_layers = [i % depth for i in feature_layers]
        self.dtype = dtype
        self.vit.to(dtype)
        self.vit.requires_grad_(False)
        self.vit.eval()

    @property
    def out_channels(self) -> int:
        return self.hidden_size

    @property
    def num_feature_maps(self) -> int:
        return len(self.feature_layers)

    def train(self, mode: bool = True) -> DinoBackbone:
        # Frozen: `model.train()` on the estimator must not switch the backbone to train mode.
        super().train(False)
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        b, _, h, w = images.shape
        (ph, pw) = self.patch_size
        if h < ph or w < pw:
            raise BackboneError(f"input {h}x{w} is smaller than one {self.patch_size} patch")
        gh, gw = int(h / ph + 0.5), int(w / pw + 0.5)
        if (gh * ph, gw * pw) != (h, w):
            # The ViT sees whole patches only. Floored, its token map covered gw * pw of the crop's w pixels, and the
            # head, which stretches that map over the stem's map of the whole crop, misplaced features by up to 8 px
            # at the far edges (512 px with /14 patches). Resized to whole patches, the grid spans the crop.
            images = F.interpolate(images, size=(gh * ph, gw * pw), mode="bilinear", align_corners=False)
        # enabled=False for float32: an autocast region that is off turns the loop's AMP autocast off inside it,
        # where a bare nullcontext left a "float32" backbone running in bf16 / fp16
        fp32 = self.dtype == torch.float32
        autocast = torch.autocast(images.device.type, dtype=torch.bfloat16 if fp32 else self.dtype, enabled=not fp32)
        with torch.no_grad(), autocast:
            out = self.vit(pixel_values=images.to(self.dtype), output_hidden_states=True)
            # hidden_states[0] is the embedding output; layer i's output is hidden_states[i + 1].
            norm = getattr(self.vit, self._norm_name)
            maps = []
            for i in self.feature_layers:
                tokens = norm(out.hidden_states[i + 1])[:, self.num_prefix_tokens:, :]
                if tokens.shape[1] != gh * gw:
                    raise BackboneError(f"expected {gh}x{gw} patch tokens, got {tokens.shape[1]}")
                maps.append(tokens.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).float().contiguous())
        return maps


def resolve_backbone_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    """`auto`: bfloat16 on a CUDA GPU with native bf16 (Ampere, compute capability 8.0, and newer), float32 elsewhere
    (CPU bf16 matmuls are slow; pre-Ampere GPUs only emulate bf16, which torch's default check counts)."""
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float32


def build_backbone(name_or_path: str, feature_layers: list[int], dtype: torch.dtype) -> DinoBackbone:
    return DinoBackbone(load_vit(name_or_path), feature_layers, dtype)
