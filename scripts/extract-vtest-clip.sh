#!/usr/bin/env bash
# Extracts every frame of OpenCV's sample footage (Debian package opencv-doc, examples/data/vtest.avi,
# 768x576, 795 frames) as JPEG, for examples/track_video.rs. Usage: scripts/extract-vtest-clip.sh OUT_DIR
set -euo pipefail
src=/usr/share/doc/opencv-doc/examples/data/vtest.avi
out=${1:?usage: $0 OUT_DIR}
[ -f "$src" ] || { echo "missing $src: apt-get install opencv-doc" >&2; exit 1; }
mkdir -p "$out"
ffmpeg -loglevel error -y -i "$src" -q:v 3 "$out/frame_%04d.jpg"
ls "$out" | wc -l
