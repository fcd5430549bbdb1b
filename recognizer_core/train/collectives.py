"""Collectives of the training loops: whether this is a multi-process run, and reductions over the workers.

The loops keep running sums on their device and reduce them here once per log interval and per epoch, never
per step: a reduction is a host sync (and a network round trip between nodes).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device(device: torch.device | None) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors
    if distributed() and dist.get_backend() == "nccl":
        return device if device is not None and device.type == "cuda" else torch.device("cuda")
    return torch.device("cpu")


def all_reduce(values: Sequence[float | torch.Tensor], op: Any = None,
               device: torch.device | None = None) -> list[float]:
    """Sum (or `op`) of each value over the workers, as Python floats (one host sync)."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(()).to(_comm_device(device)) for v in values]) \
        if values else torch.zeros(0, dtype=torch.float64)
    if distributed():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_reduce_max(values: Sequence[float | torch.Tensor], device: torch.device | None = None) -> list[float]:
    return all_reduce(values, dist.ReduceOp.MAX, device)


def all_gather_tensors(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor concatenated over the workers, rank-major (every rank holds the same shapes)."""
    if not distributed():
        return list(tensors)
    out = []
    for t in tensors:
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        out.append(torch.cat(parts))
    return out


def gather_objects(obj: Any) -> list[Any]:
    if not distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def sync_buffers(model: torch.nn.Module) -> None:
    """Every floating-point buffer (BatchNorm running statistics) replaced by its mean over the workers, in place,
    as mmengine's SyncBuffersHook does after each training epoch. DDP does not broadcast buffers before each forward
    (ray_run.RayTrainContext.prepare_model), so each rank's statistics follow its own batches; without this, each
    rank would validate its shard with another model, and only rank 0's would reach the checkpoint.
    Buffers DDP was told to ignore (the DINO pose frozen backbone's, the same on every rank) are left alone."""
    if not distributed():
        return
    net = getattr(model, "module", model)  # DDP's own module: the ignore list is set on it
    ignored = set(getattr(net, "_ddp_params_and_buffers_to_ignore", ()))
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for name, buf in net.named_buffers():
        if buf.is_floating_point() and name not in ignored:
            by_dtype.setdefault(buf.dtype, []).append(buf)
    world = dist.get_world_size()
    with torch.no_grad():
        for bufs in by_dtype.values():  # one reduction per dtype, not one per buffer
            flat = torch.cat([b.reshape(-1) for b in bufs]).to(_comm_device(bufs[0].device))
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= world
            for b, mean in zip(bufs, flat.split([b.numel() for b in bufs])):
                b.copy_(mean.view_as(b))  # in place: CUDA graphs and torch.compile hold these tensors
