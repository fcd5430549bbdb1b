#!/usr/bin/env bash
# Packs mmaction2 1.2.0 and its pure-Python dependencies from the side venv (bench/setup_mmaction2_venv.sh) into
# .mmdev/ (gitignored), for the GPU machine: it has python3 with torch, numpy, scipy, einops and opencv but no
# mmaction2 and no network. `.mmdev/python` runs that python3 with them on its path; the GPU benches use it as the
# mmaction2 side (BENCH_MMACTION_PY=.mmdev/python), so both sides run on the same GPU and the same torch.
#   bash bench/pack_mmaction2_for_device.sh      # here, once; then carry .mmdev to the device (bench/gpu_check.sh)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$REPO/.bench_venv_mmaction2}"
[ -x "$VENV/bin/python" ] || bash "$REPO/bench/setup_mmaction2_venv.sh"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
OUT="$REPO/.mmdev"
rm -rf "$OUT" && mkdir -p "$OUT/site"
# mmcv-lite has no compiled ops; yapf (with platformdirs), addict and termcolor are what mmengine's config and
# logging need beyond what the GPU machine has.
for pkg in mmaction mmengine mmcv addict termcolor yapf yapf_third_party importlib_metadata zipp lazy_importer platformdirs; do
  cp -r "$SITE/$pkg" "$OUT/site/"
done
cp -r "$SITE"/{mmaction2,mmengine,mmcv_lite,addict,termcolor,yapf,importlib_metadata,zipp,lazy_importer,platformdirs}-*.dist-info "$OUT/site/"
find "$OUT" -name __pycache__ -prune -exec rm -rf {} +
# mmaction2 imports its VindLU models whenever transformers is installed (the GPU machine has transformers 5 and
# timm, which those 2023 models predate); the STGCN bench needs none of them, so the packed copy skips them.
sed -i 's/^WITH_MULTIMODAL = all(/WITH_MULTIMODAL = False and all(/' "$OUT/site/mmaction/utils/dependency.py"
grep -q '^WITH_MULTIMODAL = False and' "$OUT/site/mmaction/utils/dependency.py"
cat > "$OUT/python" <<'SH'
#!/bin/sh
# python3 with the packed mmaction2 first on its path (bench/pack_mmaction2_for_device.sh)
PYTHONPATH="$(dirname "$0")/site${PYTHONPATH:+:$PYTHONPATH}" exec python3 "$@"
SH
chmod +x "$OUT/python"
du -sh "$OUT"
