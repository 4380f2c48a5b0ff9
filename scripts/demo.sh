#!/usr/bin/env bash
# The demo: every method on the synthetic MO-FER benchmark (domains generated under $DATA the first
# time), with the tiny CLIP backbone, on the CPU, without network; then one table of all methods.
# The tiny backbone has random weights: the demo shows the pipeline end to end, not the paper's numbers
# (those need ViT-B/32 and the real datasets).
#   bash scripts/demo.sh            # data in ./data, outputs in ./output/demo
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-data}"
OUT="${OUT:-output/demo}"
SEEDS="${SEEDS:-1}"

# Each method's own log goes to its output folder; the console gets the progress lines.
python scripts/protocol.py --methods ZSCLIP CoOp Baseline PromptEmo --variant tiny \
  --domains synth_color synth_gray synth_lab synth_wild --targets synth_wild --unseen fear \
  --seeds $SEEDS --data "$DATA" --out "$OUT" --dataset-config configs/datasets/synthetic.yaml \
  | grep --line-buffered -E '^(run|skip) '
echo
python scripts/results.py "$OUT" --summary
