#!/usr/bin/env bash
# A Kafka-protocol broker and PostgreSQL on loopback, without Docker.
#
#   scripts/local-stack.sh up [--memory]    start what is missing, print the env to use
#   scripts/local-stack.sh env              print the env of the running stack
#   scripts/local-stack.sh down             stop what `up` started
#   scripts/local-stack.sh install-tansu    install tansu (if missing) and print its path
#
# Kafka: tansu (a Kafka-compatible broker from crates.io), installed once with cargo into
# $USERS_PIPELINE_CACHE (default ~/.cache/users-pipeline) and started on a free port with its
# sqlite engine (survives broker restarts). `up --memory` uses the in-memory engine instead:
# faster, but tansu 0.6.0's memory engine returns nothing for a fetch that starts in the
# middle of a record batch, so a consumer restarted at its stored offset stalls there.
# KAFKA_BROKERS, when set, is used instead.
# PostgreSQL: DATABASE_URL when set; else 127.0.0.1:5432 when it answers (starting the
# system cluster if it is only stopped); else a throwaway cluster made with initdb in a temp dir.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${LOCAL_STACK_DIR:-$ROOT/.local-stack}
CACHE=${USERS_PIPELINE_CACHE:-$HOME/.cache/users-pipeline}
TANSU_VERSION=0.6.0

log() { echo "local-stack: $*" >&2; }
die() { log "error: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    if ! port_open "$p"; then echo "$p"; return; fi
  done
  die "no free port found"
}

wait_port() { # port seconds what
  local deadline=$(( SECONDS + $2 ))
  until port_open "$1"; do
    (( SECONDS < deadline )) || return 1
    sleep 0.2
  done
}

tansu_bin() {
  if [ -x "$CACHE/bin/tansu" ]; then echo "$CACHE/bin/tansu"; return; fi
  if command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    command -v tansu; return
  fi
  log "installing tansu $TANSU_VERSION into $CACHE (once; about 10 minutes)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
    --root "$CACHE" >&2 || die "cargo install tansu failed"
  echo "$CACHE/bin/tansu"
}

start_kafka() {
  local memory=$1 port engine bin
  bin=$(tansu_bin)
  port=$(free_port)
  if [ "$memory" = 1 ]; then
    engine="memory://tansu/"
  else
    mkdir -p "$STATE/tansu-data"
    engine="sqlite://$STATE/tansu-data/tansu.db"
  fi
  log "starting tansu on 127.0.0.1:$port ($engine)"
  # tansu reads sqlite:///abs/path relative to its working directory: run it from /.
  (cd / && exec nohup "$bin" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "$engine" >"$STATE/tansu.log" 2>&1) &
  echo $! >"$STATE/tansu.pid"
  echo "$port" >"$STATE/tansu.port"
  echo "$engine" >"$STATE/tansu.engine"
  wait_port "$port" 30 || { tail -20 "$STATE/tansu.log" >&2; die "tansu did not start"; }
  echo "KAFKA_BROKERS=127.0.0.1:$port" >>"$STATE/env"
}

pg_bin_dir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return; }
  return 1
}

start_postgres() {
  if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
    log "using PostgreSQL at 127.0.0.1:5432"
    echo "DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres" >>"$STATE/env"
    return
  fi
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && [ "$(id -u)" = 0 ]; then
    local version
    version=$(ls /etc/postgresql | head -1)
    log "starting the system PostgreSQL $version cluster"
    if pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 2>&1 \
      && wait_port 5432 20; then
      echo "DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres" >>"$STATE/env"
      return
    fi
  fi
  local bin port dir owner run=()
  bin=$(pg_bin_dir) || die "no PostgreSQL found: install postgresql or set DATABASE_URL"
  port=$(free_port)
  dir=$(mktemp -d /tmp/users-pipeline-pg.XXXXXX)
  if [ "$(id -u)" = 0 ]; then # initdb refuses to run as root
    owner=$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
    chown "$owner" "$dir"
    run=(runuser -u "$owner" --)
  fi
  log "starting a throwaway PostgreSQL on 127.0.0.1:$port in $dir"
  "${run[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust >"$STATE/postgres.log" 2>&1 \
    || { cat "$STATE/postgres.log" >&2; die "initdb failed"; }
  "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >>"$STATE/postgres.log" 2>&1 \
    || { cat "$dir/server.log" >&2; die "PostgreSQL did not start"; }
  echo "$dir" >"$STATE/postgres.dir"
  echo "${run[*]}" >"$STATE/postgres.runas"
  echo "DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres" >>"$STATE/env"
}

cmd_up() {
  local memory=0
  [ "${1:-}" = "--memory" ] && memory=1
  if [ -f "$STATE/env" ]; then
    log "already up (scripts/local-stack.sh down to stop)"
    cmd_env
    return
  fi
  mkdir -p "$STATE"
  : >"$STATE/env"
  trap 'cmd_down >/dev/null 2>&1 || true' ERR
  if [ -n "${KAFKA_BROKERS:-}" ]; then
    echo "KAFKA_BROKERS=$KAFKA_BROKERS" >>"$STATE/env"
  else
    start_kafka "$memory"
  fi
  if [ -n "${DATABASE_URL:-}" ]; then
    echo "DATABASE_URL=$DATABASE_URL" >>"$STATE/env"
  else
    start_postgres
  fi
  trap - ERR
  cmd_env
}

cmd_env() {
  [ -f "$STATE/env" ] || die "not up"
  sed 's/^/export /' "$STATE/env"
}

cmd_down() {
  if [ -f "$STATE/tansu.pid" ]; then
    kill "$(cat "$STATE/tansu.pid")" 2>/dev/null || true
  fi
  if [ -f "$STATE/postgres.dir" ]; then
    local dir run
    dir=$(cat "$STATE/postgres.dir")
    read -r -a run <"$STATE/postgres.runas" || true
    "${run[@]}" "$(pg_bin_dir)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
  fi
  rm -rf "$STATE"
  log "down"
}

# Restarts the broker on the same port (for fault-injection tests on the durable engine).
cmd_restart_kafka() {
  [ -f "$STATE/tansu.pid" ] || die "no broker started by this script"
  local port engine
  port=$(cat "$STATE/tansu.port")
  engine=$(cat "$STATE/tansu.engine")
  kill "$(cat "$STATE/tansu.pid")" 2>/dev/null || true
  sleep "${1:-1}"
  (cd / && exec nohup "$(tansu_bin)" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "$engine" >>"$STATE/tansu.log" 2>&1) &
  echo $! >"$STATE/tansu.pid"
  wait_port "$port" 30 || die "tansu did not restart"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  env) cmd_env ;;
  down) cmd_down ;;
  restart-kafka) shift; cmd_restart_kafka "$@" ;;
  install-tansu) tansu_bin ;;
  *) echo "usage: $0 up [--memory] | env | down | restart-kafka [pause-seconds] | install-tansu" >&2; exit 2 ;;
esac
