"""The GPU checks of bench/gpu_check.sh: the core loops through the no-Ray local context, one JSON line per check.

Checks (each prints {"check": ..., "ok": ..., ...}; a failed check prints its error and the others still run):
- stgcn_train_{fp32,fp16,bf16}: STGCN++ (fight preset, batch 32, 2048 demo clips, 4 loader processes) training
  through `train_loop` + `LocalContext` on the device: samples/s over the timed epochs (the first is warm-up) and
  GPU utilisation sampled with nvidia-smi (over both runs, the timed run, and its last epoch). fp16 uses loss
  scaling (GradScaler); on a CPU it is reported as skipped (a CUDA recipe). stgcn_train_fp32_worker_pipeline: the same with pipeline.device=worker (the loaders only gather
  frames; the features are computed on the GPU); stgcn_train_bf16_worker_pipeline_b128: that at batch 128 in bf16.
- stgcn_resume: a run stopped after epoch 1 and continued from its checkpoint on the device (optimizer/scaler
  state must follow the model onto the GPU); its final weights must equal an uninterrupted run's.
- dino_pose_step_bf16: the DINO pose estimator with a frozen, randomly initialised ViT-S/14 backbone (built from a
  config, nothing downloaded), forward + backward + AdamW step in bf16 autocast: images/s, and the backbone must
  get no gradient.
- stgcn_onnx: STGCN++ exported to ONNX (dynamic batch) and run with every ONNX Runtime provider present; max
  |logit difference| to torch per provider.
- with --compiled, instead: stgcn_train_bf16_worker_pipeline_b128_reduce_overhead and stgcn_train_fp32_reduce_overhead,
  the training checks under train.compile=reduce-overhead (inductor + CUDA graphs; `default` on a CPU), with the
  first (compiling) step's seconds. The GPU utilisation goal (issue 14) is read from these.

    python3 bench/gpu_check.py [--device cuda|cpu] [--smoke] [--only NAME ...] [--compiled]

Needs torch, numpy, pyarrow, pyyaml, pydantic, scipy, transformers, onnx(+onnxscript), onnxruntime; not Ray.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def emit(check: str, ok: bool, **fields) -> dict:
    line = {"check": check, "ok": ok, **fields}
    print(json.dumps(line), flush=True)
    return line


class GpuSampler:
    """nvidia-smi utilisation.gpu every 0.25 s while a check runs (None when there is no nvidia-smi), with the time
    of each sample, so a window (one epoch) can be averaged alone."""

    def __init__(self):
        self.values: list[float] = []
        self.times: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.values.append(float(out.split()[0]))
                self.times.append(time.perf_counter())
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            self.stop.wait(0.25)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)

    def summary(self) -> dict:
        if not self.values:
            return {"gpu_util_mean": None, "gpu_util_max": None}
        return {"gpu_util_mean": round(sum(self.values) / len(self.values), 1), "gpu_util_max": max(self.values)}

    def mean_between(self, t0: float, t1: float) -> float | None:
        window = [v for t, v in zip(self.times, self.values) if t0 <= t <= t1]
        return round(sum(window) / len(window), 1) if window else None


def _stgcn_config(work: Path, epochs: int, amp: str, smoke: bool, pipeline_device: str = "cpu", batch: int = 32,
                  loader_workers: int = 0, gpu: bool = False, extra: tuple[str, ...] = (), clips: int = 2048):
    from recognizer_core.config import load_config
    from recognizer_core.train.stgcn.config import TrainJobConfig

    sets = [f"train.epochs={epochs}", f"train.amp={amp}", "train.val_interval=100", "train.log_interval=0",
            "train.test_after_train=false", f"data.loader_workers={loader_workers}", "scaling.num_workers=1",
            f"scaling.use_gpu={str(gpu).lower()}",
            f"pipeline.device={pipeline_device}",
            f"data.demo_num_clips={64 if smoke else clips}", f"train.batch_size={8 if smoke else batch}",
            "schedule.warmup_epochs=0", "optim.auto_scale_lr=false", f"run.storage_path={work}", *extra]
    if smoke:
        sets += ["model.num_stages=2", "model.base_channels=8", "model.inflate_stages=[2]",
                 "model.down_stages=[2]", "pipeline.clip_len=24"]
    return load_config(TrainJobConfig, REPO / "configs" / "fight_stable.yaml", sets)


def _dataset(cfg, work: Path) -> str:
    from recognizer_core.train.stgcn.data import prepare_dataset

    return str(prepare_dataset(cfg.data, work / "data"))


def _train(cfg, dataset: str, run_dir: Path, device: str):
    from recognizer_core.train.context import LocalContext
    from recognizer_core.train.stgcn.loop import train_loop

    class TimedContext(LocalContext):
        """Also notes when each epoch's report comes: the end of that epoch (training, validation where due,
        checkpoint), so GPU utilisation can be averaged over one epoch."""

        report_times: list[float]

        def report(self, metrics, checkpoint_dir=None):
            super().report(metrics, checkpoint_dir)
            self.report_times.append(time.perf_counter())

    ctx = TimedContext(run_dir / "ckpt", device=device)
    ctx.report_times = []
    summary = train_loop(cfg, dataset, str(run_dir), ctx)
    return ctx, summary


def check_stgcn_train(name: str, amp: str, device: str, work: Path, smoke: bool, pipeline_device: str = "cpu",
                      batch: int = 32, compile: str = "none", clips: int = 2048) -> dict:
    """One training run of `epochs` epochs after a 1-epoch warm-up run, 4 loader processes per worker (the GPU
    machine has 16 cores): samples/s over the timed epochs; GPU utilisation over the whole of both runs, over the
    timed run alone (the warm-up holds start-up and, with train.compile, compiling, while the GPU idles) and over
    its last epoch (the run's own start-up and loader spawn left out)."""
    import torch

    from recognizer_core.skeleton.store import SkeletonDataset
    from recognizer_core.train.stgcn.loop import cudagraph_skips

    if amp == "fp16" and device == "cpu":
        return emit(name, True, skipped="fp16 with loss scaling is a CUDA recipe", device=device)
    epochs = 2 if smoke else 4
    cfg = _stgcn_config(work / name, epochs, amp, smoke, pipeline_device, batch, loader_workers=2 if smoke else 4,
                        gpu=device != "cpu", extra=(f"train.compile={compile}",), clips=clips)
    dataset = _dataset(cfg, work)
    n_train = int((SkeletonDataset(dataset).index(columns=["split"])["split"].to_numpy() == cfg.data.train_split).sum())
    times: list[float] = []
    # Epoch times from the loop's own reports would need its internals; time whole runs of 1 and N epochs instead.
    run_dir = work / name / "run"
    with GpuSampler() as gpu:
        t0 = time.perf_counter()
        warm_ctx, _ = _train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})}), dataset,
                             run_dir, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        t_timed = time.perf_counter()
        ctx, _ = _train(cfg, dataset, run_dir, device)  # resumes after epoch 1: the timed epochs are 2..N
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t_end = time.perf_counter()
        times.append(t_end - t_timed)
    timed = times[1]
    # the last epoch alone: from the report ending the one before it to its own (training, validation, checkpoint)
    last = gpu.mean_between(*ctx.report_times[-2:]) if len(ctx.report_times) >= 2 else None
    compiled = {} if compile == "none" else {
        "compile": compile, "first_step_s_warmup": round(warm_ctx.reports[0]["train/compile_s"], 1),
        "cudagraph_skips": cudagraph_skips(),  # > 0: reduce-overhead ran without CUDA graphs (a warning says why)
        # the timed run builds a new compiled module; dynamo's cache of the same graph makes its first step quick
        "first_step_s_timed": round(ctx.reports[0]["train/compile_s"], 1)}
    return emit(name, True, device=device, amp=amp, train_clips=n_train, epochs_timed=epochs - 1,
                # the whole timed run: its start-up (loader processes, model, the epoch-1 checkpoint) included
                samples_per_s=round(n_train * (epochs - 1) / timed, 1), warmup_epoch_s=round(times[0], 2),
                # the loop's own per-epoch rates over the timed epochs (no start-up, no checkpoint writes)
                epoch_samples_per_s_median=round(statistics.median(r["train/samples_per_s"] for r in ctx.reports),
                                                 1),
                batch=cfg.train.batch_size, pipeline_device=cfg.pipeline.device,
                loader_workers=cfg.data.loader_workers, final_loss=ctx.reports[-1].get("train/loss"),
                # the loop's own figures for its last epoch: samples/s without start-up and checkpointing, and the
                # share of that epoch spent waiting for the loaders (~0: the input pipeline keeps up)
                last_epoch_samples_per_s=round(ctx.reports[-1]["train/samples_per_s"], 1),
                last_epoch_data_wait_frac=round(ctx.reports[-1]["train/data_wait_frac"], 3), **compiled,
                **gpu.summary(), gpu_util_mean_timed_run=gpu.mean_between(t_timed, t_end),
                gpu_util_mean_last_epoch=last)


