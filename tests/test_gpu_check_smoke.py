"""bench/gpu_check.sh --device cpu: the GPU run's own checks at tiny sizes, so the script that a lent GPU machine
runs (once, in minutes that cannot be re-bought) is known to work before it gets there."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_run_on_cpu(tmp_path):
    env = dict(os.environ, GPU_CHECK_OUT=str(tmp_path), PYTHON=sys.executable)
    run = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    # the results file holds the checks' JSON lines only (the loop's progress lines go to the log)
    lines = [json.loads(line) for line in (tmp_path / "gpu_check_cpu.jsonl").read_text().splitlines()]
    checks = {line["check"]: line for line in lines}
    assert lines[0]["check"] == "run" and lines[0]["tree"]
    assert {"stgcn_train_fp32", "stgcn_train_fp32_worker_pipeline", "stgcn_resume", "dino_pose_step_bf16",
            "stgcn_onnx"} <= set(checks)
    assert all(line["ok"] for line in lines if line["check"] != "run"), lines
    assert checks["stgcn_train_fp32_worker_pipeline"]["pipeline_device"] == "worker"
    assert checks["stgcn_train_fp32"]["samples_per_s"] > 0
    assert 0 <= checks["stgcn_train_fp32"]["last_epoch_data_wait_frac"] <= 1
    assert checks["stgcn_resume"]["weights_equal_uninterrupted"] and checks["stgcn_resume"]["resumed_epochs"] == [2]
    assert checks["dino_pose_step_bf16"]["backbone_params_with_grad"] == 0
    assert max(checks["stgcn_onnx"]["max_abs_diff"].values()) < 1e-4
    # the GPU-only parts (the step and input benches against mmaction2) are not run off the GPU
    assert not (tmp_path / "train_step.jsonl").exists()
