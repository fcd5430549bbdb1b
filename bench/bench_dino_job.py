"""What the DINO pose Ray job adds per job: the job's smoke run as a user starts it vs the same loop in one process.

Ours: `python rayjobs/train_dino_pose.py --set run.storage_path=DIR`, a fresh process as a user runs it: with no
COCO paths it is the job's SMOKE RUN (a tiny random DINOv2 built from a config, 2 epochs on the 4 shared COCO
images, validation with COCO AP, checkpoints, the exported best_model.pth), on a private local Ray: Ray's start,
the TorchTrainer's controller and its worker, the checkpoints reported to Ray Train's storage.
Without Ray: a fresh process running the same config through the same loop (`run_dino_pose_training` with a
LocalContext: what a torchrun script of world size 1 does, without its process group), checkpoints copied to a
local folder. Both build the same tiny backbone and run the same epochs, so the difference per pair is what the Ray
job adds to a run, a fixed cost per job. The per-step cost is `bench_dino_pose.py`'s (the same on CPU).
Alternated pair by pair, each in a fresh storage folder (a run of the same name would resume). Prints ONE JSON line.

    .venv/bin/python bench/bench_dino_job.py [--repeats 5] [--out bench/results/dino_job.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, median, now, save_result  # noqa: E402


def run_without_ray(storage: str) -> None:
    """The job's config, built as `rayjobs/train_dino_pose.py` builds it, run in this process; one JSON line."""
    sys.path.insert(0, str(REPO / "rayjobs"))
    import train_dino_pose as job

    from recognizer_core.coco_pose.demo import smoke_run_overrides
    from recognizer_core.config_args import config_from_args
    from recognizer_core.train.context import LocalContext
    from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
    from recognizer_core.train.dino_pose.loop import run_dino_pose_training

    args = job.build_parser().parse_args(["--set", f"run.storage_path={storage}"])
    cfg = config_from_args(DinoPoseJobConfig, args)
    args.overrides = smoke_run_overrides(cfg) + list(args.overrides)
    cfg = config_from_args(DinoPoseJobConfig, args)
    ctx = LocalContext(Path(storage) / "checkpoints")
    run_dino_pose_training(cfg, ctx, str(Path(storage) / cfg.run.name))
    print(json.dumps({"epochs": len(ctx.reports), "epoch_time_s": [r["train/epoch_time_s"] for r in ctx.reports],
                      "val/AP": ctx.reports[-1]["val/AP"]}))


def timed(cmd: list[str]) -> tuple[float, dict]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not last:
        raise SystemExit(f"bench_dino_job: {' '.join(cmd[1:3])} failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    return seconds, json.loads(last[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="alternated pairs")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "dino_job.jsonl"))
    ap.add_argument("--without-ray", metavar="DIR", help=argparse.SUPPRESS)  # the child process of one repeat
    args = ap.parse_args()
    if args.without_ray:
        run_without_ray(args.without_ray)
        return 0
    ray_s, plain_s, epochs_s = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench_dino_job_") as tmp:
        for r in range(args.repeats):
            s, out = timed([sys.executable, "rayjobs/train_dino_pose.py", "--set", f"run.storage_path={tmp}/ray{r}"])
            assert out.get("epoch") == 2 and out.get("best_model"), out
            ray_s.append(s)
            s, out = timed([sys.executable, "bench/bench_dino_job.py", "--without-ray", f"{tmp}/plain{r}"])
            assert out["epochs"] == 2, out
            plain_s.append(s)
            epochs_s.append(sum(out["epoch_time_s"]))
            print(f"[bench_dino_job] {r + 1}/{args.repeats}: Ray job {ray_s[-1]:.1f} s, "
                  f"without Ray {plain_s[-1]:.1f} s", file=sys.stderr, flush=True)
    added = [a - b for a, b in zip(ray_s, plain_s)]

    def stats(xs: list[float]) -> dict:
        return {"median": round(median(xs), 2), "min": round(min(xs), 2), "max": round(max(xs), 2)}

    result = {
        "bench": "dino_job", "date": now(), "machine": machine(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "work": "the job's smoke run: tiny random DINOv2 (2 layers, width 32), 2 epochs on 4 COCO images, 64x48, "
                "COCO AP validation, checkpoints, best_model.pth",
        "repeats": args.repeats, "ray_job_s": stats(ray_s), "without_ray_s": stats(plain_s),
        "ray_adds_s": stats(added), "epochs_train_s_without_ray": stats(epochs_s),
        "runs": {"ray_job_s": [round(x, 2) for x in ray_s], "without_ray_s": [round(x, 2) for x in plain_s]},
    }
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
