"""Pose-extraction throughput: the Ray Data job vs an rtmlib-style loop (one process, batch 1), same model
and videos, in one run; decode speed alone; model frames/s by batch size.

    python bench/bench_extract.py                          # fake RTMO-contract model, ../shared videos
    python bench/bench_extract.py --onnx end2end_l.onnx --device cuda --videos /data/clips --batches 1 8 16 32

Prints ONE JSON line and appends it to bench/results/extract.jsonl. With the default fake model (built
from tests/fakes, RTMO's exact I/O but almost no compute) the figures measure the pipeline (decode,
letterbox, transfer, post-processing, tracking) around a stand-in model whose cost is not RTMO's; pass
a real RTMO file for model figures.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402

from recognizer_core.extract.backends import build_backend  # noqa: E402
from recognizer_core.extract.config import ExtractionConfig, PoseModelConfig, SourceConfig  # noqa: E402
from recognizer_core.extract.rtmo import RtmoPoseEstimator  # noqa: E402
from recognizer_core.extract.sources import list_videos  # noqa: E402
from recognizer_core.track.tracking import track_poses  # noqa: E402
from recognizer_core.extract.video import iter_frames  # noqa: E402


def rtmlib_style_loop(videos, model_cfg: PoseModelConfig, tracking_cfg) -> tuple[int, float]:
    """What rtmlib / the guide's stage 1 does: decode a frame, letterbox it, run batch 1, post-process."""
    est = RtmoPoseEstimator(build_backend(model_cfg), model_cfg)
    frames, t0 = 0, time.perf_counter()
    for v in videos:
        inds, poses = [], []
        for idx, image in iter_frames(v.uri):
            poses.append(est.estimate_image(image))
            inds.append(idx)
        track_poses(inds, poses, tracking_cfg)
        frames += len(inds)
    return frames, time.perf_counter() - t0


def decode_only(videos, input_size) -> tuple[int, float]:
    frames, t0 = 0, time.perf_counter()
    for v in videos:
        for _ in iter_frames(v.uri, input_size=input_size):
            frames += 1
    return frames, time.perf_counter() - t0


def model_fps_by_batch(model_cfg: PoseModelConfig, batches, seconds: float = 3.0) -> dict:
    backend = build_backend(model_cfg)
    h, w = model_cfg.model_input_size
    out = {}
    for b in batches:
        if backend.fixed_batch is not None and b != backend.fixed_batch:
            continue
        x = np.random.default_rng(0).integers(0, 255, (b, 3, h, w)).astype(np.float32)
        backend(x)  # warm-up (cuDNN / TensorRT autotuning)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            backend(x)
            n += b
        out[str(b)] = round(n / (time.perf_counter() - t0), 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", default=str(REPO.parent / "shared" / "data" / "videos"))
    parser.add_argument("--onnx", default="", help="RTMO end2end ONNX (default: build the fake model)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--batch-size", type=int, default=8, help="inference batch of the Ray job")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8, 16, 32])
    parser.add_argument("--num-actors", type=int, default=1)
    parser.add_argument("--gpus-per-actor", type=float, default=0.0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "extract.jsonl"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        onnx = args.onnx
        if not onnx:
            from fakes.fake_rtmo import build_fake_rtmo

            onnx = str(build_fake_rtmo(work / "fake_rtmo.onnx"))
        videos = list_videos(SourceConfig(input=args.videos))
        cfg = ExtractionConfig.model_validate({
            "source": {"input": args.videos}, "output": str(work / "poses"),
            "model": {"onnx": {"model_path": onnx, "device": args.device}, "batch_size": args.batch_size},
            "ray": {"num_actors": args.num_actors, "num_gpus_per_actor": args.gpus_per_actor,
                    "num_cpus_per_actor": 1.0, "num_cpus_per_decode_task": 1.0}})

        dec_frames, dec_s = decode_only(videos, cfg.model.model_input_size)
        loop_frames, loop_s = rtmlib_style_loop(videos, cfg.model, cfg.tracking)

        import ray

        t0 = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
        spec = importlib.util.spec_from_file_location("extract_poses", REPO / "rayjobs" / "extract_poses.py")
        job = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(job)
        summary = job.run_extraction(cfg, verbose=False)
        ray_fps = summary["frames"] / summary["seconds"]
        result = {
            "bench": "extract", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(),
            "cpus": os.cpu_count(), "device": args.device, "provider": summary["provider"],
            "model": "fake_rtmo (RTMO I/O contract; its compute is not RTMO's)" if not args.onnx else os.path.basename(onnx),
            "videos": len(videos), "frames": loop_frames,
            "ray_job_fps": round(ray_fps, 1), "loop_batch1_fps": round(loop_frames / loop_s, 1),
            "ray_vs_loop": round(ray_fps / (loop_frames / loop_s), 2),
            "decode_letterbox_fps": round(dec_frames / dec_s, 1),
            "ray_job_s": summary["seconds"], "ray_startup_s": round(startup, 1), "ray_batch_size": args.batch_size,
            "ray_done": summary["done"], "ray_failed": summary["failed"],
            "model_fps_by_batch": model_fps_by_batch(cfg.model, args.batches),
        }
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    line = json.dumps(result)
    print(line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
