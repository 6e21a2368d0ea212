#!/usr/bin/env bash
# The benchmark (issues 6 and 14): builds the release binaries, starts a broker and
# PostgreSQL unless KAFKA_BROKERS and DATABASE_URL are both given, runs `bench` (one run:
# limits, producer, consumer, the Python baseline, larger batches, latency, start-up),
# then renders images/throughput.png from the figures. Extra arguments go to `bench`
# (see `bench --help`), e.g. --events 50000.
#
#   scripts/bench.sh                 # tansu (sqlite engine) + local PostgreSQL
#   scripts/bench.sh --memory        # tansu's memory engine (faster; see ARCHITECTURE.md)
#
# Output: the table on stdout and in bench-results/bench.md, figures in
# bench-results/bench.json, the picture in images/throughput.png.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CACHE=${USERS_PIPELINE_CACHE:-$HOME/.cache/users-pipeline}

stack_args=()
if [ "${1:-}" = "--memory" ]; then
  stack_args=(--memory)
  shift
fi
if [ -z "${KAFKA_BROKERS:-}" ] || [ -z "${DATABASE_URL:-}" ]; then
  export LOCAL_STACK_DIR=${LOCAL_STACK_DIR:-$ROOT/.local-stack/bench-$$}
  trap 'scripts/local-stack.sh down' EXIT
  eval "$(scripts/local-stack.sh up "${stack_args[@]}")"
  engine=$(cat "$LOCAL_STACK_DIR/tansu.engine" 2>/dev/null || echo "?")
  export BENCH_BROKER_LABEL=${BENCH_BROKER_LABEL:-"tansu 0.6.0, ${engine%%:*} engine, same machine"}
  # Its CPU is shown beside the consumer's.
  export BENCH_BROKER_PID=${BENCH_BROKER_PID:-$(cat "$LOCAL_STACK_DIR/tansu.pid")}
fi

# The Python baseline's libraries and the picture's, in a virtualenv of their own
# (PyPI), made once.
venv=$CACHE/venv-bench
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib, confluent_kafka, psycopg2' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'matplotlib==3.9.2' 'confluent-kafka==2.16.1' 'psycopg2-binary==2.9.13'
fi
export BENCH_PYTHON=${BENCH_PYTHON:-$venv/bin/python}

# Line tables kept (no change to the code generated): the build scripts/profile.sh
# profiles is the one measured here.
export CARGO_PROFILE_RELEASE_DEBUG=${CARGO_PROFILE_RELEASE_DEBUG:-line-tables-only}
cargo build --release --bins
bin_dir=${CARGO_TARGET_DIR:-$ROOT/target}/release
mkdir -p bench-results
"$bin_dir/bench" --bin-dir "$bin_dir" --json bench-results/bench.json "$@" | tee bench-results/bench.md

"$venv/bin/python" scripts/plot_throughput.py bench-results/bench.json images/throughput.png
echo "bench.sh: wrote images/throughput.png" >&2
