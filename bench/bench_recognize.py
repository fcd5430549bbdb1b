"""Recognize speed. Prints one JSON line (and appends it to bench/results/recognize.jsonl).

- skeleton input: windows/s of `recognize_clip` (windows -> batched test-mode pipeline -> model) against
  mmaction2's own skeleton approach (one `inference_recognizer` call per window, in the side venv of
  bench/setup_mmaction2_venv.sh, or BENCH_MMACTION_PY) on the same windows and weights, alternated runs; the
  scores of both are compared. Without the side venv only ours is reported, and the line says so.
- --video: with the fake RTMO model, end-to-end frames/s of batch mode (Ray Data, private local Ray: run
  under `flock /tmp/ray_tests.lock`) and stream-mode latency on a marker video served over HTTP.

    python bench/bench_recognize.py [--runs 5] [--threads 1] [--video]
"""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MMACTION_PY, REPO, machine, median, now, ratio_stats  # noqa: E402

PIPE = {"feats": ["b"], "clip_len": 48, "num_person": 2, "test_num_clips": 1}


def _mm_config(model_cfg, pipe: dict) -> str:
    from recognizer_core.models.checkpoint import mmaction_config_text

    feats = ", ".join(f"'{f}'" for f in pipe["feats"])
    return (mmaction_config_text(model_cfg) + "default_scope = 'mmaction'\ntest_pipeline = [\n"
            "    dict(type='PreNormalize2D'),\n"
            f"    dict(type='GenSkeFeat', dataset='coco', feats=[{feats}]),\n"
            f"    dict(type='UniformSampleFrames', clip_len={pipe['clip_len']}, num_clips={pipe['test_num_clips']}, "
            "test_mode=True),\n    dict(type='PoseDecode'),\n"
            f"    dict(type='FormatGCNInput', num_person={pipe['num_person']}),\n    dict(type='PackActionInputs')]\n"
            "test_dataloader = dict(dataset=dict(type='PoseDataset', ann_file='', pipeline=test_pipeline, "
            "test_mode=True))\n")


