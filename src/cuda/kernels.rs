//! The CUDA kernels (`kernels.cu`), compiled by NVRTC at run time for the GPU at hand.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule};

use super::{DeviceError, GpuDevice};

const SOURCE: &str = include_str!("kernels.cu");
/// Threads per block of every kernel launch.
pub const BLOCK: u32 = 256;

/// Compiles the kernels to PTX for virtual architecture `arch` (e.g. `compute_90`, `compute_87`
/// on Jetson Orin); the driver turns the PTX into the GPU's code when the module loads. Needs NVRTC
/// only, no GPU.
pub fn compile_kernels(arch: &str) -> Result<cudarc::nvrtc::Ptx, DeviceError> {
    // SAFETY: only probes whether the library loads (cudarc panics on a missing one).
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(DeviceError::NoNvrtc);
    }
    let options = cudarc::nvrtc::CompileOptions {
        // Bit-exact with the CPU: no fused multiply-add, IEEE division.
        fmad: Some(false),
        prec_div: Some(true),
        options: vec!["--std=c++17".into(), format!("--gpu-architecture={arch}")],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(SOURCE, options).map_err(|e| DeviceError::Compile(e.to_string()))
}

/// The kernels loaded on one device.
#[derive(Clone)]
pub struct Kernels {
    module: Arc<CudaModule>,
}

impl Kernels {
    /// Compiles the kernels for `device`'s architecture and loads them.
    pub fn load(device: &GpuDevice) -> Result<Self, DeviceError> {
        let (major, minor) = device.context().compute_capability().map_err(DeviceError::cuda("compute capability"))?;
        let ptx = compile_kernels(&format!("compute_{major}{minor}"))?;
        let module = device.context().load_module(ptx).map_err(DeviceError::cuda("module load"))?;
        Ok(Self { module })
    }

    pub fn function(&self, name: &str) -> Result<CudaFunction, DeviceError> {
        self.module.load_function(name).map_err(DeviceError::cuda("kernel lookup"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where NVRTC is installed (CUDA toolkit, or PyPI `nvidia-cuda-nvrtc-cu12` on
    /// LD_LIBRARY_PATH), the kernels must compile for the data-centre and Jetson architectures. CI
    /// installs it and sets `LINESIGHT_REQUIRE_NVRTC`, so there a missing NVRTC fails the test.
    #[test]
    fn kernels_compile_where_nvrtc_is_installed() {
        // SAFETY: only probes whether the library loads.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            assert!(
                std::env::var_os("LINESIGHT_REQUIRE_NVRTC").is_none(),
                "LINESIGHT_REQUIRE_NVRTC is set, but no libnvrtc is found on LD_LIBRARY_PATH"
            );
            eprintln!("NVRTC not installed: kernel compilation not checked");
            return;
        }
        for arch in ["compute_87", "compute_90"] {
            let ptx = compile_kernels(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
            let text = ptx.to_src();
            for kernel in ["preprocess_f32", "preprocess_f16", "paste_masks"] {
                assert!(text.contains(kernel), "{arch}: {kernel} missing from the PTX");
            }
            assert!(!text.contains("fma.rn.f32"), "{arch}: fused multiply-add would break exactness");
        }
    }
}
