#!/usr/bin/env bash
# Runs every test of the workspace against a real broker and a real PostgreSQL.
# Starts the local stack (scripts/local-stack.sh) unless KAFKA_BROKERS and DATABASE_URL are
# both given, and stops what it started, even when a test fails.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p consumer). Without them, the
# compose check (scripts/compose-check.sh) runs last; SKIP_COMPOSE_CHECK=1 skips it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [ -z "${KAFKA_BROKERS:-}" ] || [ -z "${DATABASE_URL:-}" ]; then
  export LOCAL_STACK_DIR=${LOCAL_STACK_DIR:-$ROOT/.local-stack/test-$$}
  trap 'scripts/local-stack.sh down' EXIT
  stack=$(scripts/local-stack.sh up) || exit 1
  eval "$stack"
fi
echo "test.sh: KAFKA_BROKERS=$KAFKA_BROKERS DATABASE_URL=$DATABASE_URL" >&2

# The operations tests start a real Prometheus (Debian package `prometheus`), and the secured
# tests a TLS proxy (Debian package `stunnel4`). Installed without starting their services
# (policy-rc.d says no), so nothing is listening that this script would have to stop.
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing+=(stunnel4)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "test.sh: installing ${missing[*]} (Debian packages, services not started)" >&2
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
      remove_policy=1
    fi
    rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
      || rc=$?
    # Never leave it behind: it would stop every later package from starting its service.
    if [ "${remove_policy:-0}" = 1 ]; then rm -f "$policy"; fi
    [ "$rc" = 0 ] || { echo "test.sh: apt-get install ${missing[*]} failed" >&2; exit "$rc"; }
  else
    echo "test.sh: some tests need ${missing[*]}: apt-get install ${missing[*]}" >&2
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

# `docker compose up`, for real (a filtered run, with arguments, skips it).
if [ $# -eq 0 ] && [ -z "${SKIP_COMPOSE_CHECK:-}" ]; then
  echo "== compose check =="
  if [ "$(id -u)" != 0 ] && ! docker info >/dev/null 2>&1; then
    # Installing and starting an engine needs root; say so rather than fail every run.
    echo "test.sh: compose check NOT RUN: no container engine answers and installing one needs root"
  else
    scripts/compose-check.sh || status=$?
  fi
fi
exit "$status"
