#!/usr/bin/env bash
# `docker compose up`, run for real, as a new user would, and checked end to end:
#
#   scripts/compose-check.sh
#
# Starts an engine if none answers (scripts/docker-engine.sh), builds local stand-ins for base
# images no registry serves (scripts/standins.sh), then, with the real docker-compose.yml on a
# copy of this checkout (so your ./output_data and volumes are not touched), on free host ports:
#   up -d --build --wait; events flow; rows grow in userdb.users; part files appear in
#   ./output_data owned by the directory's owner; /metrics answers; `consumer status` works;
#   `restart consumer` mid-stream; `down` then `up` with the volumes kept; the producer
#   with docker-compose.tls.yml (PostgreSQL over TLS, verify-full); the producer
#   stopped, the pipeline drains, and a second consumer group rebuilding a table from the whole
#   topic finds exactly the same users: nothing lost, nothing read twice (records per batch
#   against the topic's size), dead letters and part-file rows accounted for; the monitoring
#   profile with the consumer target up and the rules loaded; `down -v` at the end.
# Prints one summary line; on failure, the failing step and every service's last log lines.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
started=$SECONDS
say() { echo "compose-check: [$(( SECONDS - started ))s] $*" >&2; }

engine=$("$ROOT/scripts/docker-engine.sh" up) || exit 1
eval "$engine"
export DOCKER
work=$(mktemp -d /tmp/compose-check.XXXXXX)
project="upcheck$$"
# Its own image tag: your users-pipeline:local stays as it is.
export PIPELINE_IMAGE=users-pipeline:compose-check
dc() { "$DOCKER" compose -p "$project" "$@"; }
cleanup() {
  dc --profile monitoring down -v --remove-orphans >/dev/null 2>&1 || true
  cd /
  rm -rf "$work"
  "$ROOT/scripts/docker-engine.sh" down
}
trap cleanup EXIT

"$ROOT/scripts/standins.sh" ensure
standins=$("$ROOT/scripts/standins.sh" list | grep -c stand-in || true)

# The checkout as git sees it (tracked and new files, nothing ignored).
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -c) | tar -x -C "$work"
cd "$work"
# Part files must belong to the output directory's owner whoever runs this: as root, give the
# directory to another uid to prove it (a checkout owned by a developer, uid 4242).
owner=$(id -u)
if [ "$owner" = 0 ]; then owner=4242; fi
mkdir -p output_data && chown "$owner" output_data

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for var in POSTGRES_PORT KAFKA_PORT CONSUMER_METRICS_PORT PROMETHEUS_PORT; do
  port=$(free_port) || { echo "compose-check: cannot pick a free port (python3?)" >&2; exit 1; }
  export "$var=$port"
done

fail() {
  say "FAILED: $*"
  if [ -s "$work/compose.err" ]; then echo "---- docker compose said ----" >&2; tail -15 "$work/compose.err" >&2; fi
  for s in kafka kafka-init postgres producer consumer prometheus; do
    echo "---- $s (last lines) ----" >&2
    dc logs --no-color --tail 25 "$s" >&2 2>/dev/null || true
  done
  exit 1
}

psql_users() {
  local out
  out=$(dc exec -T postgres psql -U postgres -d userdb -tAc "$1" 2>/dev/null) || return 1
  tr -d '[:space:]' <<<"$out"
}
rows() { local n; n=$(psql_users "SELECT count(*) FROM users" || true); echo "${n:-0}"; }
# Waits until the users table holds more than $1 rows.
rows_above() {
  local deadline=$(( SECONDS + ${2:-120} ))
  until [ "$(rows)" -gt "$1" ] 2>/dev/null; do
    (( SECONDS < deadline )) || fail "rows did not grow past $1 within ${2:-120} s (now $(rows))"
    sleep 2
  done
}

say "building the image (one build for both programs)"
t=$SECONDS
dc build >/dev/null 2>"$work/build.log" || { tail -30 "$work/build.log" >&2; fail "docker compose build"; }
build_s=$(( SECONDS - t ))
t=$SECONDS
dc up -d --wait >/dev/null 2>"$work/compose.err" || fail "docker compose up -d --wait"
up_s=$(( SECONDS - t ))
say "up and healthy in ${up_s}s (build ${build_s}s); host ports pg=$POSTGRES_PORT kafka=$KAFKA_PORT metrics=$CONSUMER_METRICS_PORT"

rows_above 0
first=$(rows)
rows_above "$first" 60
say "rows growing: $(rows)"
files=$(find output_data -maxdepth 1 -name 'part-*.csv' | wc -l)
[ "$files" -gt 0 ] || fail "no part file in ./output_data"
bad_owner=$(find output_data -maxdepth 1 -name 'part-*.csv' ! -uid "$owner" | wc -l)
[ "$bad_owner" = 0 ] || fail "$bad_owner part files not owned by uid $owner: $(ls -ln output_data | head -5)"
# (Read whole first: `curl | grep -q` fails under pipefail when grep stops reading early.)
metrics=$(curl -fsS "http://127.0.0.1:$CONSUMER_METRICS_PORT/metrics") || fail "/metrics does not answer"
grep -q '^users_pipeline_rows_written_total' <<<"$metrics" || fail "/metrics lacks the consumer's metrics"
dc exec -T consumer consumer status >"$work/status.txt" 2>&1 || { cat "$work/status.txt" >&2; fail "consumer status"; }

