#!/bin/bash
# Renders the KAFKA_* variables the way the apache/kafka image does, for tansu.
set -euo pipefail
advertised=""
IFS=',' read -ra entries <<<"${KAFKA_ADVERTISED_LISTENERS:-PLAINTEXT://localhost:9092}"
for e in "${entries[@]}"; do
  name=${e%%://*}
  [ "$name" = "${KAFKA_CONTROLLER_LISTENER_NAMES:-CONTROLLER}" ] && continue
  advertised=${e#*://}; listener_name=$name; break
done
port=${advertised##*:}
IFS=',' read -ra listeners <<<"${KAFKA_LISTENERS:-PLAINTEXT://:9092}"
for l in "${listeners[@]}"; do
  if [ "${l%%://*}" = "$listener_name" ]; then port=${l##*:}; fi
done
logs=${KAFKA_LOG_DIRS:-/tmp/kraft-combined-logs}
mkdir -p "$logs"
echo "$port" >/tmp/tansu.port
echo "stand-in kafka: tansu on :$port advertised as $advertised, data in $logs"
cd /
exec tansu broker --listener-url "tcp://0.0.0.0:$port" \
  --advertised-listener-url "tcp://$advertised" \
  --storage-engine "sqlite://$logs/tansu.db"
