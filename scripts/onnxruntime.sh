#!/usr/bin/env bash
# Fetches the ONNX Runtime library the node loads at run time for learned models
# (libonnxruntime.so.1.31.1 from the PyPI wheel onnxruntime==1.31.1; no Python is needed to use
# it) into .tools/onnxruntime unless it is there (.tools is gitignored), and prints its path.
# Used by scripts/test.sh; `demo --models` and `run`/`serve` with models need the same library.
set -euo pipefail
cd "$(dirname "$0")/.."
lib=.tools/onnxruntime/libonnxruntime.so.1.31.1
if [ ! -f "$lib" ]; then
  echo "==> fetching ONNX Runtime 1.31.1" >&2
  python3 -m pip download -q --disable-pip-version-check onnxruntime==1.31.1 --no-deps --only-binary=:all: \
    -d .tools/wheels >&2
  wheel=$(ls .tools/wheels/onnxruntime-1.31.1-*.whl | head -n 1)
  python3 -c '
import os, shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
os.makedirs(os.path.dirname(target), exist_ok=True)
with zipfile.ZipFile(wheel) as z, z.open("onnxruntime/capi/" + os.path.basename(target)) as src, open(target + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
os.replace(target + ".part", target)
' "$wheel" "$lib"
fi
echo "$PWD/$lib"
