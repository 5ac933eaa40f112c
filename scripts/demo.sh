#!/usr/bin/env bash
# The main job, from a clean clone: set up, pretrain VICRegL (ResNet-18) on the embedded synthetic scenes, then
# evaluate the result next to a randomly initialized ResNet-18 with the linear probe and dense kNN (mIoU).
# Idempotent: a finished pretraining run is reused, an interrupted one is resumed; evaluations are redone.
# Environment: DEMO_RUN (run dir, default runs/demo), DEMO_EVAL_SIZE (eval input size, default 224).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
PY=.venv/bin/python
CONFIG=configs/pretrain/vicregl_resnet18_synthetic.yaml
RUN="${DEMO_RUN:-runs/demo}"
SIZE="${DEMO_EVAL_SIZE:-224}"

if [ -f "$RUN/backbone.pt" ]; then
    echo "[demo] reusing the finished pretraining run in $RUN (delete it to retrain)"
elif [ -f "$RUN/checkpoints/last.pt" ]; then
    echo "[demo] resuming the interrupted pretraining run in $RUN"
    $PY tools/train.py "$CONFIG" --output-dir "$RUN" --resume
else
    rm -rf "$RUN"
    echo "[demo] pretraining: $CONFIG -> $RUN"
    $PY tools/train.py "$CONFIG" --output-dir "$RUN"
fi

mkdir -p "$RUN/eval"
for protocol in linear knn; do
    for weights in "$RUN/backbone.pt" random; do
        name=$([ "$weights" = random ] && echo random || echo vicregl)
        echo "[demo] $protocol evaluation of $name (synthetic val, input $SIZE)"
        $PY tools/eval_seg.py --weights "$weights" --arch resnet18 --dataset synthetic --protocol "$protocol" \
            --input-size "$SIZE" --no-progress --out "$RUN/eval/${protocol}_${name}.json" > "$RUN/eval/${protocol}_${name}.txt"
    done
done
for protocol in linear knn; do
    echo
    echo "== $protocol: VICRegL-pretrained vs random init (mIoU %, synthetic val) =="
    $PY tools/compare_evals.py "$RUN/eval/${protocol}_vicregl.json" "$RUN/eval/${protocol}_random.json" \
        --labels vicregl random
done
echo
echo "[demo] done. Pretraining metrics: $RUN/metrics.jsonl; backbone: $RUN/backbone.pt; evaluations: $RUN/eval/"
