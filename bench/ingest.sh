#!/usr/bin/env bash
# Ingest benchmark (not a test): the same 300 CT slices of 512x512 from `petct-node phantom`,
# sent by DCMTK's storescu to petct-node (SQLite and PostgreSQL; every instance fsynced and its
# row committed before the response), to DCMTK's storescp and to Orthanc, in one run. Every
# receiver runs inside a private network namespace, on loopback. storescu runs with TCP_NODELAY=1
# so that no receiver suffers the 40 ms delayed-ACK stall; one extra row shows petct-node with a
# Nagle-enabled storescu (what its TCP_QUICKACK re-arming is for). The peers get TCP_NODELAY=1
# too: DCMTK (storescp, and Orthanc through DCMTK) otherwise stalls on its own responses.
#
#   bench/ingest.sh [ROUNDS]     (default 3; the best round of each receiver is reported)
#   PETCT_BENCH_CT_DIR=DIR bench/ingest.sh   sends DIR/*.dcm instead of a phantom's CT
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}

if [ -z "${PETCT_BENCH_INNER:-}" ]; then
  for t in storescu storescp Orthanc unshare bc psql; do
    command -v "$t" >/dev/null || { echo "missing $t: run scripts/test.sh once (it installs the peers)" >&2; exit 1; }
  done
  cargo build --release --locked --quiet
  work=$(mktemp -d /tmp/petct-bench.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  export PETCT_BENCH_INNER=1
  if [ -n "${PETCT_BENCH_CT_DIR:-}" ]; then
    mkdir -p "$work/study" && ln -s "$(realpath "$PETCT_BENCH_CT_DIR")" "$work/study/CT"
  else
    target/release/petct-node phantom --out "$work/study" --profile wholebody --seed 7 >/dev/null
  fi
  unshare -n -- bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$rounds" "$work"
  exit
fi

work=$2
ct=("$work"/study/CT/*.dcm)
n=${#ct[@]}
bin=target/release/petct-node
bytes=$(du -cb "${ct[@]}" | tail -n 1 | cut -f1)
echo "corpus: $n CT instances, $((bytes / n / 1024)) KiB each, $rounds rounds per receiver (best shown)"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() { for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# send AE PORT [extra env]: prints seconds for one storescu run of the whole corpus
send() {
  local ae=$1 port=$2 nodelay=$3 t0 t1
  t0=$(date +%s.%N)
  if [ "$nodelay" = 1 ]; then
    TCP_NODELAY=1 storescu -aet STORESCU -aec "$ae" 127.0.0.1 "$port" "${ct[@]}" >/dev/null
  else
    storescu -aet STORESCU -aec "$ae" 127.0.0.1 "$port" "${ct[@]}" >/dev/null
  fi
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

declare -A best
record() { # name seconds
  local prev=${best[$1]:-}
  if [ -z "$prev" ] || (( $(echo "$2 < $prev" | bc -l) )); then best[$1]=$2; fi
}

node_round() { # name db-url nodelay
  local dir port=11201
  dir=$(mktemp -d "$work/node.XXXX")
  cat > "$dir/node.toml" <<TOML
[node]
bind = "127.0.0.1:$port"
[[peers]]
ae_title = "STORESCU"
[storage]
dir = "$dir/store"
min_free_mb = 100
[database]
url = "$2"
TOML
  RUST_LOG=warn "$bin" serve --config "$dir/node.toml" 2>"$dir/log" &
  local pid=$!
  pids+=("$pid")
  wait_port $port
  record "$1" "$(send PETCT_NODE $port "$3")"
  local stored
  stored=$(find "$dir/store/dicom" -name '*.dcm' | wc -l)
  [ "$stored" = "$n" ] || { echo "$1: stored $stored of $n" >&2; exit 1; }
  kill "$pid"; wait "$pid" || true
  rm -rf "$dir"
}

pg_db=""
if pg_isready -q -h /var/run/postgresql 2>/dev/null; then
  pg_db=petct_bench_$$
  psql -q -h /var/run/postgresql -U postgres -c "CREATE DATABASE $pg_db" postgres
fi

for r in $(seq "$rounds"); do
  node_round "petct-node (SQLite)" "" 1
  if [ -n "$pg_db" ]; then
    psql -q -h /var/run/postgresql -U postgres -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" -c "CREATE DATABASE $pg_db" postgres
    node_round "petct-node (PostgreSQL)" "postgres://postgres@localhost/$pg_db?host=/var/run/postgresql" 1
  fi
  node_round "petct-node (SQLite), storescu without TCP_NODELAY" "" 0

  d=$(mktemp -d "$work/scp.XXXX")
  TCP_NODELAY=1 storescp -aet STORESCP -od "$d" 11202 2>/dev/null &
  pid=$!; pids+=("$pid"); wait_port 11202
  record "DCMTK storescp (no fsync)" "$(send STORESCP 11202 1)"
  kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$d"

  # The floor set by storescu itself and the transfer: a receiver that stores nothing.
  TCP_NODELAY=1 storescp -aet STORESCP --ignore 11205 2>/dev/null &
  pid=$!; pids+=("$pid"); wait_port 11205
  record "storescp --ignore (transfer only, stores nothing)" "$(send STORESCP 11205 1)"
  kill "$pid"; wait "$pid" 2>/dev/null || true

  d=$(mktemp -d "$work/orthanc.XXXX")
  cat > "$d/orthanc.json" <<JSON
{ "Name": "bench", "StorageDirectory": "$d/storage", "IndexDirectory": "$d/index", "DicomAet": "ORTHANC",
  "DicomPort": 11203, "HttpPort": 11204, "RemoteAccessAllowed": false, "AuthenticationEnabled": false,
  "DicomCheckCalledAet": false, "Plugins": [] }
JSON
  TCP_NODELAY=1 Orthanc "$d/orthanc.json" >/dev/null 2>&1 &
  pid=$!; pids+=("$pid"); wait_port 11203
  record "Orthanc" "$(send ORTHANC 11203 1)"
  kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$d"
done
# What durability costs on this disk: a 512 KiB file written and fdatasynced, then renamed and its
# directory fsynced (the two steps the node must take in order for every instance).
python3 - "$work" <<'PY'
import os, sys, time
d = os.path.join(sys.argv[1], "fsync"); os.makedirs(d)
buf = os.urandom(512 * 1024); n = 100
t0 = time.perf_counter()
for i in range(n):
    fd = os.open(f"{d}/{i}.tmp", os.O_WRONLY | os.O_CREAT); os.write(fd, buf); os.fdatasync(fd); os.close(fd)
t1 = time.perf_counter()
for i in range(n):
    os.rename(f"{d}/{i}.tmp", f"{d}/{i}"); fd = os.open(d, os.O_RDONLY); os.fsync(fd); os.close(fd)
t2 = time.perf_counter()
print(f"disk: write+fdatasync 512 KiB {1e3*(t1-t0)/n:.2f} ms, rename+directory fsync {1e3*(t2-t1)/n:.2f} ms")
PY
[ -n "$pg_db" ] && psql -q -h /var/run/postgresql -U postgres -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" postgres

ref=${best["DCMTK storescp (no fsync)"]}
printf '\n%-52s %10s %14s %22s\n' "receiver" "seconds" "instances/s" "vs storescp (higher=faster)"
for name in "petct-node (SQLite)" "petct-node (PostgreSQL)" "DCMTK storescp (no fsync)" "Orthanc" "petct-node (SQLite), storescu without TCP_NODELAY" "storescp --ignore (transfer only, stores nothing)"; do
  s=${best[$name]:-}
  [ -n "$s" ] || continue
  printf '%-52s %10.3f %14.1f %22.2f\n' "$name" "$s" "$(echo "$n / $s" | bc -l)" "$(echo "$ref / $s" | bc -l)"
done
