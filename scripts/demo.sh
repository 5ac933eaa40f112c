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

if [ -f "$RUN/export/model.safetensors" ]; then
    echo "[demo] reusing the finished pretraining run in $RUN (delete it to retrain)"
else
    # --resume auto: continues an interrupted run, else starts.
    echo "[demo] pretraining: $CONFIG -> $RUN"
    $PY -m densessl.cli.train "$CONFIG" --output-dir "$RUN" --resume auto
fi

mkdir -p "$RUN/eval"
for protocol in linear knn; do
    # The run folder's export states its architecture; random init needs --arch.
    for weights in "$RUN" random; do
        name=$([ "$weights" = random ] && echo random || echo vicregl)
        arch=$([ "$weights" = random ] && echo "--arch resnet18" || echo "")
        echo "[demo] $protocol evaluation of $name (synthetic val, input $SIZE)"
        # shellcheck disable=SC2086
        $PY -m densessl.cli.eval_seg --weights "$weights" $arch --dataset synthetic --protocol "$protocol" \
            --input-size "$SIZE" --no-progress --out "$RUN/eval/${protocol}_${name}.json" > "$RUN/eval/${protocol}_${name}.txt"
    done
done
for protocol in linear knn; do
    echo
    echo "== $protocol: VICRegL-pretrained vs random init (mIoU %, synthetic val) =="
    $PY -m densessl.cli.compare_evals "$RUN/eval/${protocol}_vicregl.json" "$RUN/eval/${protocol}_random.json" \
        --labels vicregl random
done
echo
echo "[demo] done. Pretraining metrics: $RUN/metrics.jsonl; backbone: $RUN; evaluations: $RUN/eval/"
