#!/usr/bin/env bash
# Run the test suite against the lowest torch/torchvision/timm that pyproject.toml admits (torch 2.4.1, torchvision
# 0.19.1, timm 1.0.20: the first timm with the local-dir: loader and the DINOv3 models) in a separate virtual
# environment (default /tmp/densessl-min-venv; the project .venv is not touched).
# Not part of CI (it downloads ~2.5 GB of CUDA wheels the first time); run it when changing the lower bounds or
# using a newer torch API. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MIN_VENV:-/tmp/densessl-min-venv}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.4.1" "torchvision==0.19.1" "timm==1.0.20" 2>&1 \
    | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