say "restart consumer mid-stream"
before=$(rows)
dc restart consumer >/dev/null 2>"$work/compose.err" || fail "docker compose restart consumer"
rows_above "$before" 90

say "down, then up with the volumes kept"
before=$(rows)
dc down >/dev/null 2>"$work/compose.err" || fail "docker compose down"
dc up -d --wait >/dev/null 2>"$work/compose.err" || fail "docker compose up -d --wait after down"
rows_above "$before" 120
restarts=2

say "TLS to PostgreSQL (docker-compose.tls.yml, sslmode=verify-full)"
"$ROOT/scripts/make-certs.sh" certs postgres localhost 2>/dev/null
# From here on, every compose command runs with the override.
export COMPOSE_FILE=docker-compose.yml:docker-compose.tls.yml
before=$(rows)
dc up -d --wait >/dev/null 2>"$work/compose.err" || fail "docker compose up with docker-compose.tls.yml"
rows_above "$before" 120
tls_sessions=$(psql_users "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND application_name = 'users-pipeline-consumer'") || fail "psql"
[ "${tls_sessions:-0}" -gt 0 ] || fail "the consumer's sessions are not over TLS"
restarts=3

say "stopping the producer; the pipeline drains"
dc stop producer >/dev/null 2>&1
deadline=$(( SECONDS + 120 ))
until dc exec -T consumer consumer status >"$work/status.txt" 2>&1 && grep -q '^total lag: 0$' "$work/status.txt"; do
  (( SECONDS < deadline )) || { cat "$work/status.txt" >&2; fail "the consumer did not catch up within 120 s"; }
  sleep 2
done
events=$(awk '$1 ~ /^[0-9]+$/ { sum += $3 } END { print sum + 0 }' "$work/status.txt")

say "rebuilding from the whole topic with a second group, to compare"
dc run --rm --no-deps -T consumer consumer --group compose-check-rebuild --table users_check \
  --output-dir /tmp/check --available-now >"$work/rebuild.log" 2>&1 \
  || { tail -20 "$work/rebuild.log" >&2; fail "the rebuilding consumer"; }
rows=$(rows)
lost=$(psql_users "SELECT count(*) FROM (SELECT id FROM users_check EXCEPT SELECT id FROM users) x") || fail "psql"
extra=$(psql_users "SELECT count(*) FROM (SELECT id FROM users EXCEPT SELECT id FROM users_check) x") || fail "psql"
read_main=$(psql_users "SELECT coalesce(sum(records), 0) FROM pipeline_batches WHERE consumer_group = 'users-pipeline'") || fail "psql"
duplicated=$(( read_main > events ? read_main - events : 0 ))
missing_reads=$(( events > read_main ? events - read_main : 0 ))
dead_letters=$(psql_users "SELECT count(*) FROM dead_letters") || fail "psql"
written=$(psql_users "SELECT coalesce(sum((outputs->>'users')::bigint), 0) FROM pipeline_batches WHERE consumer_group = 'users-pipeline'") || fail "psql"
signups=$(psql_users "SELECT coalesce(sum(signups), 0) FROM signups_per_minute_by_country") || fail "psql"
signup_files=$(find output_data/signups_per_minute_by_country -maxdepth 1 -name 'part-*.csv' | wc -l)
file_rows=$(find output_data -maxdepth 1 -name 'part-*.csv' -exec tail -n +2 {} \; | wc -l)
say "events=$events read=$read_main rows=$rows written=$written file_rows=$file_rows dead_letters=$dead_letters signups=$signups signup_files=$signup_files"
[ "$lost" = 0 ] && [ "$extra" = 0 ] || fail "users differ from a rebuild of the topic: lost=$lost extra=$extra"
[ "$duplicated" = 0 ] && [ "$missing_reads" = 0 ] || fail "records read $read_main times for $events events"
[ "$written" = "$file_rows" ] || fail "part files hold $file_rows rows, batches wrote $written"
[ "$dead_letters" = 0 ] || fail "$dead_letters dead letters from the synthetic producer"
[ "$signups" -gt 0 ] && [ "$signups" -le "$events" ] && [ "$signup_files" -gt 0 ] \
  || fail "the signups_per_minute_by_country output: $signups sign-ups counted for $events events, $signup_files part files"

say "monitoring profile"
dc --profile monitoring up -d --wait prometheus >/dev/null 2>"$work/compose.err" || fail "--profile monitoring up"
deadline=$(( SECONDS + 90 ))
until targets=$(curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/api/v1/targets") && grep -q '"health":"up"' <<<"$targets"; do
  (( SECONDS < deadline )) || fail "Prometheus does not see the consumer target up"
  sleep 2
done
rules=$(curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/api/v1/rules") || fail "Prometheus does not answer /api/v1/rules"
rules=$(grep -o '"type":"\(alerting\|recording\)"' <<<"$rules" | wc -l)
[ "$rules" -gt 0 ] || fail "Prometheus loaded no rules"

echo "compose-check: events=$events rows=$rows signups=$signups lost=$lost duplicated=$duplicated dead_letters=$dead_letters file_rows=$file_rows restarts=$restarts tls_sessions=$tls_sessions rules=$rules stand_ins=$standins build_s=$build_s up_s=$up_s total_s=$(( SECONDS - started ))"
