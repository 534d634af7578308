#!/usr/bin/env bash
# Assemble + decode benchmark (not a test): the 300-slice 512x512 CT of a `wholebody` phantom
# into one float volume in HU, sorted along the slice normal, by petct-node (benches/assemble.rs)
# and by pydicom + numpy (read every file, sort by position, apply the Modality LUT, stack), in
# the same run. Prints seconds and the ratio; the volumes' sums must agree.
#
#   bench/assemble.sh [ROUNDS]   (default 5; best round of each)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
work=$(mktemp -d /tmp/petct-assemble.XXXXXX)
trap 'rm -rf "$work"' EXIT
cargo build --release --locked --quiet
target/release/petct-node phantom --out "$work/study" --profile wholebody --seed 7 >/dev/null
node=$(PETCT_BENCH_SERIES="$work/study/CT" PETCT_BENCH_ROUNDS=$rounds cargo bench --quiet --locked --bench assemble 2>/dev/null | grep 'assemble+decode')
echo "$node"
python3 - "$work/study/CT" "$rounds" "$node" <<'PY'
import glob, re, sys, time
import numpy as np
import pydicom
folder, rounds, node_line = sys.argv[1], int(sys.argv[2]), sys.argv[3]
node = float(re.search(r"decode: ([0-9.]+) s", node_line).group(1))
best, total = None, None
for _ in range(rounds):
    t0 = time.perf_counter()
    ds = [pydicom.dcmread(f) for f in glob.glob(f"{folder}/*.dcm")]
    iop = np.array(ds[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    ds.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, dtype=float), normal)))
    vol = np.stack([d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ds])
    dt = time.perf_counter() - t0
    best = dt if best is None else min(best, dt)
    total = float(vol.astype(np.float64).sum())
print(f"pydicom + numpy:             {best:.3f} s (checksum {total:.6e})")
print(f"petct-node is {best / node:.2f}x faster")
PY
