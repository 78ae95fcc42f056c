# Sourced by scripts/gpu-check.sh, and usable on its own (`ORT_GPU_DIR=… . scripts/gpu-env.sh`,
# then `linesight serve --config …`): puts the CUDA 13 / cuDNN 9 libraries of the Python `nvidia-*` wheels and the CUDA
# toolkit on LD_LIBRARY_PATH, gives NVRTC its plain name, and points linesight at ONNX Runtime's
# GPU build.
ort=$(ls "$ORT_GPU_DIR"/libonnxruntime.so.* 2>/dev/null | head -n 1)

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
  echo "gpu-env: $lib: ${found:-not found}"
done

