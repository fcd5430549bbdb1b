"""Non-finite losses and running losses without a host sync per step on a GPU.

A step whose (already DDP-reduced, so identical on every rank) gradients are not finite is skipped: on a GPU by
the fused optimizer's `found_inf` flag, on the device (the training loops); elsewhere after a host check
(`grads_finite`), which costs nothing on a CPU. Zeroing the gradients instead is no skip: SGD momentum and Adam's
moments still move the weights (by 80-90% of a normal step), and Adam's step count advances. The losses that
were not finite are counted on the device; `check()` (once per log interval and per epoch) reduces the counts
over the workers and stops the run after too many in a row.
"""
from __future__ import annotations

from typing import Iterable

import torch

from recognizer_core.train.collectives import all_reduce, all_reduce_max


class NonFiniteGuard:
    def __init__(self, device: torch.device, max_in_a_row: int, in_a_row: int = 0):
        self.device, self.max_in_a_row = device, max_in_a_row
        self.in_a_row = torch.tensor(float(in_a_row), device=device)  # consecutive non-finite losses
        self.worst = self.in_a_row.clone()  # longest such run since the last check
        self.count = torch.zeros((), device=device)  # non-finite losses since the last epoch_count()

    def finite_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Record one step's loss; returns its finiteness as a 0-d bool tensor (on the device)."""
        finite = torch.isfinite(loss.detach())
        bad = (~finite).to(self.in_a_row.dtype)
        self.in_a_row = (self.in_a_row + 1) * bad
        self.worst = torch.maximum(self.worst, self.in_a_row)
        self.count = self.count + bad
        return finite

    @staticmethod
    def grads_finite(params: Iterable[torch.nn.Parameter], total_norm: torch.Tensor | None = None) -> bool:
        """Whether every gradient is finite (`total_norm`: the grad norm if already computed). A host sync: for
        optimizers without a device-side skip (not fused), whose step the caller then leaves out."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return True
        if total_norm is None:
            total_norm = torch.nn.utils.get_total_norm(grads)
        return bool(torch.isfinite(total_norm))

    @classmethod
    def step_allowed(cls, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                     total_norm: torch.Tensor | None = None) -> bool:
        """Whether to call the optimizer step at all. A fused optimizer (GPUs) is always stepped, with GradScaler's
        `found_inf` flag set on it: its kernel skips a non-finite update on the device, no host sync (the caller
        removes the flag after the step). Any other is checked on the host (`grads_finite`)."""
        if not all(group.get("fused") for group in optimizer.param_groups):
            return cls.grads_finite(params, total_norm)
        if total_norm is None:
            total_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        optimizer.found_inf = (~torch.isfinite(total_norm)).float()
        return True

    def check(self, where: str) -> None:
        """Host sync (all workers): raise if more than max_in_a_row non-finite losses came in a row."""
        worst = int(all_reduce_max([self.worst], self.device)[0])
        self.worst = self.in_a_row.clone()
        if worst > self.max_in_a_row:
            raise FloatingPointError(
                f"{worst} non-finite losses in a row (train.max_nonfinite_steps={self.max_in_a_row}) {where}: the "
                "run diverged; lower optim.lr, enable clipping or check the data for NaN")

    def epoch_count(self) -> int:
        """Non-finite losses since the previous call (max over the workers); host sync."""
        n = int(all_reduce_max([self.count], self.device)[0])
        self.count = torch.zeros((), device=self.device)
        return n

    def state(self) -> int:
        return int(self.in_a_row.item())


class LossMeter:
    """Weighted mean of the finite losses, kept on the device; reduced over the workers only when read."""

    def __init__(self, device: torch.device):
        self.device = device
        self._sum = torch.zeros((), device=device)
        self._n = torch.zeros((), device=device)

    def add(self, loss: torch.Tensor, finite: torch.Tensor, weight: float = 1.0) -> None:
        self._sum = self._sum + torch.where(finite, loss.detach(), 0.0) * weight
        self._n = self._n + finite * weight

    def mean(self) -> float:
        """Mean over all workers since the last call (host sync); NaN when nothing finite was added."""
        s, n = all_reduce([self._sum, self._n], device=self.device)
        self._sum, self._n = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        return s / n if n else float("nan")
