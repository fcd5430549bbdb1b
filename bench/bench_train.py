"""End-to-end training throughput of the fight preset: our Ray Train job vs mmaction2 1.2.0's training path.

Ours: `build_trainer(fight_stable)` on the demo data (Parquet store -> sharded loader -> prepare_batch in loader
processes -> STGCN++ -> AdamW + clipping), samples/s measured by the loop over each epoch's training
iterations (validation excluded), plus the fraction of that time spent waiting for input batches and, on a
GPU, the GPU utilisation sampled with nvidia-smi while the job runs. mmaction2: `bench/mmaction_train_loop.py`
in the side venv (PoseDataset(pkl of the same train split) + the guide's train pipeline + DataLoader +
RecognizerGCN.train_step with OptimWrapper), same batch size, loader processes and torch threads. The first
epoch of each is warm-up; the figure is the median of the others. Runs alternate (ours, mmaction2, ...).

    .venv/bin/python bench/bench_train.py [--clips 96] [--epochs 3] [--batch 16] [--loader-workers 2] \
        [--repeats 1] [--gpus 0] [--out bench/results/train.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MMACTION_PY, REPO, machine, median, now, save_result  # noqa: E402


def _gpu_sampler(stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        try:
            text = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=5).stdout
            out.extend(float(v) for v in text.split())
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return
        stop.wait(0.5)


def run_ours(args, dataset: Path, storage: Path, name: str) -> dict:
    import ray

    from recognizer_core.config import load_config
    from recognizer_core.train.stgcn.config import TrainJobConfig
    from recognizer_core.train.stgcn.job import build_trainer

    workers = max(1, args.gpus)
    cpus = max(1.0, (os.cpu_count() or 2) / workers)
    sets = [f"data.path={dataset}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch}",
            f"train.val_begin={args.epochs}", f"data.loader_workers={args.loader_workers}",
            f"pipeline.clip_len={args.clip_len}", f"scaling.num_workers={workers}", f"scaling.cpus_per_worker={cpus}",
            f"scaling.use_gpu={str(args.gpus > 0).lower()}", "optim.auto_scale_lr=false", "schedule.warmup_epochs=0",
            f"run.storage_path={storage}", f"run.name={name}", "train.log_interval=0", "train.test_after_train=false"]
    if args.amp != "none":
        sets.append(f"train.amp={args.amp}")
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml", sets)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    util: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_gpu_sampler, args=(stop, util), daemon=True)
    if args.gpus:
        sampler.start()
    t0 = time.time()
    result = build_trainer(cfg).fit()
    wall = time.time() - t0
    stop.set()
    if result.error:
        raise RuntimeError(f"our training run failed: {result.error}")
    hist = json.loads((storage / name / "summary.json").read_text())["history"]
    steady = hist[1:] or hist
    out = {"samples_per_s": median([h["train/samples_per_s"] for h in steady]),
           "data_wait_frac": median([h["train/data_wait_frac"] for h in steady]), "job_wall_s": wall,
           "torch_threads_per_worker": int(cpus)}
    if util:
        # samples while the job runs, start-up included: the busy-phase figure is the upper quartile
        util.sort()
        out["gpu_util_mean"] = sum(util) / len(util)
        out["gpu_util_p75"] = util[int(0.75 * (len(util) - 1))]
    return out


def run_mmaction(args, pkl: Path, threads: int) -> dict:
    cmd = [str(MMACTION_PY), str(REPO / "bench" / "mmaction_train_loop.py"), "--pkl", str(pkl), "--epochs",
           str(args.epochs), "--batch", str(args.batch), "--workers", str(args.loader_workers), "--threads",
           str(threads), "--clip-len", str(args.clip_len), "--device", "cuda" if args.gpus else "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT "):
            res = json.loads(line[len("@@RESULT "):])
            steady = res["epochs"][1:] or res["epochs"]
            return {"samples_per_s": median([e["samples_per_s"] for e in steady]),
                    "data_wait_frac": median([e["data_wait_frac"] for e in steady]), "version": res["mmaction2"]}
    raise RuntimeError(f"mmaction2 training failed (code {proc.returncode}): {proc.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=96, help="demo clips (70%% of them train)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--clip-len", type=int, default=100)
    ap.add_argument("--loader-workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--gpus", type=int, default=0, help="Ray Train workers with one GPU each (0 = one CPU worker)")
    ap.add_argument("--amp", default="none", choices=["none", "fp16", "bf16"])
    ap.add_argument("--no-mmaction", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local bench cluster; see tests/conftest.py

    from recognizer_core.skeleton.demo_data import write_demo_dataset
    from recognizer_core.skeleton.mmaction_pkl import parquet_to_pkl

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    result = {"bench": "train_end_to_end", "date": now(), "machine": machine(), "preset": "fight_stable",
              "clips": args.clips, "epochs": args.epochs, "batch": args.batch, "clip_len": args.clip_len,
              "loader_workers": args.loader_workers, "gpus": args.gpus, "amp": args.amp, "repeats": args.repeats}
    try:
        # the same train split for both: the Parquet store for ours, its train split as an mmaction2 pkl
        ds = write_demo_dataset("fight", tmp / "demo", num_clips=args.clips, seed=0)
        pkl = parquet_to_pkl(ds, tmp / "train.pkl", split="train")
        have_mm = MMACTION_PY.exists() and not args.no_mmaction
        ours, mm = [], []
        for r in range(args.repeats):
            ours.append(run_ours(args, ds, tmp / "runs", f"bench_{r}"))
            if have_mm:
                mm.append(run_mmaction(args, pkl, ours[-1]["torch_threads_per_worker"]))
        result["ours_samples_per_s"] = round(median([o["samples_per_s"] for o in ours]), 2)
        result["ours_data_wait_frac"] = round(median([o["data_wait_frac"] for o in ours]), 4)
        result["ours_job_wall_s"] = round(median([o["job_wall_s"] for o in ours]), 1)
        result["torch_threads"] = ours[0]["torch_threads_per_worker"]
        if "gpu_util_mean" in ours[0]:
            result["gpu_util_mean"] = round(median([o["gpu_util_mean"] for o in ours]), 1)
            result["gpu_util_p75"] = round(median([o["gpu_util_p75"] for o in ours]), 1)
        if mm:
            result["mmaction2_version"] = mm[0]["version"]
            result["mmaction2_samples_per_s"] = round(median([m["samples_per_s"] for m in mm]), 2)
            result["mmaction2_data_wait_frac"] = round(median([m["data_wait_frac"] for m in mm]), 4)
            # each repeat runs ours then mmaction2 back to back: the median of those paired ratios, with their
            # spread (the ratio of the two medians, published before, is no pair's ratio)
            paired = [o["samples_per_s"] / m["samples_per_s"] for o, m in zip(ours, mm)]
            result["ratio_vs_mmaction2"] = round(median(paired), 3)
            result["ratio_min"], result["ratio_max"] = round(min(paired), 3), round(max(paired), 3)
            result["ratio_per_repeat"] = [round(r, 3) for r in paired]
        else:
            result.update(mmaction2=None, note=f"{MMACTION_PY} missing: bash bench/setup_mmaction2_venv.sh")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save_result(result, args.out)


if __name__ == "__main__":
    main()
