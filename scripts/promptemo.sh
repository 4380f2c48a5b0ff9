#!/usr/bin/env bash
# PromptEmo on one MO-FER cell with the paper's settings, seeds 1 2 3:
#   bash scripts/promptemo.sh TARGET UNSEEN [KEY VALUE ...]
#   bash scripts/promptemo.sh rafdb fear                      # sources: ferplus affectnet oulu
# Outputs: output/mofer/<target>/<unseen>/PromptEmo/seed<k>; finished runs (results.json) are skipped.
# Environment (see scripts/lib/protocol.sh): DATA, DOMAINS, SEEDS, OUT, CONFIG. On the synthetic domains:
#   DOMAINS="synth_color synth_gray synth_lab synth_wild" CONFIG=configs/trainers/PromptEmo/tiny.yaml \
#     DATASET_CONFIG=configs/datasets/synthetic.yaml bash scripts/promptemo.sh synth_wild fear
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/promptemo.sh TARGET UNSEEN [KEY VALUE ...]" >&2
  exit 2
fi
# shellcheck source=lib/protocol.sh
. scripts/lib/protocol.sh
CONFIG="${CONFIG:-configs/trainers/PromptEmo/vit_b32.yaml}"
run_cell PromptEmo "$CONFIG" "$@"
