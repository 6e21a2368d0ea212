#!/usr/bin/env bash
# The whole pipeline on this machine, without Docker, in one command:
#
#   scripts/run-local.sh [--rate EVENTS_PER_SECOND]     (default 20, like docker compose)
#
# Starts the local stack if it is not up (scripts/local-stack.sh: tansu and PostgreSQL on
# loopback), builds both programs (release), then runs the producer and the consumer together,
# their log lines prefixed with their names. Ctrl-C stops both cleanly (the consumer commits
# what it holds); the data stays: rows in userdb, part files in ./output_data, the broker and
# its log still up for the next run. `scripts/local-stack.sh down` stops the broker.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
rate=20
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate=${2:?--rate needs a number}; shift ;;
    *) echo "usage: $0 [--rate EVENTS_PER_SECOND]" >&2; exit 2 ;;
  esac
  shift
done

say() { echo "run-local: $*" >&2; }

# A stack of its own (not the tests'), kept between runs.
export LOCAL_STACK_DIR=${LOCAL_STACK_DIR:-$ROOT/.local-stack/run}
stack=$(scripts/local-stack.sh up) || exit 1
eval "$stack"
database_url="${DATABASE_URL%/*}/userdb"

say "building (release; the first build takes about 15 minutes on 2 cores)"
cargo build --release --locked --bin producer --bin consumer
target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
bin="$target_dir/release"

prefix() { # name: prefix each line, keep going after the program ends
  while IFS= read -r line; do printf '%-9s| %s\n' "$1" "$line"; done
}

pids=()
stop() {
  trap - INT TERM
  say "stopping the producer and the consumer"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  say "stopped. The data stays: psql \"$database_url\" -c 'SELECT count(*) FROM users';"
  say "part files in $ROOT/output_data. Stop the broker with: LOCAL_STACK_DIR=$LOCAL_STACK_DIR scripts/local-stack.sh down"
  exit 0
}
trap stop INT TERM

mkdir -p output_data
# The topic first (the producer creates it when missing), so the consumer finds it.
"$bin/producer" --brokers "$KAFKA_BROKERS" --count 0 --progress log >/dev/null 2>&1 \
  || say "the producer could not create the topic; the consumer will say why"
# The example pipeline, as in docker compose: users and signups_per_minute_by_country.
"$bin/consumer" --brokers "$KAFKA_BROKERS" --database-url "$database_url" \
  --pipeline crates/consumer/pipelines/users_and_signups.toml \
  --output-dir output_data --metrics-addr 127.0.0.1:9464 > >(prefix consumer) 2>&1 &
pids+=($!)
"$bin/producer" --brokers "$KAFKA_BROKERS" --rate "$rate" --duration 0 --progress log \
  > >(prefix producer) 2>&1 &
pids+=($!)

say "running: producer at $rate events/s, consumer writing to $database_url and ./output_data"
say "look: psql \"$database_url\" -c 'SELECT count(*) FROM users'; ls output_data;"
say "      curl -s localhost:9464/metrics | grep users_pipeline_rows; Ctrl-C to stop"
# Ends when both programs end by themselves (or on Ctrl-C, through `stop`).
for pid in "${pids[@]}"; do wait "$pid" || true; done
say "both programs ended"