def check_stgcn_resume(device: str, work: Path, smoke: bool) -> dict:
    """Bit-for-bit equality needs deterministic kernels on a GPU (cuDNN's autotuned and atomic-add backward convs
    differ run to run: on the 2026-12-04 H200 run without them the weights did not end equal), so the runs set
    train.deterministic."""
    import torch

    cfg = _stgcn_config(work / "resume", 2, "none", smoke, gpu=device != "cpu", extra=("train.deterministic=true",))
    dataset = _dataset(cfg, work)
    ref_ctx, _ = _train(cfg, dataset, work / "resume" / "reference", device)
    one = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})})
    _train(one, dataset, work / "resume" / "stopped", device)
    ctx, _ = _train(cfg, dataset, work / "resume" / "stopped", device)  # continues from epoch 1 on the device
    load = lambda c: torch.load(sorted(c.root.glob("epoch_*"))[-1] / "training_state.pt",  # noqa: E731
                                map_location="cpu", weights_only=True)
    a, b = load(ref_ctx), load(ctx)
    same = a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    diff = max(float((a["model"][k].double() - b["model"][k].double()).abs().max()) for k in a["model"]
               if a["model"][k].is_floating_point())
    epochs = [r["epoch"] for r in ctx.reports]
    return emit("stgcn_resume", same and epochs == [2], device=device, resumed_epochs=epochs,
                weights_equal_uninterrupted=same, max_abs_weight_diff=diff, train_deterministic=True)


