"""Test-mode skeleton pipeline throughput: ours (per sample, and batched prepare_batch) vs mmaction2 1.2.0.

Same annotations for both (synthetic PoseDataset dicts: M persons in 1..5, T frames in 40..300, COCO-17,
persons that enter and leave), timed alternately in the same run (mmaction2 in the side venv, see
bench/README.md), median over repeats. Checks the outputs are equal before timing. Prints ONE JSON line.

    .venv/bin/python bench/bench_pipeline.py [--samples 512] [--repeats 5] [--feats j+b+jm+bm]
        [--out bench/results/pipeline.jsonl]

--feats takes one '+'-joined stream list, or several separated by commas, or 'all' (the 15 non-empty
subsets of j, b, jm, bm): with more than one, the line holds a "sweep" list (one entry per list, each timed
against mmaction2 with the same streams) and the smallest ratios.
"""
from __future__ import annotations

import argparse
import itertools
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MMWorker, machine, median, now, ratio_stats, save_result  # noqa: E402
from recognizer_core.skeleton import sampling  # noqa: E402
from recognizer_core.skeleton.transforms import PipelineConfig, prepare_batch, test_sample  # noqa: E402

SHAPES = ((1080, 1920), (720, 1280), (480, 640))


def make_annotations(n: int, seed: int = 0, max_person: int = 5, min_frames: int = 40,
                     max_frames: int = 300) -> list[dict]:
    """PoseDataset-style dicts: walking, jittering people; later persons are absent in part of the clip."""
    rng = np.random.default_rng(seed)
    anns = []
    for i in range(n):
        m, t = int(rng.integers(1, max_person + 1)), int(rng.integers(min_frames, max_frames + 1))
        h, w = SHAPES[i % len(SHAPES)]
        template = rng.normal(0, 0.08, (17, 2)) * h
        start = rng.uniform([0.2 * w, 0.3 * h], [0.8 * w, 0.7 * h], (m, 1, 1, 2))
        drift = np.cumsum(rng.normal(0, 2.0, (m, t, 1, 2)), axis=1)
        kp = start + template + drift + rng.normal(0, 1.5, (m, t, 17, 2))
        score = rng.uniform(0.2, 1.0, (m, t, 17))
        for p in range(1, m):  # persons 1.. appear late / leave early
            a, b = sorted(rng.integers(0, t, 2))
            kp[p, :a] = kp[p, b:] = 0
            score[p, :a] = score[p, b:] = 0
        anns.append(dict(frame_dir=f"bench_{i}", label=i % 2, img_shape=(h, w), original_shape=(h, w),
                         total_frames=t, start_index=0, modality="Pose", keypoint=kp.astype(np.float32),
                         keypoint_score=score.astype(np.float32)))
    return anns


def run_ours_per_sample(anns: list[dict], cfg: PipelineConfig) -> tuple[float, list[np.ndarray], float]:
    """(wall seconds, outputs, CPU seconds) of one per-sample pass."""
    sampling._test_indices_cached.cache_clear()  # time a cold pass: no index reuse across repeats
    c0, t0 = time.process_time(), time.perf_counter()
    outs = [test_sample(a["keypoint"], a["keypoint_score"], a["img_shape"], cfg)[0] for a in anns]
    return time.perf_counter() - t0, outs, time.process_time() - c0


