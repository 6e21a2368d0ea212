#!/bin/bash
# Container healthcheck: 0 when the program's /readyz on 127.0.0.1:PORT answers 200.
# Bash's /dev/tcp, so the runtime image needs no HTTP client.
set -eu
port=${1:?usage: healthcheck.sh PORT}
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
read -r -t 5 status <&3
case "$status" in
  *" 200 "*) exit 0 ;;
  *) echo "not ready: $status" >&2; exit 1 ;;
esac
