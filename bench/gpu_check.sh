#!/usr/bin/env bash
# GPU checks without Ray (issue 9): STGCN++ training fp32 / fp16 (loss scaling) / bf16 with samples/s and GPU
# utilisation, resume from a checkpoint onto the GPU, the DINO pose step with a frozen random ViT-S/14 in bf16,
# STGCN++ ONNX export run with every ONNX Runtime provider present. One JSON line per check (bench/gpu_check.py),
# saved to bench/results/gpu_check_<device>.jsonl. Under 8 minutes on one GPU.
#
#   bash bench/gpu_check.sh                  # on the GPU machine
#   bash bench/gpu_check.sh --device cpu     # smoke run anywhere (tiny sizes; tests/test_cluster_gpu_check.py)
#
# The GPU machine has python3 with torch, transformers, pyarrow, scipy, pyyaml, onnx and onnxruntime but no
# pydantic (and no Ray, which the checks do not use). Carry pydantic as wheels (see the device notes): here, once,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection
# and run with `.whl` carried:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
device=cuda
prev=""
for arg in "$@"; do
  if [ "$prev" = "--device" ]; then device=$arg; fi
  prev=$arg
done
mkdir -p bench/results
out=bench/results/gpu_check_${device%%:*}.jsonl
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
host=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
echo "{\"check\": \"run\", \"date\": \"$(date -u +%FT%TZ)\", \"device_name\": \"${host:-$(uname -m) CPU}\"}" | tee -a "$out"
timeout 480 "$PY" bench/gpu_check.py "$@" | tee -a "$out"
