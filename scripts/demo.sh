#!/usr/bin/env bash
# The demo: every method on the synthetic MO-FER benchmark, on the CPU, without network; then one table.
#   bash scripts/demo.sh                 # data in ./data, outputs in ./output/demo
#   VARIANT=tiny bash scripts/demo.sh    # random-weight tiny CLIP: the pipeline only, a few minutes
# By default (VARIANT=tiny_pretrained) it first pre-trains a tiny CLIP on synthetic face/caption pairs
# kept apart from the benchmark (scripts/pretrain_tiny_clip.py, once: $DATA/tiny-clip-synthetic.pt), the
# stand-in for OpenAI's pretrained weights; the synthetic domains are generated under $DATA the first
# time. The paper's numbers need ViT-B/32, the methods' ImageNet ResNets and the real datasets.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-data}"
OUT="${OUT:-output/demo}"
SEEDS="${SEEDS:-1}"
VARIANT="${VARIANT:-tiny_pretrained}"

clip_opts=() resnet_opts=() sizes=()
if [ "$VARIANT" = tiny_pretrained ]; then
  WEIGHTS="$DATA/tiny-clip-synthetic.pt"
  python scripts/pretrain_tiny_clip.py --out "$WEIGHTS"
  # 100 training and 50 test faces per class and domain: the pretrained backbone's runs were measured so
  sizes=(DATASET.SYNTHETIC.N_TRAIN_PER_CLASS 100 DATASET.SYNTHETIC.N_TEST_PER_CLASS 50)
  clip_opts=(MODEL.BACKBONE.NAME "$WEIGHTS")  # the CLIP methods' backbone; the ResNet methods' is a ResNet
  resnet_opts=(TRAINER.LACMFERCLIP.CLIP_BACKBONE "$WEIGHTS")  # LA-CMFER + CLIP's text encoder
fi

# Each method's own log goes to its output folder; the console gets the progress lines.
run() {
  python scripts/protocol.py --variant "$VARIANT" --domains synth_color synth_gray synth_lab synth_wild \
    --targets synth_wild --unseen fear --seeds $SEEDS --data "$DATA" --out "$OUT/$VARIANT" \
    --dataset-config configs/datasets/synthetic.yaml "$@" | grep --line-buffered -E '^(run|skip) '
}
run --methods ZSCLIP CoOp Baseline PromptEmo -- "${sizes[@]}" "${clip_opts[@]}"
run --methods DUML LACMFER LACMFERCLIP -- "${sizes[@]}" "${resnet_opts[@]}"
echo
python scripts/results.py "$OUT/$VARIANT" --summary
