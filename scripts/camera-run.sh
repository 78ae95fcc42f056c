#!/usr/bin/env bash
# The camera bridge on real footage: vtest.avi served over RTSP at 10 fps by GStreamer's RTSP server
# (tests/tools/rtsp_server.py), through `linesight camera` into a local `linesight serve` on the
# `track` pipeline, for DURATION_S seconds. Half way through, the RTSP server is killed and
# restarted RESTART_GAP_S seconds later, as a camera that reboots. The bridge's resident memory is
# sampled every 10 s. Usage:
#   scripts/camera-run.sh [OUT_DIR]      (default target/camera-run)
# Environment: DURATION_S (600), RESTART_GAP_S (2), LINESIGHT_BIN (target/release/linesight, built
# with `cargo build --release --features camera`). Writes OUT_DIR/summary.json (the bridge's totals),
# answers.jsonl, rss.csv (seconds, MiB), bridge.log, server.log and report.json (the figures).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/camera-run}
duration_s=${DURATION_S:-600}
gap_s=${RESTART_GAP_S:-2}
bin=${LINESIGHT_BIN:-target/release/linesight}
frames=${FRAMES:-target/bench-frames}
grpc_port=${GRPC_PORT:-50093}
rtsp_port=${RTSP_PORT:-8593}
[ -x "$bin" ] || { echo "no $bin (cargo build --release --features camera)" >&2; exit 1; }
[ -f "$frames/frame_0794.jpg" ] || scripts/bench-frames.sh "$frames"
mkdir -p "$out"
rm -f "$out/answers.jsonl" "$out/summary.json"

NO_COLOR=1 "$bin" serve --listen "127.0.0.1:$grpc_port" 2> "$out/server.log" &
server=$!
rtsp_camera() {
  /usr/bin/python3 tests/tools/rtsp_server.py --port "$rtsp_port" --frames "$frames" --fps 10 >> "$out/rtsp.log" 2>&1 &
  rtsp=$!
}
rtsp_camera
trap 'kill "$server" "$rtsp" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  grep -q "Health changed. serving=true" "$out/server.log" && break
  sleep 0.1
done

NO_COLOR=1 "$bin" camera --source "rtsp://127.0.0.1:$rtsp_port/live" --camera-id vtest --pipeline track \
  --server "http://127.0.0.1:$grpc_port" --output "$out/answers.jsonl" --summary "$out/summary.json" \
  --duration-s "$duration_s" 2> "$out/bridge.log" &
bridge=$!

echo "seconds,rss_mib" > "$out/rss.csv"
start=$(date +%s)
restarted=0
while kill -0 "$bridge" 2>/dev/null; do
  elapsed=$(( $(date +%s) - start ))
  rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$bridge/status" 2>/dev/null || echo "")
  [ -n "$rss_kb" ] && echo "$elapsed,$(awk -v k="$rss_kb" 'BEGIN {printf "%.1f", k/1024}')" >> "$out/rss.csv"
  if [ "$restarted" = 0 ] && [ "$elapsed" -ge $(( duration_s / 2 )) ]; then
    kill -9 "$rtsp"
    sleep "$gap_s"
    rtsp_camera
    date +%s%3N > "$out/rtsp_restarted_ms"
    restarted=1
  fi
  sleep 10
done
wait "$bridge"

python3 - "$out" <<'PY'
import csv, json, sys
out = sys.argv[1]
camera = json.load(open(f"{out}/summary.json"))["cameras"][0]
restarted = int(open(f"{out}/rtsp_restarted_ms").read())
answers = [json.loads(line) for line in open(f"{out}/answers.jsonl")]
after = [a["captured_unix_ms"] for a in answers if a["captured_unix_ms"] > restarted]
rss = [(int(s), float(m)) for s, m in list(csv.reader(open(f"{out}/rss.csv")))[1:]]
steady = [m for s, m in rss if s >= 60]
report = {
    "frames": {k: camera[k] for k in ("captured", "sent", "dropped", "rate_capped", "answered", "within_budget", "over_budget", "shed", "failed", "lost")},
    "latency_ms_capture_to_answer": camera["latency_ms"],
    "within_budget_share": camera["within_budget"] / max(camera["answered"], 1),
    "source_reconnects": camera["source_reconnects"],
    "outage_ms": camera["last_outage_ms"],
    "first_frame_after_rtsp_restart_ms": (after[0] - restarted) if after else None,
    "rss_mib": {"at_60s": steady[0] if steady else None, "end": rss[-1][1] if rss else None,
                "min_after_60s": min(steady) if steady else None, "max_after_60s": max(steady) if steady else None},
}
json.dump(report, open(f"{out}/report.json", "w"), indent=2)
print(json.dumps(report, indent=2))
PY
