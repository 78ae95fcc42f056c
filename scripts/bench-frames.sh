#!/usr/bin/env bash
# Extracts every frame of OpenCV's vtest.avi (Debian opencv-doc: 768x576, 795 frames of a street
# camera) as JPEG into a folder for `linesight bench --frames`. Usage: scripts/bench-frames.sh [DIR]
# (default target/bench-frames). Needs ffmpeg and opencv-doc (apt-get install ffmpeg opencv-doc).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bench-frames}
video=${VTEST_AVI:-/usr/share/doc/opencv-doc/examples/data/vtest.avi}
[ -f "$video" ] || { echo "no $video (apt-get install opencv-doc, or set VTEST_AVI)" >&2; exit 1; }
command -v ffmpeg >/dev/null || { echo "ffmpeg is required (apt-get install ffmpeg)" >&2; exit 1; }
mkdir -p "$out"
# -q:v 3: about 50 KB a frame, close to what an IP camera's JPEG stream carries at this size.
ffmpeg -loglevel error -y -i "$video" -q:v 3 -start_number 0 "$out/frame_%04d.jpg"
echo "$(ls "$out" | wc -l) frames in $out"
