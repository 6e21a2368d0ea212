#!/usr/bin/env bash
# A flame graph of the consumer (issue 14): publishes events with the producer binary,
# runs `consumer --available-now` over them under `perf record`, and renders the
# stacks with inferno as an SVG. Starts a broker (tansu, memory engine) and uses the
# local PostgreSQL unless KAFKA_BROKERS and DATABASE_URL are both given.
#
#   scripts/profile.sh images/flamegraph-consumer.svg [events]
#   PROFILE_BIN_DIR=/some/release scripts/profile.sh out.svg   # binaries built elsewhere
#
# Needs `perf` (Debian package linux-perf, installed when missing) and inferno
# (`cargo install inferno`, into the cache, once). The release build keeps line
# tables (CARGO_PROFILE_RELEASE_DEBUG) so that perf can unwind and name frames; it
# is the build scripts/bench.sh measures.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CACHE=${USERS_PIPELINE_CACHE:-$HOME/.cache/users-pipeline}
out=${1:?usage: scripts/profile.sh OUT.svg [events]}
events=${2:-200000}
die() { echo "profile.sh: $*" >&2; exit 1; }

if ! command -v perf >/dev/null; then
  [ "$(id -u)" = 0 ] || die "perf is missing: apt-get install linux-perf"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null \
    || die "apt-get install linux-perf failed"
fi
if [ ! -x "$CACHE/bin/inferno-flamegraph" ]; then
  cargo install inferno --version 0.12.8 --locked --root "$CACHE" >&2 || die "cargo install inferno failed"
fi

if [ -z "${KAFKA_BROKERS:-}" ] || [ -z "${DATABASE_URL:-}" ]; then
  export LOCAL_STACK_DIR=${LOCAL_STACK_DIR:-$ROOT/.local-stack/profile-$$}
  trap 'scripts/local-stack.sh down' EXIT
  eval "$(scripts/local-stack.sh up --memory)"
fi

if [ -n "${PROFILE_BIN_DIR:-}" ]; then
  bin=$PROFILE_BIN_DIR
else
  export CARGO_PROFILE_RELEASE_DEBUG=${CARGO_PROFILE_RELEASE_DEBUG:-line-tables-only}
  cargo build --release --bins
  bin=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi

run=$(date +%s)-$$
topic=profile_$run db=profile_${run//-/_}
work=$(mktemp -d)
psql_url=${DATABASE_URL%/*}/postgres
psql "$psql_url" -qc "CREATE DATABASE $db" >/dev/null
db_url=${DATABASE_URL%/*}/$db
cleanup_db() { psql "$psql_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true; rm -rf "$work"; }
trap 'cleanup_db; [ -n "${LOCAL_STACK_DIR:-}" ] && scripts/local-stack.sh down' EXIT

"$bin/producer" --brokers "$KAFKA_BROKERS" --topic "$topic" --partitions 3 --count "$events" \
  --seed 42 --log-format json >/dev/null 2>&1 || die "the producer failed"

echo "profile.sh: consumer --available-now over $events events, under perf" >&2
perf record -F 997 -g --call-graph dwarf,32768 -o "$work/perf.data" -- \
  "$bin/consumer" --brokers "$KAFKA_BROKERS" --topic "$topic" --group "$topic" \
  --database-url "$db_url" --output-dir "$work/out" --available-now --log-format json \
  >"$work/consumer.log" 2>&1 || { tail -5 "$work/consumer.log" >&2; die "the consumer failed"; }
perf script -i "$work/perf.data" 2>/dev/null \
  | "$CACHE/bin/inferno-collapse-perf" >"$work/stacks.folded"
mkdir -p "$(dirname "$out")"
# Frames under 0.2% of the samples are left out: the picture stays readable (and
# under a megabyte); the folded stacks in bench-results/ keep everything.
"$CACHE/bin/inferno-flamegraph" --title "${PROFILE_TITLE:-consumer --available-now, $events events}" \
  --width 1400 --minwidth 0.2 --deterministic <"$work/stacks.folded" >"$out"
mkdir -p bench-results
folded=bench-results/$(basename "${out%.svg}").folded
cp "$work/stacks.folded" "$folded"
echo "profile.sh: wrote $out (all stacks folded in $folded)" >&2
