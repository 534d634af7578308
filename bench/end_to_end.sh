#!/usr/bin/env bash
# End-to-end benchmark (not a test): a `wholebody` phantom (CT 512x512x300, PET 200x200x300) is
# sent by DCMTK's storescu to the node (CT first, then PET, as scanners do), the node's worker
# runs the classical pipeline and delivers the SEG, SR and MIP to Orthanc. Printed: seconds
# from the last instance acknowledged to the three results stored in Orthanc (polled through its
# REST API), with the job's own processing time. Everything runs in a private network namespace.
#
#   bench/end_to_end.sh [ROUNDS] [BACKEND]   (default 3 rounds, sqlite; BACKEND=postgres uses
#                                             the local server's socket)
# The CT completes after `series.ct_quiet_period_s` without new instances (2 s here, 30 s by
# default); with the CT sent first that period runs while the PET arrives.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
backend=${2:-sqlite}

if [ -z "${PETCT_BENCH_INNER:-}" ]; then
  for t in storescu Orthanc unshare curl python3; do
    command -v "$t" >/dev/null || { echo "missing $t: run scripts/test.sh once (it installs the peers)" >&2; exit 1; }
  done
  cargo build --release --locked --quiet
  work=$(mktemp -d /tmp/petct-e2e.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  export PETCT_BENCH_INNER=1
  target/release/petct-node phantom --out "$work/study" --profile wholebody --seed 7 >/dev/null
  unshare -n -- bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$rounds" "$backend" "$work"
  exit
fi

work=$3
bin=target/release/petct-node
ct=("$work"/study/CT/*.dcm)
pt=("$work"/study/PT/*.dcm)
inputs=$((${#ct[@]} + ${#pt[@]}))
echo "study: ${#ct[@]} CT + ${#pt[@]} PET instances; $rounds rounds; $backend; $(nproc) cores"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 600); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
now() { date +%s.%N; }

for round in $(seq "$rounds"); do
  dir=$(mktemp -d "$work/round.XXXX")
  http=18042; dicom=14242; port=11301
  cat > "$dir/orthanc.json" <<JSON
{"Name": "bench", "StorageDirectory": "$dir/orthanc/storage", "IndexDirectory": "$dir/orthanc/index",
 "DicomAet": "ORTHANC", "DicomPort": $dicom, "HttpPort": $http, "RemoteAccessAllowed": false,
 "AuthenticationEnabled": false, "Plugins": []}
JSON
  TCP_NODELAY=1 Orthanc "$dir/orthanc.json" >"$dir/orthanc.log" 2>&1 &
  pids+=($!)
  if [ "$backend" = postgres ]; then
    db="petct_e2e_$$_$round"
    psql -h /var/run/postgresql -U postgres -qc "CREATE DATABASE $db" >/dev/null
    url="postgres://postgres@localhost/$db?host=/var/run/postgresql&port=5432"
  else
    url=""
  fi
  cat > "$dir/node.toml" <<TOML
[node]
bind = "127.0.0.1:$port"
[[peers]]
ae_title = "STORESCU"
[storage]
dir = "$dir/store"
min_free_mb = 100
[database]
url = "$url"
[series]
ct_quiet_period_s = 2
[worker]
poll_interval_s = 0.1
[[destinations]]
name = "orthanc"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = $dicom
TOML
  RUST_LOG=warn "$bin" serve --config "$dir/node.toml" 2>"$dir/node.log" &
  pids+=($!)
  wait_port "$port"; wait_port "$http"

  TCP_NODELAY=1 storescu -aet STORESCU -aec PETCT_NODE 127.0.0.1 "$port" "${ct[@]}" >/dev/null
  TCP_NODELAY=1 storescu -aet STORESCU -aec PETCT_NODE 127.0.0.1 "$port" "${pt[@]}" >/dev/null
  t_last=$(now)
  while :; do
    count=$(curl -sf "http://127.0.0.1:$http/statistics" | python3 -c 'import json,sys; print(json.load(sys.stdin)["CountInstances"])')
    [ "$count" -ge 3 ] && break
    sleep 0.05
  done
  t_done=$(now)
  jobs=$("$bin" jobs list --json --config "$dir/node.toml")
  python3 - "$t_last" "$t_done" "$jobs" <<'PY'
import json, sys
t_last, t_done, jobs = float(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])["jobs"]
job = jobs[-1]
queued = job["created_at_ms"] / 1000
print(f"last instance -> results in Orthanc: {t_done - t_last:6.2f} s "
      f"(job queued {queued - t_last:+.2f} s after the last instance, processing {job['process_ms'] / 1000:.2f} s, "
      f"state {job['state']}, {len(job['deliveries'])} destination(s) {[d['state'] for d in job['deliveries']]})")
PY
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  if [ "$backend" = postgres ]; then psql -h /var/run/postgresql -U postgres -qc "DROP DATABASE $db" >/dev/null; fi
done
