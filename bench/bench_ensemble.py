"""Multi-stream ensemble on the demo data: each stream's accuracy next to the fused ensemble's (weights chosen
on the validation split, scores on the test split), from `rayjobs/tune_streams.py` run as a user runs it.

    .venv/bin/python bench/bench_ensemble.py [--clips 300] [--epochs 10] [--streams j b jm bm] \
        [--out bench/results/ensemble.jsonl]

Prints one JSON line: per-stream and fused acc_top1 on val and test, the weights, wall time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, machine, now, save_result  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=300)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--streams", nargs="+", default=["j", "b", "jm", "bm"])
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--out", default=None, help="append the JSON line to this file too")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_ensemble_") as tmp:
        cpus = max(0.25, round(2 / len(args.streams), 2))  # the streams side by side on 2 CPUs
        cmd = [sys.executable, str(REPO / "rayjobs" / "tune_streams.py"), "--storage-path", tmp, "--name", "bench",
               "--streams", *args.streams, "--set", f"data.demo_num_clips={args.clips}",
               "--set", f"train.epochs={args.epochs}", "--set", f"scaling.cpus_per_worker={cpus}",
               "--set", "data.loader_workers=0"]
        if args.num_cpus:
            cmd += ["--num-cpus", str(args.num_cpus)]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        report = json.loads((Path(tmp) / "bench" / "ensemble" / "ensemble.json").read_text())
    result = {"bench": "ensemble", "time": now(), "machine": machine(), "data": f"synthetic fight demo, {args.clips} "
              f"clips", "epochs": args.epochs, "metric": report["metric"], "weights": report["weights"],
              "val": report["val"], "test": report["test"], "wall_s": round(wall, 1)}
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
