#!/usr/bin/env bash
# Renders images/*.dot into images/*.png (needs Graphviz: apt-get install graphviz).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../images"
command -v dot >/dev/null || { echo "render-images: install graphviz first" >&2; exit 1; }
for src in *.dot; do
  dot -Tpng "$src" -o "${src%.dot}.png"
  echo "rendered images/${src%.dot}.png"
done
