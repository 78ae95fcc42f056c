#!/usr/bin/env bash
# Soak: `linesight serve` under a steady load for a long time, its resident memory sampled, then a
# verdict on memory growth and errors. Usage:
#   scripts/soak.sh [OUT_DIR]          (default target/soak)
# Environment: SOAK_S (default 1800), CAMERAS (2), FPS (10), PIPELINE (detect), LINESIGHT_BIN
# (default target/release/linesight; build with `cargo build --release`), FRAMES (default
# target/bench-frames, made by scripts/bench-frames.sh). Writes OUT_DIR/rss.csv (seconds, MiB),
# OUT_DIR/load.json (the bench report) and OUT_DIR/summary.json, and exits non-zero if memory
# grew 5 % or more, any frame failed, or fewer than 99 % of frames were served within budget.
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
[ -x "$bin" ] || { echo "no $bin (cargo build --release)" >&2; exit 1; }
[ -d "$frames" ] || scripts/bench-frames.sh "$frames"
mkdir -p "$out"

NO_COLOR=1 "$bin" serve --listen "127.0.0.1:$port" --threads 2 2> "$out/server.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
# Serving once health says so; the bench's own ListPipelines call waits for that too.
for _ in $(seq 1 600); do
  grep -q "Health changed. serving=true" "$out/server.log" && break
  sleep 0.1
done

echo "seconds,rss_mib" > "$out/rss.csv"
(
  start=$(date +%s)
  while kill -0 "$server" 2>/dev/null; do
    rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$server/status" 2>/dev/null || echo "")
    [ -n "$rss_kb" ] && echo "$(( $(date +%s) - start )),$(awk -v k="$rss_kb" 'BEGIN {printf "%.1f", k/1024}')" >> "$out/rss.csv"
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

python3 - "$out" "$server_exit" <<'PY'
import csv, json, pathlib, sys
out, server_exit = pathlib.Path(sys.argv[1]), int(sys.argv[2])
rows = [(int(r["seconds"]), float(r["rss_mib"])) for r in csv.DictReader(open(out / "rss.csv"))]
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
}
json.dump(summary, open(out / "summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
within = load["within_budget"] / max(load["frames"], 1)
summary["within_budget_fraction"] = round(within, 4)
json.dump(summary, open(out / "summary.json", "w"), indent=2)
ok = growth < 5 and load["failed"] == 0 and within >= 0.99 and server_exit == 0
print("soak:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
