#!/usr/bin/env bash
# The segmentation part of training/README.md's chain on one machine with many cores and a GPU:
# the training data made side by side (JOBS node processes of RAYON_NUM_THREADS threads), then
# the four nets trained at once on the GPU, each with the same steps it takes on the CPU (the
# recipe stays one that the 2-core machine trains in under 45 minutes; the GPU only saves time).
#
#   training/gpu_chain.sh OUT [STEPS]
#
# From the environment: PYTHON, JOBS (node processes), BINARY, SCRATCH (temporary studies),
# DEVICE (cuda), LESION / NORMAL / VALIDATION (seed ranges), DATA_SECONDS.
#
# OUT gets lesion/, normal-prior/, validation/, the checkpoints and one log per net. The shipped
# 2.0.0 nets came from JOBS=9 DATA_SECONDS=200, which reached LESION=1000-1056,1059 and
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

S=(--data "$out/lesion" "$out/normal-prior" --patch 48 --threads 1 --steps "$steps"
   --validate "$out/validation" --validate-every 2000 --norm batch
   --channels suv,ct_hu,ct_soft,anomaly_prior --device "${DEVICE:-cuda}")
t1=$SECONDS
pids=()
for net in "truth seg-truth" "truth seg-no-prior --no-prior" "high_sensitivity seg-hsens" \
           "high_specificity seg-hspec"; do
  set -- $net
  $P training/train_seg.py "${S[@]}" --labels "$1" --out "$out/$2.pt" "${@:3}" >"$out/$2.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || { echo "training failed: see $out/*.log" >&2; exit 1; }; done
echo "training: $((SECONDS - t1)) s"
