"""Pose-extraction throughput: the Ray Data job vs rtmlib's RTMO at batch 1, same ONNX model, same videos.

    python bench/bench_extract.py [--repeats 5] [--max-videos N]     # fake RTMO-contract model, ../shared videos
    python bench/bench_extract.py --onnx end2end_l.onnx --device cuda --videos /data/clips

Peer: rtmlib (`pip install rtmlib`, bench only; it takes a local ONNX path) used as its README shows: OpenCV
decodes each frame, `RTMO(onnx_model=...)(frame)` letterboxes, runs batch 1 and post-processes. Ours: the
extraction job (decode tasks -> RTMO actor pool at --batch-size -> per-video tracking + Parquet write tasks).
Ray is started once, timed and reported separately (`ray_startup_s`); it is in none of the frames/s. Our job's
seconds include its own start-up (decode tasks and the inference actor starting, the model loading; until its
first poses, `ray_first_poses_s`, which also holds the first block's decoding and inference), rtmlib's loop
does not include loading its model (`rtmlib_model_load_s`, timed apart in every repeat), so two more ratios over
the same pairs: both with start-up
(`ray_vs_rtmlib_both_loading_the_model`) and neither (`ray_after_first_poses_vs_rtmlib`, ours counted from its
first poses).
The three measurements alternate repeat by repeat (ours, rtmlib, ours alone without the model, ours, ...)
so each pair sees the same machine load; each pair gives a ratio (our frames/s / rtmlib's), reported as
the median with its min-max. With the default fake model (built from tests/fakes: RTMO's exact I/O, almost
no compute) the figures measure everything around the model, so the bench also reports our decode +
letterbox + post-processing + tracking alone, in one process, model time excluded. `--max-videos N` takes
the first N videos (sorted) so that 5+ pairs fit in a few minutes on a slow box. Prints ONE JSON line and
appends it to bench/results/extract.jsonl.
"""
from __future__ import annotations

import argparse
import importlib.util
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

from bench.common import machine, median, now, save_result  # noqa: E402
from recognizer_core.extract.backends import build_backend  # noqa: E402
from recognizer_core.extract.config import ExtractionConfig, PoseModelConfig, SourceConfig  # noqa: E402
from recognizer_core.extract.rtmo import postprocess, to_model_input  # noqa: E402
from recognizer_core.extract.sources import list_videos  # noqa: E402
from recognizer_core.extract.video import iter_frames, letterbox_params  # noqa: E402
from recognizer_core.track.config import TrackingConfig  # noqa: E402
from recognizer_core.track.tracking import track_poses  # noqa: E402


def build_rtmlib(onnx: str, device: str, model_cfg: PoseModelConfig):
    try:
        import rtmlib
    except ImportError:  # bench only, never a project dependency (it pulls OpenCV)
        raise SystemExit("bench_extract: the peer, rtmlib, is not installed: `pip install rtmlib`, or keep the venv "
                         "clean with `pip install --no-deps --target DIR rtmlib opencv-python-headless` and "
                         "PYTHONPATH=DIR") from None

    return rtmlib.RTMO(onnx_model=onnx, model_input_size=tuple(model_cfg.model_input_size),
                       score_thr=model_cfg.score_threshold, nms_thr=model_cfg.nms_threshold, backend="onnxruntime",
                       device=device)


def rtmlib_batch1(videos, rtmo) -> tuple[int, float]:
    """rtmlib as its README runs a video: cv2.VideoCapture frames -> RTMO (letterbox, batch 1, NMS)."""
    import cv2

    frames, t0 = 0, time.perf_counter()
    for v in videos:
        cap = cv2.VideoCapture(v.uri)
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            rtmo(frame)
            frames += 1
        cap.release()
    return frames, time.perf_counter() - t0


