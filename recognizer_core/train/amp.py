"""Mixed precision for every training loop: which autocast dtype, and whether a loss scaler is needed.

`none`, `bf16` and `fp16` mean what they say (fp16 only on CUDA: loss scaling is a GPU recipe); `auto` is bf16
on GPUs with native bf16 (Ampere, compute capability 8.0, and newer), fp16 with a scaler on older GPUs (T4, V100),
and full precision elsewhere.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AmpPlan:
    dtype: torch.dtype | None  # None: full precision
    scaler: bool

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def amp_plan(setting: str, device: torch.device) -> AmpPlan:
    if setting == "none" or (setting == "auto" and device.type != "cuda"):
        return AmpPlan(None, False)
    if setting == "auto":
        # torch's default counts emulated bf16 (CUDA >= 11 on sm_70/75) as supported: slow, and not what auto means
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return AmpPlan(torch.bfloat16, False) if native else AmpPlan(torch.float16, True)
    if setting == "fp16":
        if device.type != "cuda":
            raise ValueError("amp=fp16 needs a GPU (loss scaling is a CUDA recipe); use bf16 or none on CPU")
        return AmpPlan(torch.float16, True)
    if setting == "bf16":
        return AmpPlan(torch.bfloat16, False)
    raise ValueError(f"unknown amp setting {setting!r} (none, auto, bf16, fp16)")


def autocast(device: torch.device, setting: str):
    """Autocast context for an amp setting (the evaluation passes use this)."""
    return amp_plan(setting, device).autocast(device)
