#!/usr/bin/env bash
# Create (or refresh) the benchmark-only venv at benchmarks/.venv-bench: densessl (editable, no deps) + lightly.
# Idempotent: an existing venv is reused and pip skips what is already installed. Never touches the project .venv.
# torch/torchvision come from this machine's local wheel cache (~1 min); lightly and the small deps from PyPI.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="$here/.venv-bench"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
# Same torch as the project venv, so timings compare like with like.
"${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
"${pip[@]}" "lightly==1.6.0" timm einops pyyaml tqdm pillow numpy
"${pip[@]}" --no-deps -e "$repo"
"$venv/bin/python" - <<'PY'
import lightly, torch, torchvision, densessl
print(f"bench venv ok: torch {torch.__version__}, torchvision {torchvision.__version__}, lightly {lightly.__version__}")
PY
