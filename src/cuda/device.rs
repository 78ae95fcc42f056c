//! `cuda` feature: the GPU a deployment runs on, through the CUDA driver (loaded at run time, so
//! the binary starts on machines without one), and its memory as models load.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream, DriverError};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no NVIDIA driver: libcuda.so.1 cannot be loaded on this machine")]
    NoDriver,
    #[error("no CUDA device {ordinal} (this machine has {count})")]
    NoDevice { ordinal: u32, count: i32 },
    #[error("NVRTC (libnvrtc.so) cannot be loaded; it ships with the CUDA toolkit and PyPI `nvidia-cuda-nvrtc`")]
    NoNvrtc,
    #[error("CUDA {operation}: {message}")]
    Cuda { operation: &'static str, message: String },
    #[error("compiling the preprocessing kernels failed: {0}")]
    Compile(String),
}

impl DeviceError {
    pub fn cuda(operation: &'static str) -> impl Fn(DriverError) -> DeviceError {
        move |e| DeviceError::Cuda { operation, message: e.to_string() }
    }
}

/// One CUDA device's primary context (the one ONNX Runtime's CUDA provider also uses, so device
/// pointers pass between the two).
#[derive(Clone)]
pub struct GpuDevice {
    context: Arc<CudaContext>,
    ordinal: u32,
}

impl GpuDevice {
    pub fn open(ordinal: u32) -> Result<Self, DeviceError> {
        // cudarc panics when the driver library is missing: ask first.
        // SAFETY: only probes whether the library loads.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(DeviceError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(DeviceError::cuda("device count"))?;
        if i64::from(ordinal) >= i64::from(count) {
            return Err(DeviceError::NoDevice { ordinal, count });
        }
        let context = CudaContext::new(ordinal as usize).map_err(DeviceError::cuda("context"))?;
        Ok(Self { context, ordinal })
    }

    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    pub fn new_stream(&self) -> Result<Arc<CudaStream>, DeviceError> {
        self.context.new_stream().map_err(DeviceError::cuda("stream"))
    }

    pub fn name(&self) -> String {
        self.context.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    /// (free, total) device memory in bytes, for every process on the device.
    pub fn memory(&self) -> Result<(u64, u64), DeviceError> {
        let (free, total) = self.context.mem_get_info().map_err(DeviceError::cuda("memory info"))?;
        Ok((free as u64, total as u64))
    }

    /// Bytes in use on the device (by everyone).
    pub fn used_bytes(&self) -> Result<u64, DeviceError> {
        let (free, total) = self.memory()?;
        Ok(total.saturating_sub(free))
    }
}
