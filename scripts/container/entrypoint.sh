#!/bin/sh
# The programs' entrypoint in the image. Started as root (docker compose does), it runs the
# program as the owner of the output directory, so part files in a bind-mounted
# ./output_data belong to whoever owns the checkout, on any uid, with no setting.
# Started as any other user, it runs the program as that user.
set -eu
if [ "$(id -u)" = 0 ] && [ -n "${OUTPUT_DIR:-}" ]; then
  mkdir -p "$OUTPUT_DIR"
  uid=$(stat -c %u "$OUTPUT_DIR")
  gid=$(stat -c %g "$OUTPUT_DIR")
  if [ "$uid" != 0 ]; then
    exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
  fi
fi
exec "$@"
