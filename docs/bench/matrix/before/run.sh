#!/usr/bin/env bash
# The matrix's cells on the binary of HEAD (d939633), which has no --matrix: one camera at 10 fps,
# --overload 3 and --mode closed --cameras 6, each with its own one-client reference run.
set -u
cd "$(dirname "$0")/../../../.."
B=${LINESIGHT_BEFORE:?path of the d939633 binary}
for p in detect track; do for bg in 0 1 2; do
  $B bench --frames target/bench-frames --pipeline $p --cameras 1 --fps 10 --duration-s 10 --warmup-s 2 --background-load $bg --bare-runs 0 --quiet --out docs/bench/matrix/before/$p-bg$bg-one.json >/dev/null 2>&1
  $B bench --frames target/bench-frames --pipeline $p --fps 10 --overload 3 --duration-s 10 --warmup-s 2 --background-load $bg --bare-runs 0 --quiet --out docs/bench/matrix/before/$p-bg$bg-three.json >/dev/null 2>&1
  $B bench --frames target/bench-frames --pipeline $p --mode closed --cameras 6 --duration-s 10 --warmup-s 2 --background-load $bg --bare-runs 0 --quiet --out docs/bench/matrix/before/$p-bg$bg-six.json >/dev/null 2>&1
done; done
echo done
