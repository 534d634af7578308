#!/usr/bin/env bash
# The segmentation part of training/README.md's chain on one machine with many cores and a GPU:
# the training data made side by side (JOBS node processes of RAYON_NUM_THREADS threads), then
# the nets trained on the GPU, each with the same steps it takes on the CPU (the recipe stays one
# that the 2-core machine trains in under 45 minutes; the GPU only saves time): the readers' nets
# (STEPS, the prior from the start) beside the truth's first part without the prior (BASE_STEPS),
# then `seg-truth` (the prior added) and its ablation `seg-no-prior` (without it) from that first
# part (FINE_STEPS each; training/README.md items 24, 27, 31 and 33: 16 base channels and the
# per-lesion Dice throughout, soft targets and patches beside hot organs in the second part), on
# SUV and CT in two windows each (the readers' nets on one SUV window and 8 base channels, as
# shipped).
#
#   training/gpu_chain.sh OUT [STEPS]
#
# From the environment: PYTHON, JOBS (node processes), BINARY, SCRATCH (temporary studies),
# DEVICE (cuda), LESION / NORMAL / VALIDATION (seed ranges), DATA_SECONDS, BASE_STEPS (8000),
# FINE_STEPS (4000).
#
# OUT gets lesion/, normal-prior/, validation/, the checkpoints and one log per net. The shipped
# nets' data came from JOBS=9 DATA_SECONDS=200, which reached LESION=1000-1056,1059 and
# NORMAL=2000-2008 (training/README.md item 19): give those to make the same data.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: training/gpu_chain.sh OUT [STEPS]}
steps=${2:-6000}
P=${PYTHON:-python3}
jobs=${JOBS:-8}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
common=(--models training/configs/anomaly.toml --binary "${BINARY:-target/release/petct-node}")
[ -n "${SCRATCH:-}" ] && common+=(--scratch "$SCRATCH")
mkdir -p "$out"
t0=$SECONDS
# The lesion studies take most of the cores, the two small sets run beside them. DATA_SECONDS caps
# the time: cases finished by then are kept (make_data.py marks each when complete) and used.
limit=(timeout "${DATA_SECONDS:-86400}")
pids=()
"${limit[@]}" $P training/make_data.py "${common[@]}" --seeds "${LESION:-1000-1079}" --out "$out/lesion" \
  --jobs $((jobs > 2 ? jobs - 2 : 1)) >"$out/data-lesion.log" 2>&1 & pids+=($!)
"${limit[@]}" $P training/make_data.py "${common[@]}" --normal --seeds "${NORMAL:-2000-2015}" --out "$out/normal-prior" \
  --jobs 1 >"$out/data-normal.log" 2>&1 & pids+=($!)
"${limit[@]}" $P training/make_data.py "${common[@]}" --seeds "${VALIDATION:-8000-8003}" --out "$out/validation" \
  --jobs 1 >"$out/data-validation.log" 2>&1 & pids+=($!)
for pid in "${pids[@]}"; do
  wait "$pid" || [ $? = 124 ] || { echo "making data failed: see $out/data-*.log" >&2; exit 1; }
done
echo "data: $((SECONDS - t0)) s, $(ls "$out"/*/case*/done.json | wc -l) cases"

S=(--data "$out/lesion" "$out/normal-prior" --patch 48 --threads 1 --validate "$out/validation"
   --norm batch --device "${DEVICE:-cuda}")
readers=(--channels suv,ct_hu,ct_soft,anomaly_prior)
truth=(--channels suv,suv_soft,ct_hu,ct_soft,anomaly_prior --blob-weight 1 --bf16 --base 16)
t1=$SECONDS
train() {  # NAME LABELS STEPS VALIDATE_EVERY [ARGS...]: runs in the background
  $P training/train_seg.py "${S[@]}" --out "$out/$1.pt" --labels "$2" --steps "$3" --validate-every "$4" "${@:5}" \
    >"$out/$1.log" 2>&1 &
  pids+=($!)
}
finish() {
  for pid in "${pids[@]}"; do wait "$pid" || { echo "training failed: see $out/*.log" >&2; exit 1; }; done
  pids=()
}
pids=()
train seg-hsens high_sensitivity "$steps" 2000 "${readers[@]}"
train seg-hspec high_specificity "$steps" 2000 "${readers[@]}"
train seg-base truth "${BASE_STEPS:-8000}" 2000 --no-prior "${truth[@]}"
finish
fine=(--init "$out/seg-base.pt" --lr 1e-3 --seed 2 "${truth[@]}" --soft-labels --confounders 0.5)
train seg-truth truth "${FINE_STEPS:-4000}" 1000 "${fine[@]}"
train seg-no-prior truth "${FINE_STEPS:-4000}" 1000 "${fine[@]}" --no-prior
finish
echo "training: $((SECONDS - t1)) s"
