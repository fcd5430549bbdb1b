#!/usr/bin/env bash
# GPU checks without Ray (issues 9, 14), one JSON line each, in this order (each part under its own timeout, so a
# failed or slow part keeps the others' lines):
#   1. bench_train_step.py --device cuda: the STGCN++ training step against mmaction2 1.2.0's on the same GPU,
#      batch 16 / 64, fp32 and bf16 autocast on both sides, and ours with mstcn's per-branch BatchNorms
#      (gcn_blocks.BRANCH_BN_SWITCH, the A/B for fewer launches) (-> train_step.jsonl);
#   2. gpu_check.py: STGCN++ training fp32 / fp16 (loss scaling) / bf16 with samples/s and GPU utilisation, with
#      the features computed on the GPU (pipeline.device=worker), resume from a checkpoint onto the GPU, the DINO
#      pose step with a frozen random ViT-S/14 in bf16, STGCN++ ONNX export under every ONNX Runtime provider
#      (-> gpu_check_cuda.jsonl);
#   3. gpu_check.py --compiled: the training checks under train.compile=reduce-overhead (inductor + CUDA graphs), at
#      batch 128 bf16 with the features on the GPU and at batch 32 fp32, 8192 demo clips, with GPU utilisation over
#      the last epoch (issue 14's 90% goal) and the compiling step's seconds (-> gpu_check_cuda.jsonl);
#   4. bench_train_step.py --compile reduce-overhead at batch 16: the step as CUDA graph replays against
#      mmaction2's eager step, where launching ~1,000 operations per step made us 0.92x (-> train_step.jsonl).
# Measured once and left out since (run them alone when their code changes): bench_train_input.py --device cuda
# (2026-12-04: 3.22x the NumPy path) and bench_train_step.py --compile at batch 64 (1.92x mmaction2, 43 s to
# compile). About 9 minutes on one H200; the parts' limits add up to 590 s, inside one device call's 600. Lines go
# to $GPU_CHECK_OUT (default bench/results/).
#
#   bash bench/gpu_check.sh                  # on the GPU machine
#   bash bench/gpu_check.sh --device cpu     # smoke run anywhere: gpu_check.py alone, tiny sizes
#                                            # (tests/test_gpu_check_smoke.py)
#
# The GPU machine has python3 with torch, transformers, pyarrow, scipy, pyyaml, onnx and onnxruntime but no
# pydantic (and no Ray, which the checks do not use). Carry pydantic as wheels (see the device notes): here, once,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions==4.16.0
# For the mmaction2 side of parts 1 and 3, pack it once here: bash bench/pack_mmaction2_for_device.sh (-> .mmdev/,
# used when BENCH_MMACTION_PY is unset; without it those benches time ours alone). Run with `.whl` and `.mmdev`
# carried:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
device=cuda
prev=""
for arg in "$@"; do
  if [ "$prev" = "--device" ]; then device=$arg; fi
  prev=$arg
done
outdir=${GPU_CHECK_OUT:-bench/results}
mkdir -p "$outdir"
out=$outdir/gpu_check_${device%%:*}.jsonl
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -z "${BENCH_MMACTION_PY:-}" ] && [ -x .mmdev/python ]; then export BENCH_MMACTION_PY=$PWD/.mmdev/python; fi
host=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
tree=${BENCH_TREE:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "{\"check\": \"run\", \"date\": \"$(date -u +%FT%TZ)\", \"device_name\": \"${host:-$(uname -m) CPU}\", \"tree\": \"$tree\"}" | tee -a "$out"
failed=0
part() {  # part SECONDS NAME COMMAND...: one part under its own timeout; a failure is reported, the rest still run
  local limit=$1 name=$2; shift 2
  echo "# ${name}: start $(date -u +%T)" >&2
  timeout "$limit" "$@" || { echo "# ${name}: FAILED (exit $?)" >&2; failed=1; }
}
if [ "${device%%:*}" = cuda ]; then
  part 110 train_step "$PY" bench/bench_train_step.py --device cuda --batches 16,64 --threads 1 --repeats 5 \
    --steps 10 --bf16 --branch-bn --out "$outdir/train_step.jsonl"
fi
# the training loop's progress lines go to the log; only the checks' JSON lines to the results file
checks() { echo "set -o pipefail; \"$PY\" bench/gpu_check.py $* | tee /dev/stderr | grep --line-buffered '^{\"check\"' >> \"$out\""; }
part 200 gpu_check bash -c "$(checks "$@")"
if [ "${device%%:*}" = cuda ]; then
  part 190 gpu_check_compiled bash -c "$(checks "$@" --compiled)"
  part 90 train_step_cuda_graphs "$PY" bench/bench_train_step.py --device cuda --batches 16 --threads 1 --repeats 5 \
    --steps 10 --compile reduce-overhead --out "$outdir/train_step.jsonl"
fi
exit $failed
