//! (feature `cuda`) Mask paste on the GPU: the twin of [`super::paste_mask`], batched over
//! instances.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

use crate::cuda::{BLOCK, DeviceError, GpuDevice, Kernels};

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Paste {
    mask_offset: i32,
    x1: f32,
    y1: f32,
    x2: f32,
    y2: f32,
    left: i32,
    top: i32,
    width: i32,
    height: i32,
    out_offset: i32,
}

// SAFETY: plain-old-data with the kernel's layout (`struct Paste` in kernels.cu).
unsafe impl DeviceRepr for Paste {}

/// The mask-paste kernel on one device, with its own stream.
pub struct GpuMaskPaste {
    stream: Arc<CudaStream>,
    paste: CudaFunction,
}

impl GpuMaskPaste {
    pub fn new(device: &GpuDevice) -> Result<Self, DeviceError> {
        let kernels = Kernels::load(device)?;
        Ok(Self { stream: device.new_stream()?, paste: kernels.function("paste_masks")? })
    }

    /// Pastes each `side`×`side` mask of `masks` into its box on an image `width`×`height`:
    /// the GPU twin of `segment::paste_mask`, batched over instances.
    pub fn paste_masks(
        &self,
        masks: &[f32],
        side: usize,
        boxes: &[[f32; 4]],
        width: u32,
        height: u32,
        threshold: f32,
    ) -> Result<Vec<super::PastedMask>, DeviceError> {
        let mut pastes = Vec::with_capacity(boxes.len());
        let mut out_len = 0usize;
        for (i, b) in boxes.iter().enumerate() {
            let (left, top, w, h) = super::paste_region(*b, width, height);
            pastes.push(Paste {
                mask_offset: (i * side * side) as i32,
                x1: b[0],
                y1: b[1],
                x2: b[2],
                y2: b[3],
                left: left as i32,
                top: top as i32,
                width: w as i32,
                height: h as i32,
                out_offset: out_len as i32,
            });
            out_len += w as usize * h as usize;
        }
        let stream = self.stream.clone();
        let masks_d = stream.clone_htod(masks).map_err(DeviceError::cuda("upload"))?;
        let pastes_d = stream.clone_htod(&pastes).map_err(DeviceError::cuda("upload"))?;
        let mut out_d = stream.alloc_zeros::<u8>(out_len.max(1)).map_err(DeviceError::cuda("alloc"))?;
        let largest = pastes.iter().map(|p| (p.width * p.height) as u32).max().unwrap_or(0);
        if largest > 0 {
            let config = LaunchConfig {
                grid_dim: (largest.div_ceil(BLOCK), pastes.len() as u32, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let side_arg = side as i32;
            let mut launch = stream.launch_builder(&self.paste);
            launch.arg(&masks_d).arg(&pastes_d).arg(&side_arg).arg(&threshold).arg(&mut out_d);
            // SAFETY: argument types and order are the kernel's; offsets lie inside the buffers.
            unsafe { launch.launch(config) }.map_err(DeviceError::cuda("paste launch"))?;
        }
        let out = stream.clone_dtoh(&out_d).map_err(DeviceError::cuda("download"))?;
        Ok(pastes
            .iter()
            .map(|p| {
                let start = p.out_offset as usize;
                let len = (p.width * p.height) as usize;
                super::PastedMask {
                    left: p.left as u32,
                    top: p.top as u32,
                    width: p.width as u32,
                    height: p.height as u32,
                    pixels: out[start..start + len].to_vec(),
                }
            })
            .collect())
    }
}
