#!/usr/bin/env bash
# Local stand-ins for the base images of the compose stack and the Dockerfile, built only
# where no registry answers (some CI and sandboxed machines). Where a registry answers,
# nothing is built: the real images are pulled and used.
#
#   scripts/standins.sh ensure [IMAGE...]   for each base image: present, or pulled, or its
#                                          stand-in built
#   scripts/standins.sh list       the images and whether each is real or a stand-in
#
# Each stand-in is tagged as the image it replaces and labelled users-pipeline.stand-in=true,
# with what it really is in users-pipeline.stand-in.description:
#   debian:bookworm-slim      a debootstrap (minbase) root file system of Debian bookworm
#   rust:1.95-slim-bookworm   that, plus this machine's Rust toolchain
#   postgres:16.6             that, plus Debian's PostgreSQL 15, behind an entrypoint that honours
#                             POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB and PGDATA like the real one
#   apache/kafka:3.9.1        that, plus tansu (a Kafka-protocol broker) behind the KAFKA_* variables
#                             and /opt/kafka/bin/kafka-topics.sh; like the real image, its data
#                             goes to KAFKA_LOG_DIRS, else to /tmp inside the container
#   prom/prometheus:v2.55.1   that, plus Debian's prometheus
# Every stand-in trusts this machine's CA bundle: HTTPS from inside a build may go through
# a proxy whose certificate only that bundle holds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/scripts/standins"
CACHE=${USERS_PIPELINE_CACHE:-$HOME/.cache/users-pipeline}
DOCKER=${DOCKER:-docker}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

IMAGES=(debian:bookworm-slim rust:1.95-slim-bookworm postgres:16.6 apache/kafka:3.9.1 prom/prometheus:v2.55.1)

log() { echo "standins: $*" >&2; }
die() { log "error: $*"; exit 1; }

present() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

is_standin() {
  [ "$("$DOCKER" image inspect -f '{{index .Config.Labels "users-pipeline.stand-in"}}' "$1" 2>/dev/null)" = true ]
}

# Copies the machine's CA bundle into a build context.
with_ca() { install -m 644 "$CA_BUNDLE" "$1/machine-ca-bundle.crt"; }

build() { # image context description
  log "building the stand-in for $1"
  "$DOCKER" build -q -t "$1" --label users-pipeline.stand-in=true \
    --label "users-pipeline.stand-in.description=$3" "$2" >/dev/null
}

standin_debian() {
  command -v debootstrap >/dev/null || {
    [ "$(id -u)" = 0 ] || die "debootstrap is missing (apt-get install debootstrap)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  }
  local rootfs; rootfs=$(mktemp -d)
  log "debootstrap $SUITE from $MIRROR (a few minutes)"
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; die "debootstrap failed"; }
  mkdir -p "$rootfs/usr/local/share/ca-certificates"
  install -m 644 "$CA_BUNDLE" "$rootfs/usr/local/share/ca-certificates/machine-ca-bundle.crt"
  mkdir -p "$rootfs/etc/ssl/certs"
  install -m 644 "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  # Like the slim image: no package lists, no caches.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  tar -C "$rootfs" -c . | "$DOCKER" import \
    -c 'CMD ["bash"]' \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'LABEL users-pipeline.stand-in=true' \
    -c "LABEL users-pipeline.stand-in.description=\"debootstrap minbase of Debian $SUITE\"" \
    - debian:bookworm-slim >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
}

standin_rust() {
  local toolchain ctx
  toolchain=$(rustc --print sysroot 2>/dev/null) || die "no Rust toolchain on this machine to copy"
  ctx=$(mktemp -d)
  mkdir -p "$ctx/toolchain"
  # The toolchain without its documentation.
  tar -C "$toolchain" --exclude=./share/doc -c . | tar -C "$ctx/toolchain" -x
  cp "$HERE/rust/Dockerfile" "$ctx/"
  with_ca "$ctx"
  build rust:1.95-slim-bookworm "$ctx" "debian:bookworm-slim stand-in plus $(rustc --version)"
  rm -rf "$ctx"
}

tansu_bin() {
  # local-stack.sh finds it, or installs it (once, with cargo), and prints its path.
  local tmp bin
  tmp=$(mktemp -d)
  bin=$(LOCAL_STACK_DIR=$tmp "$ROOT/scripts/local-stack.sh" install-tansu) || { rm -rf "$tmp"; die "no tansu"; }
  rm -rf "$tmp"
  echo "$bin"
}

standin_from_dir() { # image dir description [extra file]
  local ctx; ctx=$(mktemp -d)
  cp -r "$HERE/$2/." "$ctx/"
  with_ca "$ctx"
  if [ -n "${4:-}" ]; then cp "$4" "$ctx/"; fi
  build "$1" "$ctx" "$3"
  rm -rf "$ctx"
}

# Whether a failed pull means that no registry can be reached at all (then a stand-in is
# the only way), as opposed to a registry that answered no (a rate limit, a login): that
# must fail loudly, never turn into a stand-in in silence.
unreachable() {
  grep -qiE 'no such host|dial tcp|connection refused|network is unreachable|i/o timeout|TLS handshake timeout|Client.Timeout' <<<"$1"
}

ensure_one() {
  local image=$1 answer
  if present "$image"; then return; fi
  if answer=$("$DOCKER" pull -q "$image" 2>&1); then log "pulled $image"; return; fi
  if ! unreachable "$answer" && [ -z "${STANDINS_ALWAYS:-}" ]; then
    die "pulling $image failed, and not for want of a network: $answer (STANDINS_ALWAYS=1 builds a stand-in anyway)"
  fi
  log "$image cannot be pulled here (no registry answers): building a local stand-in"
  case "$image" in
    debian:*) standin_debian ;;
    rust:*) standin_rust ;;
    postgres:*) standin_from_dir "$image" postgres "Debian bookworm's PostgreSQL 15 behind the postgres image's variables" ;;
    apache/kafka:*) standin_from_dir "$image" kafka "tansu (Kafka-protocol broker) behind the apache/kafka image's variables" "$(tansu_bin)" ;;
    prom/prometheus:*) standin_from_dir "$image" prometheus "Debian bookworm's prometheus" ;;
  esac
}

case "${1:-}" in
  ensure)
    shift
    for image in "${@:-${IMAGES[@]}}"; do ensure_one "$image"; done ;;
  list)
    for image in "${IMAGES[@]}"; do
      if ! present "$image"; then echo "$image: missing"
      elif is_standin "$image"; then echo "$image: stand-in"
      else echo "$image: real"; fi
    done ;;
  *) echo "usage: $0 ensure|list" >&2; exit 2 ;;
esac