def pipeline_without_model(videos, model_cfg: PoseModelConfig, tracking: TrackingConfig) -> dict:
    """Our per-frame work around the model, one process: decode + letterbox, post-processing, tracking.
    The model runs (its outputs feed post-processing) but is not timed."""
    backend = build_backend(model_cfg)
    size = tuple(model_cfg.model_input_size)
    t_decode = t_post = t_track = 0.0
    frames = 0
    for v in videos:
        inds, poses = [], []
        hw = _video_hw(v.uri)
        ratio = letterbox_params(hw[0], hw[1], size)[0]
        it = iter_frames(v.uri, input_size=size)
        while True:
            t0 = time.perf_counter()
            item = next(it, None)
            t_decode += time.perf_counter() - t0
            if item is None:
                break
            idx, image = item
            dets, kpts = backend(to_model_input(image[None]))
            t0 = time.perf_counter()
            poses.append(postprocess(dets[0], kpts[0], ratio, hw, model_cfg))
            t_post += time.perf_counter() - t0
            inds.append(idx)
        t0 = time.perf_counter()
        track_poses(inds, poses, tracking)
        t_track += time.perf_counter() - t0
        frames += len(inds)
    total = t_decode + t_post + t_track
    return {"frames": frames, "fps": round(frames / total, 1), "decode_letterbox_fps": round(frames / t_decode, 1),
            "postprocess_fps": round(frames / t_post, 1), "tracking_fps": round(frames / t_track, 1)}


_HW: dict[str, tuple[int, int]] = {}


def _video_hw(uri: str) -> tuple[int, int]:
    if uri not in _HW:
        from recognizer_core.extract.video import probe_video

        info = probe_video(uri)
        _HW[uri] = (info.height, info.width)
    return _HW[uri]


def _stats(xs: list[float]) -> dict:
    return {"median": round(median(xs), 2), "min": round(min(xs), 2), "max": round(max(xs), 2)}


