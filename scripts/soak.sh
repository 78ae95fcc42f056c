#!/usr/bin/env bash
# Soak: `linesight serve` under a steady load for a long time, its resident memory sampled, then a
# verdict on memory growth and errors. Usage:
#   scripts/soak.sh [OUT_DIR]          (default target/soak)
# Environment: SOAK_S (default 1800), CAMERAS (2), FPS (10), PIPELINE (detect), LINESIGHT_BIN
# (default target/release/linesight; build with `cargo build --release`), FRAMES (default
# target/bench-frames, made by scripts/bench-frames.sh). Writes OUT_DIR/rss.csv (seconds, resident
# MiB, and the server's own frame counters from /metrics: answered, within budget, shed), so memory
# and goodput can be read over time; OUT_DIR/load.json (the bench report) and OUT_DIR/summary.json.
# Exits non-zero if memory grew 5 % or more, any frame failed, fewer than 99 % of frames were
# served within budget, or a minute's goodput fell under 95 % of the offered rate.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/soak}
soak_s=${SOAK_S:-1800}
cameras=${CAMERAS:-2}
fps=${FPS:-10}
pipeline=${PIPELINE:-detect}
bin=${LINESIGHT_BIN:-target/release/linesight}
frames=${FRAMES:-target/bench-frames}
port=${PORT:-50077}
metrics_port=${METRICS_PORT:-50078}
[ -x "$bin" ] || { echo "no $bin (cargo build --release)" >&2; exit 1; }
[ -d "$frames" ] || scripts/bench-frames.sh "$frames"
mkdir -p "$out"

printf '[server.metrics]\nlisten = "127.0.0.1:%s"\n' "$metrics_port" > "$out/soak.toml"
NO_COLOR=1 "$bin" serve --listen "127.0.0.1:$port" --threads 2 --config "$out/soak.toml" 2> "$out/server.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
# Serving once health says so; the bench's own ListPipelines call waits for that too.
for _ in $(seq 1 600); do
  grep -q "Health changed. serving=true" "$out/server.log" && break
  sleep 0.1
done

echo "seconds,rss_mib,frames,within_budget,shed" > "$out/rss.csv"
(
  start=$(date +%s)
  while kill -0 "$server" 2>/dev/null; do
    rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$server/status" 2>/dev/null || echo "")
    counts=$(curl -s "http://127.0.0.1:$metrics_port/metrics" | awk '
      /^linesight_frames_total\{/ { frames += $NF; if ($0 ~ /outcome="within_budget"/) within += $NF }
      /^linesight_frames_shed_total\{/ { shed += $NF }
      END { printf "%d,%d,%d", frames, within, shed }')
    [ -n "$rss_kb" ] && echo "$(( $(date +%s) - start )),$(awk -v k="$rss_kb" 'BEGIN {printf "%.1f", k/1024}'),$counts" >> "$out/rss.csv"
    sleep 10
  done
) &
sampler=$!

"$bin" bench --server "http://127.0.0.1:$port" --pipeline "$pipeline" --cameras "$cameras" --fps "$fps" \
  --duration-s "$soak_s" --warmup-s 5 --frames "$frames" --quiet --out "$out/load.json" | tee "$out/bench.txt"

kill -TERM "$server"
wait "$server"; server_exit=$?
kill "$sampler" 2>/dev/null || true
trap - EXIT

python3 - "$out" "$server_exit" "$cameras" "$fps" <<'PY'
import csv, json, pathlib, sys
out, server_exit = pathlib.Path(sys.argv[1]), int(sys.argv[2])
samples = list(csv.DictReader(open(out / "rss.csv")))
rows = [(int(r["seconds"]), float(r["rss_mib"])) for r in samples]
# Goodput per minute: frames answered within budget per second, from the server's own counters.
minutes, i = [], 0
while True:
    j = next((k for k in range(i, len(samples)) if int(samples[k]["seconds"]) - int(samples[i]["seconds"]) >= 60), None)
    if j is None:
        break
    span = int(samples[j]["seconds"]) - int(samples[i]["seconds"])
    minutes.append(round((int(samples[j]["within_budget"]) - int(samples[i]["within_budget"])) / span, 2))
    i = j
load = json.load(open(out / "load.json"))["runs"][0]
# Baseline after the first minute (allocator and ONNX Runtime arenas settle); end = the highest
# sample of the last five minutes.
baseline = next(m for s, m in rows if s >= 60)
end_window = [m for s, m in rows if s >= rows[-1][0] - 300]
end = max(end_window)
growth = (end - baseline) / baseline * 100
summary = {
    "seconds": rows[-1][0], "samples": len(rows), "rss_baseline_mib": baseline, "rss_end_max_mib": end,
    "rss_min_mib": min(m for _, m in rows), "rss_max_mib": max(m for _, m in rows),
    "rss_growth_percent": round(growth, 2), "frames": load["frames"], "within_budget": load["within_budget"],
    "over_budget": load["over_budget"], "shed": load["shed"], "failed": load["failed"],
    "failed_codes": load["failed_codes"], "latency_ms": load["latency_ms"], "server_exit": server_exit,
    "offered_fps": int(sys.argv[3]) * int(sys.argv[4]), "goodput_fps_per_minute": minutes,
    "goodput_fps_per_minute_min": min(minutes[1:-1] or minutes or [0]),
    "goodput_fps_per_minute_median": sorted(minutes)[len(minutes) // 2] if minutes else 0,
}
json.dump(summary, open(out / "summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
within = load["within_budget"] / max(load["frames"], 1)
summary["within_budget_fraction"] = round(within, 4)
json.dump(summary, open(out / "summary.json", "w"), indent=2)
offered = int(sys.argv[3]) * int(sys.argv[4])
steady = minutes[1:-1] or minutes
goodput_ok = bool(steady) and min(steady) >= 0.95 * offered
ok = growth < 5 and load["failed"] == 0 and within >= 0.99 and server_exit == 0 and goodput_ok
print("soak:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
