#!/usr/bin/env bash
# track, one camera at 10 fps, quiet: five 20 s runs each of the old binary (d939633) and this
# change, interleaved; then two cameras at 10 fps (the detector of one frame and the embedder of
# another overlap) with exclusive CPU runs on and off, twice, interleaved.
set -u
cd "$(dirname "$0")/../../.."

for i in 1 2 3 4 5; do
  for v in before after; do
    bin=${LINESIGHT_BEFORE:?path of the d939633 binary}; [ $v = after ] && bin=${LINESIGHT:-target/release/linesight}
    $bin bench --frames target/bench-frames --pipeline track --cameras 1 --fps 10 --duration-s 20 --bare-runs 0 --quiet --out docs/bench/track-budget/one-$v-$i.json >/dev/null 2>&1
  done
done
for i in 1 2; do
  for v in gate nogate old; do
    case $v in gate) cmd="${LINESIGHT:-target/release/linesight} bench";; nogate) cmd="/tmp/ls-final bench --config docs/bench/track-budget/concurrent-cpu-runs.toml";; old) cmd="${LINESIGHT_BEFORE:?path of the d939633 binary} bench";; esac
    $cmd --frames target/bench-frames --pipeline track --cameras 2 --fps 10 --duration-s 15 --bare-runs 0 --quiet --out docs/bench/track-budget/two-$v-$i.json >/dev/null 2>&1
  done
done
echo done
