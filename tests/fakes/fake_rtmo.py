"""A tiny ONNX model with exactly RTMO's end2end I/O contract, and videos it can "see".

The model finds bright square markers (gray > 142, midway between background and marker so bilinear edges keep the area) in a 4 x 4 grid of 160-pixel cells of the 640 x 640 input.
For each cell with marker mass m (pixels), centroid c and s = sqrt(m) it outputs a person:
box = c -/+ (BOX_HALF * s), score = m / (m + 20), keypoints = c + KEYPOINT_OFFSETS * s with score
score * KEYPOINT_SCALE (the ankles score low, to exercise keypoint_threshold), plus a duplicate box shifted
by DUPLICATE_SHIFT * s with half the score, which NMS must remove. Empty cells give score 0.
So for a marker of side a (original pixels) centred at p, after letterbox and post-processing the expected
person is box = p -/+ BOX_HALF * a, keypoints = p + KEYPOINT_OFFSETS * a, in original pixels.
Built in the test session (never committed as a binary).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

GRID = 4
CELL = 160
INPUT = GRID * CELL
BOX_HALF = np.array([1.5, 2.5], np.float32)
DUPLICATE_SHIFT = 0.1
KEYPOINT_OFFSETS = np.array([
    [0.0, -2.0], [0.2, -2.15], [-0.2, -2.15], [0.4, -2.0], [-0.4, -2.0],   # nose, eyes, ears
    [0.7, -1.5], [-0.7, -1.5], [1.0, -0.8], [-1.0, -0.8], [1.2, -0.1], [-1.2, -0.1],  # arms
    [0.4, 0.2], [-0.4, 0.2], [0.5, 1.2], [-0.5, 1.2], [0.5, 2.2], [-0.5, 2.2],  # hips, knees, ankles
], np.float32)
KEYPOINT_SCALE = np.array([1.0] * 15 + [0.2, 0.2], np.float32)
BACKGROUND = 30
MARKER = 255


# The compute stand-in (bench only): a conv tower of this width on the 4x-downsampled input, 3x3 layers added until
# the requested cost; its output enters the scores multiplied by 0, so the detections stay the marker model's.
TOWER_CHANNELS = 64
TOWER_SIDE = INPUT // 4


def tower_gflops(layers: int) -> float:
    """Multiply-adds x 2 per image of the stand-in tower: the 4x4/4 stem plus `layers` 3x3 convs."""
    pixels = TOWER_SIDE * TOWER_SIDE
    return 2 * pixels * TOWER_CHANNELS * (3 * 16 + layers * 9 * TOWER_CHANNELS) / 1e9


def tower_layers(gflops: float) -> int:
    """The fewest 3x3 layers whose tower costs at least `gflops` per image."""
    layers = 0
    while gflops > 0 and tower_gflops(layers) < gflops:
        layers += 1
    return layers


def _build_module(gflops: float = 0.0):
    import torch

    layers = tower_layers(gflops)

    class FakeRTMO(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = None
            if gflops > 0:
                with torch.random.fork_rng(devices=[]):  # fixed weights; the caller's RNG left as it was
                    torch.manual_seed(0)
                    self.tower = torch.nn.Sequential(
                        torch.nn.Conv2d(3, TOWER_CHANNELS, 4, stride=4),
                        *[m for _ in range(layers) for m in (
                            torch.nn.Conv2d(TOWER_CHANNELS, TOWER_CHANNELS, 3, padding=1), torch.nn.ReLU())])
            ys, xs = torch.meshgrid(torch.arange(INPUT, dtype=torch.float32) + 0.5,
                                    torch.arange(INPUT, dtype=torch.float32) + 0.5, indexing="ij")
            self.register_buffer("xs", xs.reshape(1, GRID, CELL, GRID, CELL))
            self.register_buffer("ys", ys.reshape(1, GRID, CELL, GRID, CELL))
            self.register_buffer("offsets", torch.from_numpy(KEYPOINT_OFFSETS))
            self.register_buffer("kscale", torch.from_numpy(KEYPOINT_SCALE))
            self.register_buffer("box_half", torch.from_numpy(BOX_HALF))

        def forward(self, x):
            n = x.shape[0]
            mask = (x.mean(dim=1) > 142.0).float().reshape(n, GRID, CELL, GRID, CELL)
            mass = mask.sum(dim=(2, 4)).reshape(n, GRID * GRID, 1)
            cx = (mask * self.xs).sum(dim=(2, 4)).reshape(n, GRID * GRID, 1) / mass.clamp(min=1.0)
            cy = (mask * self.ys).sum(dim=(2, 4)).reshape(n, GRID * GRID, 1) / mass.clamp(min=1.0)
            s = mass.sqrt()
            score = mass / (mass + 20.0)
            if self.tower is not None:  # the cost of a real model, not its output
                score = score + self.tower(x / 255.0).mean(dim=(1, 2, 3)).reshape(n, 1, 1) * 0.0
            centre = torch.cat([cx, cy], dim=-1)                               # (n, C, 2)
            box = torch.cat([centre - self.box_half * s, centre + self.box_half * s], dim=-1)
            shift = torch.cat([s, s * 0.0, s, s * 0.0], dim=-1) * DUPLICATE_SHIFT
            dets = torch.cat([torch.cat([box, score], -1), torch.cat([box + shift, score * 0.5], -1)], 1)
            kxy = centre.unsqueeze(2) + self.offsets * s.unsqueeze(2)           # (n, C, 17, 2)
            ksc = (score * self.kscale).unsqueeze(-1)                           # (n, C, 17, 1)
            kpts = torch.cat([kxy, ksc], dim=-1)
            kpts_dup = torch.cat([kxy + shift[..., None, :2], ksc * 0.5], dim=-1)
            return dets, torch.cat([kpts, kpts_dup], dim=1)

    return FakeRTMO().eval()


def build_fake_rtmo(path: str | Path, dynamic_batch: bool = True, static_batch: int = 1, gflops: float = 0.0) -> Path:
    """Export the fake model to ONNX (input 'input', outputs 'dets', 'keypoints', as mmdeploy names them);
    without a dynamic batch axis the model takes exactly `static_batch` images. `gflops` > 0 adds a conv tower
    of at least that cost per image (multiply-adds x 2): the same outputs, with a model's compute to stand in for
    a real RTMO's (bench_extract.py --fake-gflops)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2 if dynamic_batch else static_batch, 3, INPUT, INPUT)
    axes = {"input": {0: "batch"}, "dets": {0: "batch"}, "keypoints": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but simplest for dynamic axes
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_build_module(gflops), (dummy,), str(path), input_names=["input"],
                          output_names=["dets", "keypoints"], dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def expected_person(centre_xy, side: float, image_wh) -> tuple[np.ndarray, np.ndarray]:
    """(box (4,), keypoints (17, 2)) the fake model should give for a marker, in original pixels."""
    c = np.asarray(centre_xy, np.float32)
    box = np.concatenate([c - BOX_HALF * side, c + BOX_HALF * side])
    w, h = image_wh
    return np.clip(box, 0, [w, h, w, h]), c + KEYPOINT_OFFSETS * side


def draw_markers(width: int, height: int, centres, side: int) -> np.ndarray:
    """BGR frame: dark background with a white square of `side` pixels centred on each (x, y)."""
    img = np.full((height, width, 3), BACKGROUND, np.uint8)
    for x, y in centres:
        x0, y0 = int(round(x - side / 2)), int(round(y - side / 2))
        img[max(y0, 0): y0 + side, max(x0, 0): x0 + side] = MARKER
    return img


def write_marker_video(path: str | Path, tracks: list[np.ndarray], width: int = 320, height: int = 240,
                       side: int = 12, fps: int = 25, codec: str = "libx264") -> Path:
    """Video whose frame t shows one marker per track at tracks[i][t] (NaN = absent). tracks: (T, 2) each."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num_frames = len(tracks[0]) if tracks else 0
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "ultrafast"}
        elif codec == "libx265":
            stream.options = {"crf": "12", "preset": "ultrafast", "x265-params": "log-level=error"}
        for t in range(num_frames):
            centres = [tr[t] for tr in tracks if not np.isnan(tr[t]).any()]
            frame = av.VideoFrame.from_ndarray(draw_markers(width, height, centres, side), format="bgr24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
