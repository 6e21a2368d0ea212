#!/bin/bash
# The subset of kafka-topics.sh our compose file and instruction.txt use, on tansu:
#   --bootstrap-server B (--list | --create [--if-not-exists] --topic T [--partitions N]
#   [--replication-factor R] | --describe --topic T)
set -euo pipefail
action="" topic="" partitions=1 if_not_exists=0 bootstrap=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bootstrap-server) bootstrap=$2; shift ;;
    --list) action=list ;;
    --create) action=create ;;
    --describe) action=describe ;;
    --if-not-exists) if_not_exists=1 ;;
    --topic) topic=$2; shift ;;
    --partitions) partitions=$2; shift ;;
    --replication-factor) shift ;;
    *) echo "kafka-topics.sh (stand-in): unsupported argument $1" >&2; exit 2 ;;
  esac
  shift
done
# Inside the broker's container every address means this broker (tansu has one listener);
# elsewhere (kafka-init), the bootstrap server given.
if [ -s /tmp/tansu.port ]; then
  broker="tcp://localhost:$(cat /tmp/tansu.port)"
else
  broker="tcp://${bootstrap:?--bootstrap-server is required}"
fi
case "$action" in
  list)
    # Fails when the broker does not answer; an empty list is no failure.
    topics=$(tansu topic list --broker "$broker")
    grep -o '"name": *"[^"]*"' <<<"$topics" | sed 's/.*"\([^"]*\)"$/\1/' || true ;;
  create)
    if [ "$if_not_exists" = 1 ] && "$0" --bootstrap-server "$bootstrap" --list | grep -qx "$topic"; then
      exit 0
    fi
    tansu topic create "$topic" --partitions "$partitions" --broker "$broker" >/dev/null
    echo "Created topic $topic." ;;
  describe) tansu topic list --broker "$broker" ;;
  *) echo "kafka-topics.sh (stand-in): give --list, --create or --describe" >&2; exit 2 ;;
esac
