#!/usr/bin/env bash
# Extracts the committed test frames from OpenCV's sample footage (Debian package opencv-doc,
# examples/data/vtest.avi, 768x576). Usage: scripts/extract-vtest-frames.sh [OUT_DIR] [FRAME...]
set -euo pipefail
src=/usr/share/doc/opencv-doc/examples/data/vtest.avi
out=${1:-tests/fixtures/vtest}
shift || true
frames=("${@:-0 100 250 400 600}")
[ -f "$src" ] || { echo "missing $src: apt-get install opencv-doc" >&2; exit 1; }
mkdir -p "$out"
for f in ${frames[@]}; do
  ffmpeg -loglevel error -y -i "$src" -vf "select=eq(n\,$f)" -frames:v 1 -q:v 3 "$out/frame_$(printf %04d "$f").jpg"
done
ls -l "$out"