def run_ours_batched(anns: list[dict], cfg: PipelineConfig, batch_size: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one batched pass."""
    sampling._test_indices_cached.cache_clear()
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(anns), batch_size):
        prepare_batch(anns[i:i + batch_size], cfg, train=False)
    return time.perf_counter() - t0, time.process_time() - c0


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to compare CPU cost under a varying machine load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_feats(anns: list[dict], cfg: PipelineConfig, repeats: int, batch_size: int, tmp: Path) -> dict:
    """Ours (per sample, batched) and mmaction2 for one feats list, alternated; the equality check first."""
    result: dict = {"feats": cfg.feats}
    ok, why = MMWorker.available()
    worker = MMWorker() if ok else None
    ours_ps, ours_b, mm = [], [], []
    cpu: dict[str, list[float]] = {"ps": [], "b": [], "mm": []}
    try:
        if worker is not None:
            data, dump = tmp / "anns.pkl", tmp / "mm_out.pkl"
            if not data.exists():
                data.write_bytes(pickle.dumps(anns))
            worker.call("pipeline", data=str(data), test_mode=True, feats=cfg.feats, clip_len=cfg.clip_len,
                        num_clips=1, num_person=cfg.num_person)
            worker.call("run_pipeline", dump=str(dump))  # warm-up + outputs for the equality check
            _, outs, _ = run_ours_per_sample(anns, cfg)
            ref = pickle.loads(dump.read_bytes())
            result["max_abs_diff_vs_mmaction2"] = float(max(np.abs(a - b).max() for a, b in zip(outs, ref)))
            result["mmaction2_version"] = worker.info.get("mmaction2")
        for _ in range(repeats):  # alternate, so both see the same machine load
            if worker is not None:
                c0 = process_cpu_seconds(worker.proc.pid)
                mm.append(worker.call("run_pipeline")["seconds"])
                cpu["mm"].append(process_cpu_seconds(worker.proc.pid) - c0)
            wall, _, cpu_s = run_ours_per_sample(anns, cfg)
            ours_ps.append(wall)
            cpu["ps"].append(cpu_s)
            wall, cpu_s = run_ours_batched(anns, cfg, batch_size)
            ours_b.append(wall)
            cpu["b"].append(cpu_s)
    finally:
        if worker is not None:
            worker.close()
    n = len(anns)
    result["ours_per_sample_samples_per_s"] = round(n / median(ours_ps), 1)
    result["ours_batched_samples_per_s"] = round(n / median(ours_b), 1)
    if mm:
        mm_rate = n / median(mm)
        result["mmaction2_samples_per_s"] = round(mm_rate, 1)
        result["ratio_per_sample_vs_mmaction2"] = round(result["ours_per_sample_samples_per_s"] / mm_rate, 2)
        result["ratio_batched_vs_mmaction2"] = round(result["ours_batched_samples_per_s"] / mm_rate, 2)
        # The same from CPU seconds (ours: this process; mmaction2: its worker), less sensitive to load.
        result["cpu_ratio_per_sample_vs_mmaction2"] = round(median(cpu["mm"]) / median(cpu["ps"]), 2)
        result["cpu_ratio_batched_vs_mmaction2"] = round(median(cpu["mm"]) / median(cpu["b"]), 2)
        # Per alternated repeat (mmaction2 seconds / ours): the median with its min-max, the figure to quote.
        result["paired_ratio_per_sample_vs_mmaction2"] = ratio_stats(mm, ours_ps)
        result["paired_ratio_batched_vs_mmaction2"] = ratio_stats(mm, ours_b)
        result["paired_cpu_ratio_batched_vs_mmaction2"] = ratio_stats(cpu["mm"], cpu["b"])
    else:
        result["mmaction2_samples_per_s"] = None
        result["mmaction2"] = None
        result["note"] = why
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--feats", default="b", help="'+'-joined streams, e.g. j+b+jm+bm; several comma-separated; or all")
    ap.add_argument("--clip-len", type=int, default=100)
    ap.add_argument("--num-person", type=int, default=4)
    ap.add_argument("--out", default=None, help="also append the JSON line to this .jsonl file")
    args = ap.parse_args()

    if args.feats == "all":
        streams = ("j", "b", "jm", "bm")
        feats_lists = [list(c) for k in range(1, 5) for c in itertools.combinations(streams, k)]
    else:
        feats_lists = [f.split("+") for f in args.feats.split(",")]
    cfgs = [PipelineConfig(feats=f, clip_len=args.clip_len, num_person=args.num_person) for f in feats_lists]
    anns = make_annotations(args.samples)
    result = {"bench": "pipeline_test_mode", "date": now(), "machine": machine(), "samples": len(anns),
              "clip_len": args.clip_len, "num_person": args.num_person, "batch_size": args.batch_size,
              "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [bench_feats(anns, cfg, args.repeats, args.batch_size, Path(tmp)) for cfg in cfgs]
    if len(runs) == 1:
        result.update(runs[0])
    else:
        result["sweep"] = runs
        for key in ("ratio_per_sample_vs_mmaction2", "ratio_batched_vs_mmaction2", "cpu_ratio_per_sample_vs_mmaction2",
                    "cpu_ratio_batched_vs_mmaction2", "max_abs_diff_vs_mmaction2"):
            values = [r[key] for r in runs if r.get(key) is not None]
            if values:
                result[("max_" if key.startswith("max") else "min_") + key.removeprefix("max_")] = (
                    max(values) if key.startswith("max") else min(values))
    save_result(result, args.out)


if __name__ == "__main__":
    main()
