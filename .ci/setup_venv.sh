#!/usr/bin/env bash
# Create or refresh the project venv for `make demo` / `make test`: one line per step, pip kept quiet.
#
# torch: a CUDA build only where an NVIDIA GPU is present. Without a GPU we first ask pip (dry run, metadata
# only) which torch==2.13.0 the configured indexes / find-links would install; if that is already a CPU build
# (a local +cpu wheel, as on the development machine) it is installed as is, and only otherwise is the CPU
# index (download.pytorch.org/whl/cpu) used, so a machine that cannot reach it never retries against it.
set -euo pipefail
PY=${PY:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu
BIN=$VENV/bin
start=$SECONDS

step() { printf '[setup %3ds] %s\n' "$((SECONDS - start))" "$*"; }

if [ ! -x "$BIN/python" ]; then
    step "creating $VENV (a first install takes about 8 minutes on 2 busy cores, mostly torch and ray)"
    "$PY" -m venv "$VENV"
fi
PIP=("$BIN/python" -m pip --disable-pip-version-check)

have_torch=$("$BIN/python" -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null || true)
if [ "${have_torch%%+*}" = "$TORCH_VERSION" ]; then
    step "torch $have_torch already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    step "installing torch==$TORCH_VERSION (NVIDIA GPU found: CUDA build)"
    "${PIP[@]}" install -qq "torch==$TORCH_VERSION"
else
    report=$(mktemp)
    trap 'rm -f "$report"' EXIT
    "${PIP[@]}" install -qq --dry-run --no-deps --ignore-installed --report "$report" "torch==$TORCH_VERSION" \
        2>/dev/null || true
    found=$("$BIN/python" - "$report" <<'EOF'
import json, sys
try:
    item = json.load(open(sys.argv[1]))["install"][0]
    print(item["metadata"]["version"], item["download_info"]["url"])
except Exception:
    print("")
EOF
)
    if [[ "$found" == *+cpu* ]]; then
        step "installing torch ${found%% *} (no GPU; CPU wheel from the configured indexes: ${found#* })"
        "${PIP[@]}" install -qq "torch==$TORCH_VERSION"
    else
        step "installing torch==$TORCH_VERSION+cpu from $CPU_INDEX (no GPU; the configured indexes offer ${found:-none})"
        "${PIP[@]}" install -qq "torch==$TORCH_VERSION+cpu" --extra-index-url "$CPU_INDEX" --retries 2 --timeout 30
    fi
fi

# The project with its test tools, plus a CPU-only extra where pyproject defines one (e.g. onnxruntime).
extras=$("$BIN/python" - <<'EOF'
import tomllib
opt = tomllib.load(open("pyproject.toml", "rb"))["project"].get("optional-dependencies", {})
print(",".join(x for x in ("dev", "cpu") if x in opt))
EOF
)
step "installing the project and its dependencies: pip install -e .[$extras]"
"${PIP[@]}" install -qq -e ".[$extras]"

# tcmalloc, the CPU training workers' allocator (scaling.cpu_malloc=auto; docs/training.md): a system library, so
# installed only where this user may (root with apt-get, as in CI and containers); elsewhere one line says how.
if ! "$BIN/python" -c "from recognizer_core.train.cpu_malloc import find_tcmalloc as f; raise SystemExit(not f())"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "installing libtcmalloc-minimal4 (apt-get): tcmalloc for CPU training workers"
        # bounded: a machine without a reachable mirror goes on without tcmalloc instead of waiting on apt
        apt_install() { DEBIAN_FRONTEND=noninteractive timeout 180 apt-get install -y -qq libtcmalloc-minimal4 \
            >/dev/null 2>&1; }
        apt_install || { timeout 180 apt-get update -qq >/dev/null 2>&1 && apt_install; } \
            || step "could not install libtcmalloc-minimal4: CPU training uses the system malloc (slower)"
    else
        step "no tcmalloc here: CPU training uses the system malloc; for faster CPU training install" \
             "libtcmalloc-minimal4 (Debian/Ubuntu) or gperftools (conda), see docs/training.md"
    fi
fi
# The CPU training kernels (recognizer_core/models/cpu_kernels.py: fused BatchNorm, the GCN aggregation): compiled
# once per machine (about 30 s) here rather than in the first training step; without a C++ compiler CPU training
# runs eager ops (slower).
step "building the CPU training kernels (once per machine)"
# Silent when they build; otherwise cpu_kernels' one warning line gives the reason (no compiler, no ninja, ...).
"$BIN/python" -c "from recognizer_core.models import cpu_kernels; raise SystemExit(not cpu_kernels.load())" \
    || step "could not build them (the reason is above): CPU training runs eager PyTorch ops (slower)"
step "done in $((SECONDS - start)) s"