def check_dino_step(device: str, work: Path, smoke: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import Dinov2Config, Dinov2Model

    from recognizer_core.models.dino_pose import build_dino_pose_model
    from recognizer_core.train.dino_pose.config import DinoPoseJobConfig

    torch.manual_seed(0)
    dims = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if smoke else \
        dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)  # ViT-S/14
    backbone_dir = work / "dino_vits14_random"
    Dinov2Model(Dinov2Config(patch_size=14, image_size=224, **dims)).save_pretrained(backbone_dir)
    image, heat = ((64, 48), (16, 12)) if smoke else ((256, 192), (64, 48))
    batch, steps = (4, 3) if smoke else (32, 30)
    model_cfg = {"backbone": str(backbone_dir)}
    if smoke:
        model_cfg.update(feature_layers=[-2, -1], stem_channels=[8, 16], fuser_channels=16, decoder_channels=16)
    cfg = DinoPoseJobConfig.model_validate({"model": model_cfg,
                                            "data": {"image_size": list(image), "heatmap_size": list(heat)}})
    model = build_dino_pose_model(cfg.model, image_size=image, heatmap_size=heat, device=device).train()
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(batch, 3, image[0], image[1], device=device)
    target = torch.rand(batch, cfg.model.num_keypoints, heat[0], heat[1], device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with GpuSampler() as gpu:
        for i in range(steps + 2):
            if i == 2:
                sync()
                t0 = time.perf_counter()
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
                out = model(x)
                pred = next(iter(out.values())) if isinstance(out, dict) else out
                loss = F.mse_loss(pred.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()
        dt = time.perf_counter() - t0
    frozen = [n for n, p in model.named_parameters() if n.startswith("backbone") and p.grad is not None]
    return emit("dino_pose_step_bf16", not frozen and torch.isfinite(loss).item(), device=device,
                backbone="random ViT-S/14" if not smoke else "random tiny ViT", batch=batch, image_size=list(image),
                images_per_s=round(batch * steps / dt, 1), loss=round(float(loss.detach()), 6),
                backbone_params_with_grad=len(frozen), **gpu.summary())


def check_onnx(device: str, work: Path, smoke: bool) -> dict:
    import numpy as np
    import torch

    from recognizer_core.models.recognizer import build_recognizer
    from recognizer_core.onnx_runtime import import_onnxruntime

    ort = import_onnxruntime()
    cfg = _stgcn_config(work / "onnx", 1, "none", smoke)
    model = build_recognizer(cfg.model).eval()
    x = torch.randn(4, 2, cfg.pipeline.clip_len, 17, cfg.model.in_channels)  # (N, M, T, V, C)
    with torch.no_grad():
        ref = model(x).numpy()
    try:
        from recognizer_core.export.onnx import export_onnx  # the product's exporter (fused graph convs)
    except ImportError:
        return emit("stgcn_onnx", True, skipped="recognizer_core.export.onnx is not in this tree", device=device)
    path = export_onnx(model, work / "stgcn.onnx", x)
    diffs = {}
    for provider in ort.get_available_providers():
        if provider in ("TensorrtExecutionProvider",):
            continue  # needs an engine build; rayjobs/build_trt_engine.py covers TensorRT
        sess = ort.InferenceSession(str(path), providers=[provider])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        diffs[provider] = float(np.abs(got - ref).max())
    ok = bool(diffs) and all(d < 1e-4 for d in diffs.values())
    return emit("stgcn_onnx", ok, device=device, providers=list(diffs), max_abs_diff=diffs,
                onnxruntime=ort.__version__, torch_device_of_reference="cpu")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke run anywhere)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (default with --device cpu)")
    ap.add_argument("--only", nargs="*", help="run only these checks (prefix match)")
    ap.add_argument("--compiled", action="store_true",
                    help="instead: the training checks under train.compile (reduce-overhead, CUDA graphs, on a GPU; "
                         "default on a CPU), each compiling once in its warm-up run")
    args = ap.parse_args()
    # before CUDA starts: cuBLAS is deterministic only with a fixed workspace, and stgcn_resume sets
    # train.deterministic after other checks have started cuBLAS
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    smoke = args.smoke or args.device == "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        emit("environment", False, error="--device cuda but torch sees no GPU (use --device cpu for the smoke run)")
        return 1
    emit("environment", True, device=args.device, smoke=smoke, torch=torch.__version__, python=platform.python_version(),
         gpu=torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    train = lambda name, amp, **kw: (name, lambda: check_stgcn_train(name, amp, args.device, work, smoke, **kw))  # noqa: E731
    checks = [train("stgcn_train_fp32", "none"), train("stgcn_train_fp16", "fp16"), train("stgcn_train_bf16", "bf16"),
              # pipeline.device=worker: the loaders only gather frames, the features are computed on the GPU
              train("stgcn_train_fp32_worker_pipeline", "none", pipeline_device="worker"),
              train("stgcn_train_bf16_worker_pipeline_b128", "bf16", pipeline_device="worker", batch=128),
              ("stgcn_resume", lambda: check_stgcn_resume(args.device, work, smoke)),
              ("dino_pose_step_bf16", lambda: check_dino_step(args.device, work, smoke)),
              ("stgcn_onnx", lambda: check_onnx(args.device, work, smoke))]
    if args.compiled:  # a small model's step on a GPU is launch-bound: one CUDA graph replay instead of ~1,000 ops
        mode = "reduce-overhead" if args.device.startswith("cuda") else "default"
        tag = mode.replace("-", "_")
        # 8192 clips (5,735 for training): a compiled epoch of 2,048 would last about a second, a few samples of
        # nvidia-smi
        checks = [train(f"stgcn_train_bf16_worker_pipeline_b128_{tag}", "bf16", pipeline_device="worker", batch=128,
                        compile=mode, clips=8192),
                  train(f"stgcn_train_fp32_{tag}", "none", compile=mode, clips=8192)]
    failed = 0
    try:
        for name, run in checks:
            if args.only and not any(name.startswith(o) for o in args.only):
                continue
            t0 = time.perf_counter()
            try:
                failed += not run()["ok"]
            except Exception as err:  # noqa: BLE001 - one failed check must not hide the others
                failed += 1
                emit(name, False, error=f"{type(err).__name__}: {err}"[:600],
                     where=traceback.format_exc().strip().splitlines()[-3][:300])
            print(f"# {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
