#!/usr/bin/env bash
# Every comparison method (Baseline, CoOp, ZSCLIP, NENO, OS-FER, DUML, LA-CMFER, LA-CMFER + CLIP) on one
# MO-FER cell, seeds 1 2 3:
#   bash scripts/baselines.sh TARGET UNSEEN [KEY VALUE ...]
# Outputs: output/mofer/<target>/<unseen>/<trainer>/seed<k>; finished runs (results.json) are skipped.
# Environment: DATA, DOMAINS, SEEDS, OUT, DATASET_CONFIG as scripts/promptemo.sh; METHODS (the trainers),
# VARIANT (config file name under configs/trainers/<method>/: paper, the original's settings of each method,
# or tiny on the synthetic domains).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/baselines.sh TARGET UNSEEN [KEY VALUE ...]" >&2
  exit 2
fi
target="$1" unseen="$2"
shift 2
# shellcheck disable=SC2086
exec "${PYTHON:-python}" scripts/protocol.py --methods ${METHODS:-Baseline CoOp ZSCLIP NENO OSFER DUML LACMFER LACMFERCLIP} \
  --targets "$target" --unseen "$unseen" --domains ${DOMAINS:-rafdb ferplus affectnet oulu} --seeds ${SEEDS:-1 2 3} \
  --data "${DATA:-./data}" --out "${OUT:-output/mofer}" \
  --dataset-config "${DATASET_CONFIG:-configs/datasets/mofer.yaml}" --variant "${VARIANT:-paper}" -- "$@"
