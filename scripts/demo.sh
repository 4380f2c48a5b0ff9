#!/usr/bin/env bash
# The demo: every method on the synthetic MO-FER benchmark, on the CPU, without network; then one table.
#   bash scripts/demo.sh                 # data in ./data, outputs in ./output/demo
#   SEEDS="1 2 3" bash scripts/demo.sh   # more seeds (runs already finished are skipped)
#   VARIANT=tiny bash scripts/demo.sh    # random-weight tiny CLIP: the pipeline only
# By default (VARIANT=tiny_pretrained) the CLIP methods start from the tiny CLIP pre-trained on synthetic
# face/caption pairs kept apart from the benchmark, the stand-in for OpenAI's pretrained weights: the
# repository ships it (assets/tiny-clip-synthetic.pt.gz, made by scripts/pretrain_tiny_clip.py), and it is
# unpacked once to $DATA/tiny-clip-synthetic.pt after its checksum is checked. The synthetic domains are
# generated under $DATA the first time. The paper's numbers need ViT-B/32, the methods' ImageNet ResNets and
# the real datasets.
#
# The runs go in two lanes side by side, one thread each: on 2 cores, Baseline and PromptEmo side by side took
# 79 s, one after the other on two threads 202 s (these small networks' operations gain little from a second
# thread). One thread also keeps the figures reproducible: other thread counts give slightly other ones. Each
# lane has its own decoded-image cache (DATALOADER.CACHE: every image decoded once, augmented as a batch), so
# that two processes never build the same cache file at once. A new method joins the lane with the lower
# total CPU time (docs/results.md has each method's).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-data}"
OUT="${OUT:-output/demo}"
SEEDS="${SEEDS:-1}"
VARIANT="${VARIANT:-tiny_pretrained}"
export OMP_NUM_THREADS=1

LANE_1=(PromptEmo DUML ZSCLIP CoOp NENO)
LANE_2=(Baseline LACMFER LACMFERCLIP OSFER)

if [ "$VARIANT" = tiny_pretrained ]; then
  WEIGHTS="$DATA/tiny-clip-synthetic.pt"
  python scripts/pretrain_tiny_clip.py --unpack --out "$WEIGHTS"
  N_TRAIN=100 N_TEST=50  # training and test faces per class and domain
else
  WEIGHTS="" N_TRAIN=40 N_TEST=20  # configs/datasets/synthetic.yaml's
fi
sizes=(DATASET.SYNTHETIC.N_TRAIN_PER_CLASS "$N_TRAIN" DATASET.SYNTHETIC.N_TEST_PER_CLASS "$N_TEST")

# The four domains, two generators side by side (a run would otherwise generate a missing domain itself,
# and two lanes could generate the same one at once).
generate() {
  python scripts/make_synthetic.py --root "$DATA" --domains "$@" --n-train "$N_TRAIN" --n-test "$N_TEST" \
    --no-progress >/dev/null
}
generate synth_color synth_gray &
gen=$!
generate synth_lab synth_wild
wait "$gen"

# One method's runs; its own log goes to its output folder, the console gets the progress lines (no bars:
# two lanes' bars would overwrite each other).
run() {
  local lane=$1 method=$2 opts=()
  if [ -n "$WEIGHTS" ]; then
    case $method in
      DUML|LACMFER|OSFER) ;;  # ResNets from random weights: no CLIP
      LACMFERCLIP) opts=(TRAINER.LACMFERCLIP.CLIP_BACKBONE "$WEIGHTS") ;;  # its text encoder
      *) opts=(MODEL.BACKBONE.NAME "$WEIGHTS") ;;
    esac
  fi
  TQDM_DISABLE=1 python scripts/protocol.py --variant "$VARIANT" --methods "$method" --seeds $SEEDS \
    --domains synth_color synth_gray synth_lab synth_wild --targets synth_wild --unseen fear \
    --data "$DATA" --out "$OUT/$VARIANT" --dataset-config configs/datasets/synthetic.yaml -- \
    "${sizes[@]}" "${opts[@]}" DATALOADER.CACHE.ENABLED True DATALOADER.CACHE.DIR "$OUT/decoded-cache-$lane" |
    grep --line-buffered -E '^(run|skip) '
}
lane() {
  local lane=$1 method
  shift
  for method in "$@"; do run "$lane" "$method" || return 1; done
}

lane 1 "${LANE_1[@]}" &
first=$!
status=0
lane 2 "${LANE_2[@]}" || status=1
wait "$first" || status=1
if [ "$status" != 0 ]; then
  echo "error: a run failed (its error is above; its log.txt is in its folder under $OUT/$VARIANT)" >&2
  exit 1
fi
echo
python scripts/results.py "$OUT/$VARIANT" --summary
echo "(scripts/demo.sh: ${SECONDS} s)"
