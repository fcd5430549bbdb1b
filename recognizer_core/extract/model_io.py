"""What every RTMO backend shares: the output contract (names, shapes), running a static-batch model in
chunks, and joining chunk outputs whose detection axis differs (NMS inside the export)."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class BackendError(RuntimeError):
    """A model that cannot be loaded or run as asked (missing file, provider, wrong I/O); names the cause."""


class PoseBackend(Protocol):
    provider: str               # what actually runs the model, e.g. "CUDAExecutionProvider", "TensorRT"
    fixed_batch: int | None     # the model's static batch size, None when the batch axis is dynamic

    def __call__(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) float32 -> dets (N, K, 5), keypoints (N, K, 17, 3)."""


def pick_outputs(names: list[str]) -> tuple[int, int]:
    """Indices of (dets, keypoints): by name when the export kept mmdeploy's names, else by order."""
    if "dets" in names and "keypoints" in names:
        return names.index("dets"), names.index("keypoints")
    if len(names) != 2:
        raise BackendError(f"RTMO model must have 2 outputs (dets, keypoints), found {names}")
    return 0, 1


def run_in_chunks(run, inputs: np.ndarray, fixed_batch: int | None) -> tuple[np.ndarray, np.ndarray]:
    if fixed_batch is None:
        return run(inputs)
    dets, kpts = [], []
    for s in range(0, len(inputs), fixed_batch):
        chunk = inputs[s : s + fixed_batch]
        n = len(chunk)
        if n < fixed_batch:  # a static batch > 1 needs a full batch: pad with copies, drop their outputs
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed_batch - n, axis=0)])
        d, k = run(chunk)
        dets.append(d[:n])
        kpts.append(k[:n])
    return pad_detections(dets, kpts)


def check_outputs(dets: np.ndarray, kpts: np.ndarray, n: int, source: str) -> None:
    if dets.ndim != 3 or dets.shape[0] != n or dets.shape[2] != 5:
        raise BackendError(f"{source}: output dets must be (N={n}, K, 5), got {dets.shape}")
    if kpts.ndim != 4 or kpts.shape[:2] != dets.shape[:2] or kpts.shape[2:] != (17, 3):
        raise BackendError(f"{source}: output keypoints must be (N, K, 17, 3) matching dets, got {kpts.shape}")


def pad_detections(dets, kpts) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-chunk outputs along the batch whose detection axis K differs (data-dependent NMS
    output): pad each to the largest K with zero-score rows, which post-processing drops."""
    k = max(d.shape[1] for d in dets)
    pad_d = [np.pad(d, ((0, 0), (0, k - d.shape[1]), (0, 0))) for d in dets]
    pad_k = [np.pad(p, ((0, 0), (0, k - p.shape[1]), (0, 0), (0, 0))) for p in kpts]
    return np.concatenate(pad_d), np.concatenate(pad_k)
