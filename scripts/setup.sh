#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with torch, torchvision and densessl (editable, dev extra).
# Re-running is a no-op unless pyproject.toml, this script or scripts/build_mmcv.sh changed. Works from a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.densessl-setup"
want="$(cat pyproject.toml scripts/setup.sh scripts/build_mmcv.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import densessl, torch, timm, mmcv._ext, mmseg, matplotlib, pycocotools" 2>/dev/null; then
    exit 0
fi
echo "[setup] creating/updating $VENV (first run takes a few minutes)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
# torch/torchvision pinned to the builds this project is tested with (DESIGN.md section 5); on x86_64 with Python
# 3.11 pip takes both from the local wheel cache.
$PIP install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
$VENV/bin/python -c "import torch, torchvision" || { echo "[setup] torch/torchvision failed to install" >&2; exit 1; }
$PIP install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
$VENV/bin/python -c "import densessl, timm, einops, yaml, tqdm, pytest" || { echo "[setup] densessl install failed" >&2; exit 1; }
# mmsegmentation (densessl.eval.mmseg_plugin) needs the full mmcv 2.1.0 with compiled ops; PyPI has no wheel for our
# torch, so scripts/build_mmcv.sh builds one once per machine into a wheel cache (~10 minutes) and prints its path.
MMCV_WHEEL="$(bash scripts/build_mmcv.sh)" || { echo "[setup] building the mmcv wheel failed" >&2; exit 1; }
$PIP install -q "$MMCV_WHEEL" 2>&1 | grep -v "^WARNING: Location" || true
$PIP install -q -e ".[dev,mmseg,viz,det]" 2>&1 | grep -v "^WARNING: Location" || true
$VENV/bin/python -c "import mmcv.ops, mmengine, mmseg, matplotlib, pycocotools" || { echo "[setup] optional extras (mmseg, viz, det) failed to install" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[setup] done"
