#!/usr/bin/env bash
# The demo: synthetic MO-FER domains (generated under $DATA the first time), the tiny CLIP backbone,
# CPU only, no network. Prints each method's open-set results table. The tiny backbone has random
# weights: the demo shows the pipeline end to end, not the paper's numbers (those need ViT-B/32).
#   bash scripts/demo.sh            # data in ./data, outputs in ./output/demo
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-data}"
OUT="${OUT:-output/demo}"
SEED="${SEED:-1}"

run() {  # run TRAINER CONFIG
  local trainer="$1" config="$2"
  echo "=== ${trainer} ==="
  python train.py --root "$DATA" --dataset-config-file configs/datasets/synthetic.yaml \
    --config-file "$config" --output-dir "$OUT/$trainer/seed$SEED" --seed "$SEED" \
    | grep -v -E '^(epoch \[|Evaluate on)'
}

run ZSCLIP configs/trainers/ZSCLIP/tiny.yaml
run PromptEmo configs/trainers/PromptEmo/tiny.yaml
