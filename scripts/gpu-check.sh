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

# CUDA and cuDNN libraries from the Python wheels (nvidia/*/lib, or nvidia/cu13/lib) and the toolkit.
libdirs=""
if command -v python3 >/dev/null; then
  for root in $(python3 -c 'import nvidia; print(" ".join(nvidia.__path__))' 2>/dev/null || true); do
    for d in $(find "$root" -maxdepth 3 -type d -name lib 2>/dev/null); do libdirs="$libdirs:$d"; done
  done
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [ -d "$d" ] && libdirs="$libdirs:$d"; done
# NVRTC is loaded by its plain name (libnvrtc.so); wheels ship only the versioned one.
shim=$(mktemp -d)
for d in ${libdirs//:/ }; do
  nvrtc=$(ls "$d"/libnvrtc.so.[0-9]* 2>/dev/null | grep -v builtins | head -n 1 || true)
  if [ -n "$nvrtc" ]; then ln -sf "$nvrtc" "$shim/libnvrtc.so"; break; fi
done
export LD_LIBRARY_PATH="$shim$libdirs:$ORT_GPU_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ORT_DYLIB_PATH="$ort"
for lib in libcudart.so.13 libcublas.so.13 libcudnn.so.9 libnvrtc.so libnvinfer.so.10; do
  found=""
  for d in ${LD_LIBRARY_PATH//:/ }; do
    if [ -e "$d/$lib" ]; then found="$d/$lib"; break; fi
  done
  echo "gpu-check: $lib: ${found:-not found}"
done

frames=()
for d in tests/fixtures/vtest tests/fixtures/vtest-clip; do [ -d "$d" ] && frames+=(--frames "$d"); done
exec "$bin" gpu-check --model-dir models "${frames[@]}" "$@"
