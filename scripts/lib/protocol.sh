# Shared by scripts/promptemo.sh and scripts/baselines.sh: one MO-FER protocol cell.
#   run_cell TRAINER CONFIG TARGET UNSEEN [KEY VALUE ...]
# Runs TRAINER with CONFIG for every seed in $SEEDS into $OUT/<target>/<unseen>/<trainer>/seed<k>;
# sources are the domains of $DOMAINS other than TARGET; runs whose results.json exists are skipped.
# Environment: DATA (dataset root, ./data), DOMAINS ("rafdb ferplus affectnet oulu"), SEEDS ("1 2 3"),
# OUT (output/mofer), DATASET_CONFIG (configs/datasets/mofer.yaml), PYTHON (python).

DATA="${DATA:-./data}"
DOMAINS="${DOMAINS:-rafdb ferplus affectnet oulu}"
SEEDS="${SEEDS:-1 2 3}"
OUT="${OUT:-output/mofer}"
DATASET_CONFIG="${DATASET_CONFIG:-configs/datasets/mofer.yaml}"
PYTHON="${PYTHON:-python}"

sources_for() {  # sources_for TARGET -> the other domains, or an error if TARGET is not one of DOMAINS
  local target="$1" d found=0 sources=()
  for d in $DOMAINS; do
    if [ "$d" = "$target" ]; then found=1; else sources+=("$d"); fi
  done
  if [ "$found" = 0 ]; then
    echo "error: target '$target' is not one of DOMAINS ($DOMAINS)" >&2
    return 2
  fi
  echo "${sources[@]}"
}

run_cell() {
  local trainer="$1" config="$2" target="$3" unseen="$4"
  shift 4
  local sources seed dir
  sources="$(sources_for "$target")" || return 2
  for seed in $SEEDS; do
    dir="$OUT/$target/$unseen/$trainer/seed$seed"
    if [ -f "$dir/results.json" ]; then
      echo "skip $dir (results.json exists)"
      continue
    fi
    echo "run  $dir"
    # shellcheck disable=SC2086
    "$PYTHON" train.py --root "$DATA" --dataset-config-file "$DATASET_CONFIG" --config-file "$config" \
      --trainer "$trainer" --source-domains $sources --target-domains "$target" --seed "$seed" \
      --output-dir "$dir" DATASET.UNSEEN_CLASSES "$unseen" "$@" || return $?
  done
}
