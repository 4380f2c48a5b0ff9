#!/usr/bin/env bash
# PromptEmo on one MO-FER cell with the paper's settings, seeds 1 2 3:
#   bash scripts/promptemo.sh TARGET UNSEEN [KEY VALUE ...]
#   bash scripts/promptemo.sh rafdb fear                      # sources: ferplus affectnet oulu
# Outputs: output/mofer/<target>/<unseen>/PromptEmo/seed<k>; finished runs (results.json) are skipped.
# Environment: DATA (./data), DOMAINS ("rafdb ferplus affectnet oulu"), SEEDS ("1 2 3"), OUT
# (output/mofer), CONFIG (configs/trainers/PromptEmo/vit_b32.yaml), DATASET_CONFIG. On the synthetic domains:
#   DOMAINS="synth_color synth_gray synth_lab synth_wild" CONFIG=configs/trainers/PromptEmo/tiny.yaml \
#     DATASET_CONFIG=configs/datasets/synthetic.yaml bash scripts/promptemo.sh synth_wild fear
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/promptemo.sh TARGET UNSEEN [KEY VALUE ...]" >&2
  exit 2
fi
target="$1" unseen="$2"
shift 2
# shellcheck disable=SC2086
exec "${PYTHON:-python}" scripts/protocol.py --methods PromptEmo --targets "$target" --unseen "$unseen" \
  --domains ${DOMAINS:-rafdb ferplus affectnet oulu} --seeds ${SEEDS:-1 2 3} --data "${DATA:-./data}" \
  --out "${OUT:-output/mofer}" --dataset-config "${DATASET_CONFIG:-configs/datasets/mofer.yaml}" \
  --config "${CONFIG:-configs/trainers/PromptEmo/vit_b32.yaml}" -- "$@"
