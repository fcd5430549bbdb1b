"""Training throughput: our STGCN++ vs mmaction2 1.2.0's STGCN + GCNHead, and the training input path.

1. Training step (forward + backward + SGD step) of the fight preset model (4 blocks, base 64, inflate/down
   at block 2, 3 input channels, 2 classes) on the same batch (16 x M=4 x T=100 x V=17 x C=3), same torch
   thread count; mmaction2 runs in the side venv (bench/README.md). Steps alternate between the two.
2. Training input path for batches of 16: our prepare_batch(train=True) (random frames; also with the
   guide's augmentations) vs mmaction2's train-mode Compose (PreNormalize2D, GenSkeFeat, UniformSampleFrames,
   PoseDecode, FormatGCNInput) over the same annotations, alternating.
3. Also our step under bf16 autocast (fp32 weights, mixed-precision compute) where the CPU has native bf16
   (AVX512-BF16 or AMX); `--no-bf16` skips it.

Prints ONE JSON line (medians over repeats, samples/s, ratios).

    .venv/bin/python bench/bench_train_step.py [--repeats 5] [--steps 3] [--out bench/results/train_step.jsonl]
"""
from __future__ import annotations

import argparse
import copy
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_pipeline import make_annotations  # noqa: E402
from bench.common import MMWorker, machine, median, now, save_result  # noqa: E402
from recognizer_core.models.recognizer import ModelConfig, build_recognizer  # noqa: E402
from recognizer_core.skeleton.transforms import PipelineConfig, prepare_batch  # noqa: E402

BATCH, M, T, V, C = 16, 4, 100, 17, 3


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="training steps per timed repeat")
    ap.add_argument("--input-samples", type=int, default=256, help="annotations for the input-path timing")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16-autocast variant of our step")
    ap.add_argument("--out", default=None, help="also append the JSON line to this .jsonl file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model_cfg = ModelConfig(num_classes=2, in_channels=C, num_stages=4, base_channels=64, inflate_stages=[2],
                            down_stages=[2], dropout=0.0)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, M, T, V, C, generator=gen)
    x[1, -1] = 0  # one padded person, as the pipeline produces
    y = torch.randint(0, 2, (BATCH,), generator=gen)
    model = build_recognizer(model_cfg).train()
    model_bf16 = copy.deepcopy(model)
    opts = {False: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
            True: torch.optim.SGD(model_bf16.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)}
    # bf16 autocast (mixed precision, fp32 weights) only pays off with native bf16 units (AVX512-BF16 / AMX)
    bf16_ok = not args.no_bf16 and cpu_has_bf16()

    def ours_steps(k: int, bf16: bool = False) -> float:
        net, opt = (model_bf16 if bf16 else model), opts[bf16]
        t0 = time.perf_counter()
        for _ in range(k):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    anns = make_annotations(args.input_samples, seed=1)
    pipe = PipelineConfig(feats=["b"], clip_len=T, num_person=M)
    pipe_aug = pipe.model_copy(update=dict(random_rescale=(0.8, 1.2), random_shift=0.1, random_rotate=15.0))
    rng = np.random.default_rng(0)

    def ours_input(cfg: PipelineConfig) -> float:
        t0 = time.perf_counter()
        for i in range(0, len(anns), BATCH):
            prepare_batch(anns[i:i + BATCH], cfg, train=True, rng=rng)
        return time.perf_counter() - t0

    result = {"bench": "train_step", "date": now(), "machine": machine(), "torch_threads": args.threads,
              "batch": [BATCH, M, T, V, C], "model": "fight preset: 4 stages, base 64, inflate/down [2], 2 classes",
              "num_parameters": sum(p.numel() for p in model.parameters()), "repeats": args.repeats,
              "steps_per_repeat": args.steps, "input_samples": len(anns)}
    ok, why = MMWorker.available()
    worker = MMWorker() if ok else None
    ours_bf16_t = []
    ours_t, mm_t, ours_in, ours_in_aug, mm_in = [], [], [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if worker is not None:
                data = Path(tmp) / "batch.npz"
                np.savez(data, x=x.numpy(), y=y.numpy())
                info = worker.call("model", data=str(data), threads=args.threads, num_classes=2,
                                   head_in_channels=model_cfg.head_in_channels, dropout=0.0, lr=0.1,
                                   backbone=dict(in_channels=C, base_channels=64, num_stages=4,
                                                 inflate_stages=[2], down_stages=[2]))
                result["mmaction2_num_parameters"] = info["num_parameters"]
                result["mmaction2_version"] = worker.info.get("mmaction2")
                ann_path = Path(tmp) / "anns.pkl"
                ann_path.write_bytes(pickle.dumps(anns))
                worker.call("pipeline", data=str(ann_path), test_mode=False, feats=pipe.feats, clip_len=T,
                            num_clips=1, num_person=M)
                worker.call("train_steps", steps=1)  # warm-up
                worker.call("run_pipeline")
            ours_steps(1)
            if bf16_ok:
                ours_steps(1, bf16=True)
            for _ in range(args.repeats):  # alternate, so both see the same machine load
                ours_t.append(ours_steps(args.steps))
                if bf16_ok:
                    ours_bf16_t.append(ours_steps(args.steps, bf16=True))
                if worker is not None:
                    mm_t.append(worker.call("train_steps", steps=args.steps)["seconds"])
                ours_in.append(ours_input(pipe))
                ours_in_aug.append(ours_input(pipe_aug))
                if worker is not None:
                    mm_in.append(worker.call("run_pipeline")["seconds"])
    finally:
        if worker is not None:
            worker.close()

    step_rate = BATCH * args.steps / median(ours_t)
    result["ours_train_samples_per_s"] = round(step_rate, 2)
    bf16_rate = BATCH * args.steps / median(ours_bf16_t) if ours_bf16_t else None
    result["ours_bf16_autocast_train_samples_per_s"] = round(bf16_rate, 2) if bf16_rate else None
    result["ours_input_samples_per_s"] = round(len(anns) / median(ours_in), 1)
    result["ours_input_augmented_samples_per_s"] = round(len(anns) / median(ours_in_aug), 1)
    if worker is not None:
        mm_rate = BATCH * args.steps / median(mm_t)
        mm_in_rate = len(anns) / median(mm_in)
        result.update(mmaction2_train_samples_per_s=round(mm_rate, 2), ratio_train_vs_mmaction2=round(step_rate / mm_rate, 3),
                      ratio_train_bf16_autocast_vs_mmaction2=round(bf16_rate / mm_rate, 3) if bf16_rate else None,
                      mmaction2_input_samples_per_s=round(mm_in_rate, 1),
                      ratio_input_vs_mmaction2=round(result["ours_input_samples_per_s"] / mm_in_rate, 2),
                      ratio_input_augmented_vs_mmaction2=round(result["ours_input_augmented_samples_per_s"] / mm_in_rate, 2))
    else:
        result.update(mmaction2=None, mmaction2_train_samples_per_s=None, note=why)
    save_result(result, args.out)


if __name__ == "__main__":
    main()
