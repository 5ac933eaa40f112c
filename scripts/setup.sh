#!/usr/bin/env bash
# Idempotent set-up of .venv: torch, torchvision and densessl (editable) with the extras a profile needs.
#
#   bash scripts/setup.sh demo   what scripts/demo.sh needs: densessl itself (pretraining + segmentation evaluation)
#   bash scripts/setup.sh test   everything the test suite imports: the dev extra (pytest, mmseg on mmcv-lite,
#                                matplotlib, pycocotools, tensorboard, faiss-cpu, wandb)
#
# Nothing is compiled: mmsegmentation runs on mmcv-lite with densessl's pure-Python mmcv.ops stand-in. Re-running is
# a no-op unless pyproject.toml or this script changed (a "test" set-up also satisfies "demo"). Works from a clean
# clone. The full mmcv with compiled ops (only for heads such as PSA/CCNet/DCN) is opt-in: scripts/build_mmcv.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${1:-test}"
case "$PROFILE" in
    demo) EXTRAS="" ; CHECK="import densessl, torch, torchvision, timm, einops, safetensors" ;;
    test) EXTRAS="[dev]" ; CHECK="import densessl, torch, torchvision, timm, pytest, xdist, mmseg, mmengine, matplotlib, pycocotools, faiss, torch.utils.tensorboard, wandb" ;;
    *) echo "[setup] unknown profile '$PROFILE' (use: demo or test)" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-python3}"
VENV=.venv
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
stamp_ok() { [ -f "$VENV/.densessl-setup-$1" ] && [ "$(cat "$VENV/.densessl-setup-$1")" = "$want" ]; }
if { stamp_ok "$PROFILE" || { [ "$PROFILE" = demo ] && stamp_ok test; }; } \
        && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
    exit 0
fi
start=$(date +%s)
echo "[setup] creating/updating $VENV for '$PROFILE' (first run: about 2 minutes, most of it unpacking torch)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
quiet() { grep -v "^WARNING: Location" || true; }
# torch/torchvision pinned to the builds this project is tested with; on x86_64 with Python 3.11 pip takes both from
# this machine's local wheel cache. On another machine pip downloads them (or keep the torch you have: any
# torch >= 2.4 with its matching torchvision works, see pyproject.toml).
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    $PIP install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | quiet
fi
"$VENV/bin/python" -c "import torch, torchvision" || { echo "[setup] torch/torchvision failed to install" >&2; exit 1; }
$PIP install -q -e ".$EXTRAS" 2>&1 | quiet
"$VENV/bin/python" -c "$CHECK" || { echo "[setup] installing densessl$EXTRAS failed (see pip's output above)" >&2; exit 1; }
echo "$want" > "$VENV/.densessl-setup-$PROFILE"
echo "[setup] done in $(( $(date +%s) - start )) s"
