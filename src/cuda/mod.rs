//! The GPU itself: the device-memory ledger (every build) and, with the `cuda` feature, opening a
//! device and the NVRTC kernels that `imaging` (letterbox, crops) and `segment` (mask paste) launch.

#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod kernels;
mod memory;

#[cfg(feature = "cuda")]
pub use device::{DeviceError, GpuDevice};
#[cfg(feature = "cuda")]
pub use kernels::{BLOCK, Kernels, compile_kernels};
pub use memory::{DeviceMemory, Measuring, MemoryError};
