#!/usr/bin/env bash
# Inference benchmark (not a test): the shipped models (anomaly detector, then both segmentation
# models with its prior) on a `wholebody` phantom (CT 512x512x300), by the node (`run --config`,
# the `infer` stage: model grid, crop to the body, sliding windows on ONNX Runtime, maps back on
# the CT grid) and by Python onnxruntime with MONAI-style sliding-window inference (Gaussian
# blending, overlap 0.5, bench/infer_onnxruntime.py) on the same model-grid volumes, in the same
# run. Prints seconds, the ratio and the node's peak memory.
#
#   bench/infer.sh [ROUNDS]   (default 3; best round of each)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
lib=${ORT_DYLIB_PATH:-$PWD/.tools/onnxruntime/libonnxruntime.so.1.31.1}
[ -f "$lib" ] || { echo "no ONNX Runtime library at $lib: scripts/test.sh fetches it" >&2; exit 1; }
python3 -c 'import onnxruntime' 2>/dev/null || { echo "pip install onnxruntime==1.31.1 numpy SimpleITK first" >&2; exit 1; }
work=$(mktemp -d /tmp/petct-infer.XXXXXX)
trap 'rm -rf "$work"' EXIT
cargo build --release --locked --quiet
target/release/petct-node phantom --out "$work/study" --profile wholebody --seed 7 >/dev/null
cat > "$work/node.toml" <<TOML
[inference]
library = "$lib"
threads = 2
[[models]]
manifest = "$PWD/models/anomaly-ae.model.toml"
[[models]]
manifest = "$PWD/models/seg-high-sensitivity.model.toml"
[[models]]
manifest = "$PWD/models/seg-high-specificity.model.toml"
TOML
best=""
for r in $(seq "$rounds"); do
  /usr/bin/time -f '%M' -o "$work/rss" target/release/petct-node run "$work/study" --out "$work/out" \
    --config "$work/node.toml" --model-spacing 4 > "$work/run.json"
  s=$(python3 -c "import json; print(json.load(open('$work/run.json'))['seconds']['infer'])")
  parts=$(python3 -c "import json; print(', '.join(f\"{p['part']} {p['seconds']:.2f} s\" for p in json.load(open('$work/run.json'))['seconds']['infer_parts']))")
  echo "round $r: petct-node infer stage $s s ($parts), peak RSS of the whole run $(($(cat "$work/rss") / 1024)) MB"
  best=$(python3 -c "print(min(float('$s'), float('${best:-1e9}')))")
done
python3 bench/infer_onnxruntime.py "$work/out/model_grid" "$PWD/models" "$rounds" "$best"
