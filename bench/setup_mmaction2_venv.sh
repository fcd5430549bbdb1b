#!/usr/bin/env bash
# Side venv with mmaction2 1.2.0 (the reference implementation) for bench/*.py, CPU only.
# Idempotent: re-running keeps an existing, working venv. Usage: bash bench/setup_mmaction2_venv.sh
# mmaction2 is installed --no-deps (its deps pull decord/opencv/mmcv-full builds we do not need);
# mmcv-lite gives mmcv's pure-Python parts, enough for the pose transforms and STGCN.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$REPO/.bench_venv_mmaction2}"
PY="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import mmaction, mmengine, mmcv, torch; \
from mmaction.datasets.transforms import pose_transforms; from mmaction.models import STGCN" 2>/dev/null; then
  echo "mmaction2 venv ready: $VENV"; exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip wheel
# Never a CUDA torch: the CPU build (same version as the project venv). pip's configured find-links /
# mirror usually has the local wheel; the PyTorch CPU index is only consulted when it is reachable.
TORCH_INDEX=()
if "$VENV/bin/python" -c "import socket; socket.create_connection(('download.pytorch.org', 443), 3)" 2>/dev/null; then
  TORCH_INDEX=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi
"$PIP" install -q "torch==2.13.0" "${TORCH_INDEX[@]}"
"$VENV/bin/python" -c "import torch, sys; sys.exit(torch.version.cuda is not None and 'CUDA torch installed, expected CPU')"
"$PIP" install -q "numpy<2.5" scipy einops importlib_metadata mmengine "mmcv-lite==2.1.0"
"$PIP" install -q --no-deps "mmaction2==1.2.0"

# The 1.2.0 wheel ships without mmaction/models/localizers/drn, but localizers/__init__.py imports it.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
INIT="$SITE/mmaction/models/localizers/__init__.py"
if [ ! -d "$SITE/mmaction/models/localizers/drn" ] && grep -q '^from .drn' "$INIT"; then
  sed -i 's/^from \.drn/# (drn missing from the 1.2.0 wheel) from .drn/' "$INIT"
  sed -i "s/'DRN', *//; s/, *'DRN'//" "$INIT"
fi

"$VENV/bin/python" -c "import mmaction, torch; from mmaction.datasets.transforms import pose_transforms; \
from mmaction.models import STGCN; print('mmaction2', mmaction.__version__, 'torch', torch.__version__)"
echo "mmaction2 venv ready: $VENV"