def skeleton_bench(work: Path, runs: int, threads: int) -> dict:
    import torch

    from tests.recognize_helpers import make_run_folder
    from recognizer_core.config import load_config
    from recognizer_core.recognize.model import load_recognizer
    from recognizer_core.recognize.runner import RecognizeConfig, effective_spec, make_windows_for, recognize_clip
    from recognizer_core.skeleton.demo_sequence import make_demo_sequence
    from recognizer_core.train.stgcn.config import TrainJobConfig

    torch.set_num_threads(threads)
    run, _ = make_run_folder(work, num_clips=12)
    cfg = load_config(TrainJobConfig, run / "config.yaml")
    cfg_d = cfg.model_dump(mode="json")
    cfg_d["model"].update(num_stages=4, base_channels=64, in_channels=3)  # the presets. network, bone stream
    cfg_d["pipeline"].update(PIPE)
    cfg = TrainJobConfig.model_validate(cfg_d)
    from recognizer_core.config import dump_config
    from recognizer_core.models.checkpoint import export_mmaction_checkpoint
    from recognizer_core.models.recognizer import build_recognizer

    dump_config(cfg, run / "config.yaml")
    pth = next(run.glob("best_*.pth"))
    export_mmaction_checkpoint(build_recognizer(cfg.model).eval(), pth, cfg=cfg.model, classes=["NonFight", "Fight"])
    rec = load_recognizer(run)
    sys.path.insert(0, str(REPO / "rayjobs"))
    from export_model import export

    export(str(run), str(work / "model.onnx"))
    onnx_rec = load_recognizer(work / "model.onnx", threads=threads)
    rcfg = RecognizeConfig()
    spec = effective_spec(rec.spec, rcfg)
    clip, _ = make_demo_sequence()
    windows = make_windows_for(clip, spec, rcfg.stride_s)
    ours, ours_onnx, mm = [], [], []
    mm_ok = MMACTION_PY.exists()
    if mm_ok:
        annos = [dict(keypoint=w.clip.keypoint, keypoint_score=w.clip.keypoint_score, img_shape=w.clip.img_shape,
                      original_shape=w.clip.img_shape, total_frames=w.clip.num_frames, label=-1, start_index=0,
                      modality="Pose", frame_dir="") for w in windows]
        (work / "windows.pkl").write_bytes(pickle.dumps(annos))
        (work / "mm_config.py").write_text(_mm_config(cfg.model, PIPE))
    recognize_clip(rec, clip, spec, rcfg)  # warm-up (oneDNN primitives), as the mmaction2 worker does
    recognize_clip(onnx_rec, clip, spec, rcfg)
    for _ in range(runs):
        t0 = time.perf_counter()
        res = recognize_clip(rec, clip, spec, rcfg)
        ours.append(len(res.windows) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        res_onnx = recognize_clip(onnx_rec, clip, spec, rcfg)
        ours_onnx.append(len(res.windows) / (time.perf_counter() - t0))
        onnx_diff = float(np.abs(res_onnx.probs - res.probs).max())
        if mm_ok:
            out = subprocess.run([str(MMACTION_PY), str(REPO / "bench/mmaction_recognize_worker.py"),
                                  str(work / "mm_config.py"), str(pth), str(work / "windows.pkl"), str(threads)],
                                 capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("@@RESULT ")]
            if not line:
                return {"error": f"mmaction2 worker failed: {out.stderr[-2000:]}"}
            r = json.loads(line[0][len("@@RESULT "):])
            mm.append(r["n"] / r["seconds"])
            diff = float(np.abs(np.array(r["scores"]) - res.probs).max())
    out = {"windows": len(windows), "window_s": round(spec.window_s, 2), "clip_len": PIPE["clip_len"],
           "batch_size": rcfg.batch_size, "ours_windows_per_s": round(median(ours), 1),
           "ours_runs": [round(x, 1) for x in ours], "ours_onnx_windows_per_s": round(median(ours_onnx), 1),
           "ours_onnx_runs": [round(x, 1) for x in ours_onnx], "onnx_vs_torch_max_abs_diff": onnx_diff}
    if mm_ok:
        out.update(mmaction2_windows_per_s=round(median(mm), 1), mmaction2_runs=[round(x, 1) for x in mm],
                   ratio=round(median(ours) / median(mm), 2), ratio_onnx=round(median(ours_onnx) / median(mm), 2),
                   max_abs_score_diff=diff,
                   # per alternated run (ours windows/s / mmaction2's): the median with its min-max
                   paired_ratio=ratio_stats(ours, mm), paired_ratio_onnx=ratio_stats(ours_onnx, mm))
    else:
        out["mmaction2"] = f"not measured: {MMACTION_PY} missing (bash bench/setup_mmaction2_venv.sh)"
    return out


def video_bench(work: Path, threads: int) -> dict:
    import functools
    import http.server
    import threading

    from tests.fakes.fake_rtmo import build_fake_rtmo, write_marker_video
    from tests.fakes.job_videos import linear_track
    from recognizer_core.extract.config import DecodeConfig, PoseModelConfig
    from recognizer_core.track.config import TrackingConfig
    from recognizer_core.ray_runtime import start_ray
    from recognizer_core.recognize.batch import run_batch
    from recognizer_core.recognize.model import load_recognizer
    from recognizer_core.recognize.runner import RecognizeConfig, effective_spec
    from recognizer_core.recognize.stream import run_stream

    videos = work / "videos"
    for i in range(4):
        a = linear_track((60 + 10 * i, 80), (140, 90), 250)
        b = linear_track((200, 150), (170, 140 - 10 * i), 250, first=10)
        write_marker_video(videos / f"v{i}.mp4", [a, b], side=12)
    rec = load_recognizer(work / "model.onnx", threads=threads)
    cfg = RecognizeConfig(timeline=False)
    spec = effective_spec(rec.spec, cfg)
    pose = PoseModelConfig(onnx={"model_path": str(build_fake_rtmo(work / "rtmo.onnx")),
                                 "intra_op_num_threads": threads}, batch_size=8)
    start_ray(job="bench_recognize", dashboard=False, num_cpus=2, log_to_driver=False)
    s = run_batch(inputs=str(videos), out=work / "out", model=str(work / "model.onnx"), model_config=None, spec=spec,
                  cfg=cfg, pose=pose, decode=DecodeConfig(shard_frames=250), tracking=TrackingConfig(),
                  threads=threads, verbose=False)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(videos))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    st = run_stream(rec, spec, cfg, f"http://127.0.0.1:{server.server_address[1]}/v0.mp4",
                    pose.model_copy(update={"batch_size": 1}), verbose=False)
    server.shutdown()
    return {"batch_videos": s["done"], "batch_frames": s["frames"], "batch_seconds": s["seconds"],
            "batch_frames_per_s": s["frames_per_s"], "stream_latency_ms_median": st["latency_ms_median"],
            "stream_latency_ms_p95": st["latency_ms_p95"], "stream_frames_dropped": st["frames_dropped"],
            "stream_frames_read": st["frames_read"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--video", action="store_true", help="also batch-mode frames/s and stream latency (Ray)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_recognize_") as tmp:
        work = Path(tmp)
        result = {"bench": "recognize", "time": now(), "machine": machine(), "threads": args.threads,
                  **skeleton_bench(work, args.runs, args.threads)}
        if args.video:
            result.update(video_bench(work, args.threads))
    line = json.dumps(result)
    print(line)
    with open(REPO / "bench/results/recognize.jsonl", "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
