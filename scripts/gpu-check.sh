#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU and driver, and no Rust toolchain needed, runs
# `linesight gpu-check`: the CUDA kernels against the CPU path on random inputs, then the service end
# to end (real gRPC on 127.0.0.1, real JPEG frames) on the CPU, CUDA (GPU preprocessing + I/O
# binding), CUDA with CPU preprocessing, and TensorRT, batch 1 and 8, and prints one table.
#
# Needs:
#   LINESIGHT_BIN  a linesight built with `cargo build --release --features cuda`
#                  (default: target/release/linesight)
#   ORT_GPU_DIR    the `onnxruntime/capi` folder of PyPI `onnxruntime-gpu` (1.31.1 is built for
#                  CUDA 13 and cuDNN 9): libonnxruntime.so.*, libonnxruntime_providers_shared.so,
#                  libonnxruntime_providers_cuda.so, libonnxruntime_providers_tensorrt.so
#   CUDA 13 and cuDNN 9 libraries (libcudart.so.13, libcublas.so.13, libcurand.so.10,
#                  libcufft.so.12, libcudnn.so.9) and NVRTC: found in the PyTorch `nvidia-*` wheels
#                  of this machine's python3, in /usr/local/cuda, or on LD_LIBRARY_PATH already.
# Extra arguments go to `linesight gpu-check` (e.g. --iterations 200 --out report.json).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${LINESIGHT_BIN:-target/release/linesight}
[ -x "$bin" ] || { echo "gpu-check: no linesight binary at $bin (build with --features cuda)" >&2; exit 2; }
[ -n "${ORT_GPU_DIR:-}" ] || { echo "gpu-check: set ORT_GPU_DIR to onnxruntime-gpu's capi folder" >&2; exit 2; }
ort=$(ls "$ORT_GPU_DIR"/libonnxruntime.so.* 2>/dev/null | head -n 1)
[ -n "$ort" ] || { echo "gpu-check: no libonnxruntime.so.* in $ORT_GPU_DIR" >&2; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

. scripts/gpu-env.sh

frames=()
for d in tests/fixtures/vtest tests/fixtures/vtest-clip; do [ -d "$d" ] && frames+=(--frames "$d"); done
exec "$bin" gpu-check --model-dir models "${frames[@]}" "$@"
