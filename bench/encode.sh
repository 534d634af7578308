#!/usr/bin/env bash
# Encoding benchmark (not a test): the SEG, SR and MIP of a `wholebody` phantom (CT 512x512x300)
# by petct-node (benches/encode.rs: the encode stage on two SUV-threshold segments and their
# lesions) and the same SEG and SR built and serialised by highdicom (bench/encode_highdicom.py)
# from the same masks and measurements, in the same run. Prints seconds and the ratio.
#
#   bench/encode.sh [ROUNDS] [PROFILE]   (default 5 rounds, wholebody; best round of each)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
profile=${2:-wholebody}
python3 -c 'import highdicom' 2>/dev/null || { echo "pip install highdicom first (scripts/test.sh does)" >&2; exit 1; }
work=$(mktemp -d /tmp/petct-encode.XXXXXX)
trap 'rm -rf "$work"' EXIT
cargo build --release --locked --quiet
target/release/petct-node phantom --out "$work/study" --profile "$profile" --seed 7 >/dev/null
node=$(PETCT_BENCH_STUDY="$work/study" PETCT_BENCH_OUT="$work/out" PETCT_BENCH_ROUNDS=$rounds \
  cargo bench --quiet --locked --bench encode 2>/dev/null | grep 'petct-node encode')
echo "$node"
seconds=$(sed -E 's/.*MIP\): ([0-9.]+) s.*/\1/' <<<"$node")
python3 bench/encode_highdicom.py "$work/out" "$rounds" "$seconds"
