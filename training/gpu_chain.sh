#!/usr/bin/env bash
# The segmentation part of training/README.md's chain on one machine with many cores and a GPU:
# the training data made side by side (JOBS node processes of RAYON_NUM_THREADS threads), then
# the nets trained on the GPU, each with the same steps it takes on the CPU (the recipe stays one
# that the 2-core machine trains in under 45 minutes; the GPU only saves time): a first part
# without the prior for the truth and for each reader (BASE_STEPS), then from each the second part
# with the prior (FINE_STEPS): `seg-truth`, `seg-hsens`, `seg-hspec`, and the truth's ablation
# `seg-no-prior` (without the prior). training/README.md items 24, 27, 31, 33 and 35: 16 base
# channels, SUV and CT in two windows each, the per-lesion Dice throughout, soft targets in the
# second part, and for the truth's nets alone patches on truth.json's lesions beside hot organs.
#
#   training/gpu_chain.sh OUT
#
# From the environment: PYTHON, JOBS (node processes), BINARY, SCRATCH (temporary studies),
# DEVICE (cuda), LESION / NORMAL / VALIDATION (seed ranges), DATA_SECONDS, BASE_STEPS (8000),
# FINE_STEPS (4000), ANOMALY_CONFIG (the node config whose anomaly model makes the prior;
# training/configs/anomaly.toml, the shipped one; anomaly-candidate.toml: item 39's candidate).
#
# OUT gets lesion/, normal-prior/, validation/, the checkpoints and one log per net. The shipped
# nets' data came from JOBS=9 DATA_SECONDS=200, which reached LESION=1000-1056,1059 and
# NORMAL=2000-2008 (training/README.md item 19): give those to make the same data.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: training/gpu_chain.sh OUT}
P=${PYTHON:-python3}
jobs=${JOBS:-8}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
common=(--models "${ANOMALY_CONFIG:-training/configs/anomaly.toml}" --binary "${BINARY:-target/release/petct-node}")
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
recipe=(--channels suv,suv_soft,ct_hu,ct_soft,anomaly_prior --blob-weight 1 --bf16 --base 16)
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
for n in seg-base:truth seg-hsens-base:high_sensitivity seg-hspec-base:high_specificity; do
  train "${n%:*}" "${n#*:}" "${BASE_STEPS:-8000}" 2000 --no-prior "${recipe[@]}"
done
finish
fine=(--lr 1e-3 --seed 2 "${recipe[@]}" --soft-labels)
truth=(--init "$out/seg-base.pt" "${fine[@]}" --confounders 0.5)  # truth.json's patches: the truth's nets alone
train seg-truth truth "${FINE_STEPS:-4000}" 1000 "${truth[@]}"
train seg-no-prior truth "${FINE_STEPS:-4000}" 1000 "${truth[@]}" --no-prior
train seg-hsens high_sensitivity "${FINE_STEPS:-4000}" 1000 --init "$out/seg-hsens-base.pt" "${fine[@]}"
train seg-hspec high_specificity "${FINE_STEPS:-4000}" 1000 --init "$out/seg-hspec-base.pt" "${fine[@]}"
finish
echo "training: $((SECONDS - t1)) s"
