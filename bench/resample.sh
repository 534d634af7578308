#!/usr/bin/env bash
# Resampling benchmark (not a test): the SUV of a `wholebody` phantom (200x200 PET) onto its
# 512x512x300 CT grid, trilinear, by petct-node and by SimpleITK (PyPI) on the same volumes in
# the same run. petct-node's time is the `resample` stage that `run` reports; SimpleITK's is
# sitk.Resample on the NIfTI files petct-node exported (reading them is not timed). Both use
# the machine's two cores. Prints seconds and the ratio.
#
#   bench/resample.sh [ROUNDS]   (default 5; the best round of each is reported)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
python3 -c 'import SimpleITK' 2>/dev/null || { echo "pip install SimpleITK first (scripts/test.sh does)" >&2; exit 1; }
cargo build --release --locked --quiet
work=$(mktemp -d /tmp/petct-resample.XXXXXX)
trap 'rm -rf "$work"' EXIT
target/release/petct-node phantom --out "$work/study" --profile wholebody --seed 7 >/dev/null

best_node=""
for _ in $(seq "$rounds"); do
  s=$(target/release/petct-node run "$work/study" --out "$work/out" --export-volumes | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"]["resample"])')
  if [ -z "$best_node" ] || python3 -c "import sys; sys.exit(0 if $s < $best_node else 1)"; then best_node=$s; fi
done

python3 - "$work/out" "$rounds" "$best_node" <<'PY'
import sys, time
import numpy as np
import SimpleITK as sitk
out, rounds, node = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ct = sitk.ReadImage(f"{out}/ct_hu.nii.gz")
pet = sitk.ReadImage(f"{out}/suv.nii.gz")
best = None
for _ in range(rounds):
    t0 = time.perf_counter()
    ref = sitk.Resample(pet, ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    dt = time.perf_counter() - t0
    best = dt if best is None else min(best, dt)
ours = sitk.GetArrayFromImage(sitk.ReadImage(f"{out}/suv_on_ct.nii.gz"))
diff = float(np.max(np.abs(ours - sitk.GetArrayFromImage(ref))))
print(f"grid: PET {pet.GetSize()} -> CT {ct.GetSize()}, SimpleITK threads {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}")
print(f"{'resampler':<28}{'seconds':>10}{'vs SimpleITK':>16}")
print(f"{'petct-node':<28}{node:>10.3f}{best / node:>16.2f}")
print(f"{'SimpleITK sitk.Resample':<28}{best:>10.3f}{1.0:>16.2f}")
print(f"largest difference between the two: {diff:.2e} SUV")
PY
