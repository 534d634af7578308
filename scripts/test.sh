#!/usr/bin/env bash
# The project's test command (README: "run every test"). On a fresh machine it installs the real
# peers the tests talk to (DCMTK, Orthanc, dicom3tools, pydicom), makes sure PostgreSQL answers
# (starting a throwaway cluster if none does), then runs every test inside a private network
# namespace so that servers which bind all interfaces (Orthanc, storescp) stay on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

# --- system packages -------------------------------------------------------------------------
need=()
command -v storescu >/dev/null || need+=(dcmtk)
command -v Orthanc >/dev/null || need+=(orthanc)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v unshare >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian's orthanc package tries to start its service; there is no init system here.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- Python readers used by tests ------------------------------------------------------------
# onnx builds the tiny test models of tests/infer.rs (tests/py/make_test_models.py); Pillow
# writes the JPEG with restart markers of tests/transfer_syntaxes.rs; scipy is the reference of
# the node's ct_blob channel (training/blob_channel.py, tests/pipeline.rs).
if ! python3 -c 'import pydicom, numpy, scipy, SimpleITK, highdicom, onnx, PIL' 2>/dev/null; then
  log "installing pydicom, numpy, scipy, SimpleITK, highdicom, onnx and Pillow"
  python3 -m pip install -q --disable-pip-version-check pydicom numpy scipy SimpleITK highdicom onnx pillow
fi

# --- ONNX Runtime, the library the node loads for learned models (tests/infer.rs, tests/jobs.rs)
ORT_DYLIB_PATH=$(scripts/onnxruntime.sh)
export ORT_DYLIB_PATH

# --- OHIF's SUV reference implementation (npm), fetched before the network goes away ---------
if [ ! -d tests/js/node_modules/@cornerstonejs/calculate-suv ]; then
  log "installing @cornerstonejs/calculate-suv"
  (cd tests/js && npm ci --no-audit --no-fund --silent)
fi

# --- PostgreSQL ------------------------------------------------------------------------------
# Tests reach PostgreSQL through its Unix socket: inside the network namespace TCP to the host's
# 127.0.0.1 is not reachable. `{db}` is replaced by a fresh database name per test.
pg_cleanup() { :; }
# PETCT_TEST_OWN_POSTGRES=1 forces the throwaway cluster (to test this path).
if [ -z "${PETCT_TEST_POSTGRES_URL:-}" ]; then
  if [ -z "${PETCT_TEST_OWN_POSTGRES:-}" ] && pg_isready -q -h /var/run/postgresql -p 5432 2>/dev/null && pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    export PETCT_TEST_POSTGRES_URL="postgres://postgres@localhost/{db}?host=/var/run/postgresql&port=5432"
  else
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    pgdir=$(mktemp -d /tmp/petct-pg.XXXXXX)
    chown postgres "$pgdir"
    log "no PostgreSQL on 127.0.0.1:5432: starting a throwaway cluster in $pgdir"
    su postgres -s /bin/sh -c "$pgbin/initdb -D $pgdir/data -A trust -U postgres" >/dev/null
    su postgres -s /bin/sh -c "$pgbin/pg_ctl -w -D $pgdir/data -l $pgdir/log -o \"-k $pgdir -p 55432 -c listen_addresses=127.0.0.1\" start" >/dev/null
    pg_cleanup() { su postgres -s /bin/sh -c "$pgbin/pg_ctl -D $pgdir/data -m fast stop" >/dev/null 2>&1 || true; rm -rf "$pgdir"; }
    export PETCT_TEST_POSTGRES_URL="postgres://postgres@localhost/{db}?host=$pgdir&port=55432"
  fi
fi
trap pg_cleanup EXIT

# --- build, then test offline in a private network namespace ---------------------------------
log "building"
cargo test --locked --no-run --quiet
log "running tests"
unshare -n -- sh -c 'ip link set lo up && exec cargo test --locked --offline "$@"' sh "$@"
