#!/usr/bin/env bash
# Runs every test of the workspace against a real broker and a real PostgreSQL.
# Starts the local stack (scripts/local-stack.sh) unless KAFKA_BROKERS and DATABASE_URL are
# both given, and stops what it started, even when a test fails.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p consumer).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [ -z "${KAFKA_BROKERS:-}" ] || [ -z "${DATABASE_URL:-}" ]; then
  export LOCAL_STACK_DIR=${LOCAL_STACK_DIR:-$ROOT/.local-stack/test-$$}
  trap 'scripts/local-stack.sh down' EXIT
  eval "$(scripts/local-stack.sh up)"
fi
echo "test.sh: KAFKA_BROKERS=$KAFKA_BROKERS DATABASE_URL=$DATABASE_URL" >&2

# The operations tests start a real Prometheus (Debian package `prometheus`).
if ! command -v prometheus >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "test.sh: installing prometheus (Debian package)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
    # The package starts a system service we do not want listening on :9090.
    (systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || pkill -x prometheus) >/dev/null 2>&1 || true
  else
    echo "test.sh: the operations tests need the prometheus binary: apt-get install prometheus" >&2
  fi
fi

# Integration tests run the real binaries: build them first so timing is about the test.
cargo build --workspace --bins
# The fault suite's summary lines (cargo test hides the output of passing tests).
FAULT_SUITE_SUMMARY=$(mktemp)
export FAULT_SUITE_SUMMARY
status=0
cargo test --workspace --all-targets --no-fail-fast "$@" || status=$?
if [ -s "$FAULT_SUITE_SUMMARY" ]; then
  echo "== fault suite =="
  cat "$FAULT_SUITE_SUMMARY"
fi
rm -f "$FAULT_SUITE_SUMMARY"
exit "$status"