def subset_dir(src: str, work: Path, n: int) -> str:
    """The first n videos of `src` (sorted relative paths), symlinked into a folder the job can read."""
    if n <= 0:
        return src
    root = Path(src)
    dst = work / "videos"
    for v in list_videos(SourceConfig(input=src))[:n]:
        link = dst / Path(v.uri).relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(v.uri).resolve())
    return str(dst)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", default=str(REPO.parent / "shared" / "data" / "videos"))
    parser.add_argument("--max-videos", type=int, default=0, help="first N videos only (0: all)")
    parser.add_argument("--repeats", type=int, default=5, help="alternated repeats (>= 5 for a ratio)")
    parser.add_argument("--onnx", default="", help="RTMO end2end ONNX (default: build the fake model)")
    parser.add_argument("--fake-gflops", type=float, default=0.0,
                        help="give the fake model a conv tower of at least this many GFLOPs per image (same "
                             "outputs): the job and rtmlib with a model that costs something, where no RTMO is")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--batch-size", type=int, default=8, help="inference batch of the Ray job")
    parser.add_argument("--num-actors", type=int, default=1)
    parser.add_argument("--gpus-per-actor", type=float, default=0.0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "extract.jsonl"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        onnx = args.onnx
        if not onnx:
            from fakes.fake_rtmo import build_fake_rtmo, tower_gflops, tower_layers

            onnx = str(build_fake_rtmo(work / "fake_rtmo.onnx", gflops=args.fake_gflops))
        source = subset_dir(args.videos, work, args.max_videos)
        videos = list_videos(SourceConfig(input=source))

        def job_config(rep: int) -> ExtractionConfig:  # a fresh output folder: every repeat extracts all videos
            return ExtractionConfig.model_validate({
                "source": {"input": source}, "output": str(work / f"poses{rep}"),
                "model": {"onnx": {"model_path": onnx, "device": args.device}, "batch_size": args.batch_size},
                "ray": {"num_actors": args.num_actors, "num_gpus_per_actor": args.gpus_per_actor,
                        "num_cpus_per_actor": 1.0, "num_cpus_per_decode_task": 1.0}})

        cfg = job_config(0)
        from importlib.metadata import version

        from recognizer_core.ray_runtime import start_ray

        t0 = time.perf_counter()
        start_ray(dashboard=False, log_to_driver=False, job="bench_extract")
        startup = time.perf_counter() - t0
        spec = importlib.util.spec_from_file_location("extract_poses", REPO / "rayjobs" / "extract_poses.py")
        job = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(job)
        ray_fps, peer_fps, alone, summaries = [], [], [], []
        ray_steady_fps, peer_loaded_fps, peer_load_s = [], [], []
        t_bench = time.perf_counter()
        for rep in range(args.repeats):  # alternate, so each pair sees the same machine load
            summary = job.run_extraction(job_config(rep), verbose=False)
            ray_fps.append(summary["frames"] / summary["seconds"])
            ray_steady_fps.append(summary["frames_per_s_after_first_poses"])
            summaries.append(summary)
            # rtmlib's model is loaded in every repeat as a user's run loads it, timed apart: our job's seconds
            # include its actors starting and loading the model
            t0 = time.perf_counter()
            rtmo = build_rtmlib(onnx, args.device, cfg.model)
            peer_load_s.append(time.perf_counter() - t0)
            peer_frames, peer_s = rtmlib_batch1(videos, rtmo)
            peer_fps.append(peer_frames / peer_s)
            peer_loaded_fps.append(peer_frames / (peer_s + peer_load_s[-1]))
            alone.append(pipeline_without_model(videos, cfg.model, cfg.tracking))
            shutil.rmtree(work / f"poses{rep}", ignore_errors=True)
            print(f"[bench_extract] repeat {rep + 1}/{args.repeats}: ours {ray_fps[-1]:.1f} fps, "
                  f"rtmlib {peer_fps[-1]:.1f} fps, ours without model {alone[-1]['fps']} fps", file=sys.stderr,
                  flush=True)
        ratios = [a / b for a, b in zip(ray_fps, peer_fps)]
        # the same pairs with start-up on both sides, and with it on neither (ours after its first poses)
        ratios_loaded = [a / b for a, b in zip(ray_fps, peer_loaded_fps)]
        ratios_steady = [a / b for a, b in zip(ray_steady_fps, peer_fps) if a]
        load = os.getloadavg()
        last = summaries[-1]
        result = {
            "bench": "extract", "date": now(), "machine": machine(), "host": platform.node(),
            "loadavg_1_5_15": [round(x, 2) for x in load], "device": args.device, "provider": last["provider"],
            "model": os.path.basename(onnx) if args.onnx else
            "fake_rtmo (tests/fakes: RTMO's I/O contract, almost no compute; not RTMO's cost)" if not args.fake_gflops
            else f"fake_rtmo + a conv tower of {tower_gflops(tower_layers(args.fake_gflops)):.1f} GFLOPs per image "
                 "(RTMO's I/O contract; a stand-in for a model's cost, not RTMO's network)",
            "videos": len(videos), "frames": last["frames"], "peer": f"rtmlib {version('rtmlib')} RTMO batch 1",
            "peer_frames": peer_frames, "repeats": args.repeats, "bench_seconds": round(time.perf_counter() - t_bench),
            "ray_vs_rtmlib": {k: round(v, 2) for k, v in _stats(ratios).items()},
            "ray_vs_rtmlib_both_loading_the_model": {k: round(v, 2) for k, v in _stats(ratios_loaded).items()},
            "ray_after_first_poses_vs_rtmlib": {k: round(v, 2) for k, v in _stats(ratios_steady).items()},
            "ray_job_fps": _stats(ray_fps), "rtmlib_fps": _stats(peer_fps),
            "ray_first_poses_s": _stats([s["first_poses_s"] for s in summaries]),
            "rtmlib_model_load_s": _stats(peer_load_s),
            "ray_startup_s": round(startup, 1), "ray_startup_note": "ray.init once, not in any frames/s",
            "ray_batch_size": args.batch_size, "ray_actors": last["actors"], "ray_done": last["done"],
            "ray_failed": last["failed"],
            "ours_without_model_fps": _stats([a["fps"] for a in alone]),
            "ours_without_model_parts_fps": {k: _stats([a[k] for a in alone]) for k in
                                             ("decode_letterbox_fps", "postprocess_fps", "tracking_fps")},
            "runs": {"ray_job_fps": [round(x, 1) for x in ray_fps], "rtmlib_fps": [round(x, 1) for x in peer_fps],
                     "ray_first_poses_s": [s["first_poses_s"] for s in summaries]},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
