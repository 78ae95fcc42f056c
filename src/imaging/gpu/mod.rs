//! `cuda` feature: batched preprocessing on the GPU (letterbox or crop-and-stretch, normalise,
//! HWC→CHW, f32 or f16) straight into a model's device input buffer, and batched mask paste.
//! Kernels are compiled by NVRTC when a worker starts; their arithmetic is the CPU path's
//! (`imaging::resample`, `segment::paste_mask`), so outputs match it exactly.

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use image::RgbImage;

use super::letterbox::normalization_tables;
use super::linear::LinearAxis;
use super::resample::{AxisTaps, resize_taps};
use super::{RowSource, TensorSpec};
use crate::cuda::{BLOCK, DeviceError, GpuDevice, Kernels};

/// Element type the preprocessing writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorElement {
    F32,
    F16,
}

impl TensorElement {
    pub fn size(self) -> usize {
        match self {
            TensorElement::F32 => 4,
            TensorElement::F16 => 2,
        }
    }
}

/// One frame and the rows it contributes to a batch.
pub struct FrameRows<'a> {
    pub image: &'a RgbImage,
    pub rows: &'a [RowSource],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Region {
    src_offset: u64,
    src_width: i32,
    dst_left: i32,
    dst_top: i32,
    dst_width: i32,
    dst_height: i32,
    taps_x: i32,
    taps_y: i32,
    weights_x: i32,
    weights_y: i32,
    window_x: i32,
    window_y: i32,
    precision_x: i32,
    precision_y: i32,
    /// 1: OpenCV INTER_LINEAR (letterboxes); starts and counts then hold each coordinate's two
    /// source coordinates, and weights two per coordinate.
    linear: i32,
}

// SAFETY: plain-old-data with the kernel's layout (`struct Region` in kernels.cu); all-zero is valid.
unsafe impl DeviceRepr for Region {}
// SAFETY: as above: every field is an integer or a float, for which all-zero is valid.
unsafe impl cudarc::driver::ValidAsZeroBits for Region {}

/// Host-side tables for one batch: every row's region and the taps of both axes.
#[derive(Default)]
struct Tables {
    regions: Vec<Region>,
    starts: Vec<i32>,
    counts: Vec<i32>,
    weights: Vec<i16>,
}

impl Tables {
    fn push_axis(&mut self, taps: &AxisTaps) -> (i32, i32) {
        let at = (self.starts.len() as i32, self.weights.len() as i32);
        self.starts.extend_from_slice(&taps.starts);
        self.counts.extend_from_slice(&taps.counts);
        self.weights.extend_from_slice(&taps.weights);
        at
    }

    fn push_linear_axis(&mut self, axis: &LinearAxis) -> (i32, i32) {
        let at = (self.starts.len() as i32, self.weights.len() as i32);
        self.starts.extend(axis.first.iter().map(|&s| s as i32));
        self.counts.extend(axis.second.iter().map(|&s| s as i32));
        self.weights.extend(axis.weights.iter().flatten());
        at
    }

    fn push_row(&mut self, src_offset: u64, image: &RgbImage, row: RowSource, spec: &TensorSpec) {
        let (iw, ih) = image.dimensions();
        let b = match row {
            RowSource::Crop(b) => b,
            RowSource::Letterbox(lb) => {
                // As `Preprocessor::letterbox_into`: OpenCV's INTER_LINEAR (a same-size "resize" is a copy).
                let x = LinearAxis::columns(iw, lb.resized_width);
                let y = LinearAxis::rows(ih, lb.resized_height);
                let (taps_x, weights_x) = self.push_linear_axis(&x);
                let (taps_y, weights_y) = self.push_linear_axis(&y);
                self.regions.push(Region {
                    src_offset,
                    src_width: iw as i32,
                    dst_left: lb.pad_left as i32,
                    dst_top: lb.pad_top as i32,
                    dst_width: lb.resized_width as i32,
                    dst_height: lb.resized_height as i32,
                    taps_x,
                    taps_y,
                    weights_x,
                    weights_y,
                    window_x: 2,
                    window_y: 2,
                    linear: 1,
                    ..Region::default()
                });
                return;
            }
        };
        // A crop: as `Preprocessor::crop_into`, whole pixels, truncated, clipped to the image, then
        // (crop rectangle in the source, resized size, placement in the output).
        let (fw, fh) = (iw as f32, ih as f32);
        let x1 = b.x1.trunc().clamp(0.0, fw);
        let y1 = b.y1.trunc().clamp(0.0, fh);
        let x2 = b.x2.trunc().clamp(0.0, fw);
        let y2 = b.y2.trunc().clamp(0.0, fh);
        let placed = (x2 - x1 >= 1.0 && y2 - y1 >= 1.0 && x1.is_finite() && y1.is_finite()).then(|| {
            let crop = [f64::from(x1), f64::from(y1), f64::from(x2 - x1), f64::from(y2 - y1)];
            (crop, (spec.width, spec.height), (0u32, 0u32))
        });
        let mut region = Region { src_offset, src_width: iw as i32, ..Region::default() };
        if let Some((crop, (w, h), (left, top))) = placed {
            let (x, y) = resize_taps(iw, ih, crop, w, h);
            let (taps_x, weights_x) = self.push_axis(&x);
            let (taps_y, weights_y) = self.push_axis(&y);
            region = Region {
                dst_left: left as i32,
                dst_top: top as i32,
                dst_width: w as i32,
                dst_height: h as i32,
                taps_x,
                taps_y,
                weights_x,
                weights_y,
                window_x: x.window as i32,
                window_y: y.window as i32,
                precision_x: i32::from(x.precision),
                precision_y: i32::from(y.precision),
                ..region
            };
        }
        self.regions.push(region);
    }
}

/// A device buffer that only grows.
struct Growing<T: DeviceRepr> {
    buffer: Option<CudaSlice<T>>,
}

impl<T: DeviceRepr + cudarc::driver::ValidAsZeroBits> Growing<T> {
    fn new() -> Self {
        Self { buffer: None }
    }

    fn at_least(&mut self, stream: &Arc<CudaStream>, len: usize) -> Result<&mut CudaSlice<T>, DeviceError> {
        let len = len.max(1);
        if self.buffer.as_ref().is_none_or(|b| b.len() < len) {
            self.buffer = Some(stream.alloc_zeros::<T>(len.next_power_of_two()).map_err(DeviceError::cuda("alloc"))?);
        }
        self.buffer.as_mut().ok_or(DeviceError::Cuda { operation: "alloc", message: "no buffer".into() })
    }
}

/// A worker's GPU preprocessing: kernels, a stream, pinned staging and device buffers reused
/// across batches.
pub struct GpuPreprocessor {
    device: GpuDevice,
    stream: Arc<CudaStream>,
    preprocess_f32: CudaFunction,
    preprocess_f16: CudaFunction,
    staging: Option<PinnedHostSlice<u8>>,
    pixels: Growing<u8>,
    regions: Growing<Region>,
    starts: Growing<i32>,
    counts: Growing<i32>,
    weights: Growing<i16>,
    lut: Growing<f32>,
    output: Growing<u8>,
}

impl GpuPreprocessor {
    pub fn new(device: &GpuDevice) -> Result<Self, DeviceError> {
        let kernels = Kernels::load(device)?;
        Ok(Self {
            stream: device.new_stream()?,
            preprocess_f32: kernels.function("preprocess_f32")?,
            preprocess_f16: kernels.function("preprocess_f16")?,
            device: device.clone(),
            staging: None,
            pixels: Growing::new(),
            regions: Growing::new(),
            starts: Growing::new(),
            counts: Growing::new(),
            weights: Growing::new(),
            lut: Growing::new(),
            output: Growing::new(),
        })
    }

    pub fn device(&self) -> &GpuDevice {
        &self.device
    }

    /// Uploads `frames` (each image once, through pinned memory), preprocesses every row into the
    /// device input buffer and waits for it; rows past the frames' up to `pad_to` are zeros.
    /// Returns the buffer's device address and its rows; it stays valid until the next call.
    pub fn preprocess(
        &mut self,
        frames: &[FrameRows<'_>],
        spec: &TensorSpec,
        element: TensorElement,
        pad_to: usize,
    ) -> Result<(u64, usize), DeviceError> {
        let mut tables = Tables::default();
        let total: usize = frames.iter().map(|f| f.image.as_raw().len()).sum();
        let staging = self.staging_at_least(total)?;
        let mut offset = 0usize;
        for frame in frames {
            let raw = frame.image.as_raw();
            staging[offset..offset + raw.len()].copy_from_slice(raw);
            for &row in frame.rows {
                tables.push_row(offset as u64, frame.image, row, spec);
            }
            offset += raw.len();
        }
        let rows = tables.regions.len();
        let lut: Vec<f32> = normalization_tables(spec).iter().flatten().copied().collect();
        let plane = spec.width as usize * spec.height as usize;
        let out_len = rows.max(pad_to) * 3 * plane * element.size();
        let row_bytes = 3 * plane * element.size();
        let stream = self.stream.clone();
        if let Some(staging) = self.staging.as_ref() {
            let host = staging.as_slice().map_err(DeviceError::cuda("pinned"))?;
            let pixels = self.pixels.at_least(&stream, total)?;
            let mut view = pixels.slice_mut(..total);
            stream.memcpy_htod(&host[..total], &mut view).map_err(DeviceError::cuda("upload"))?;
        }
        upload(&stream, &mut self.regions, &tables.regions)?;
        upload(&stream, &mut self.starts, &tables.starts)?;
        upload(&stream, &mut self.counts, &tables.counts)?;
        upload(&stream, &mut self.weights, &tables.weights)?;
        upload(&stream, &mut self.lut, &lut)?;
        self.output.at_least(&stream, out_len)?;
        if rows == 0 {
            return Err(DeviceError::Cuda { operation: "preprocess", message: "a batch with no rows".into() });
        }
        let config = LaunchConfig {
            grid_dim: ((plane as u32).div_ceil(BLOCK), rows as u32, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let (pad, w, h, swap) = (i32::from(spec.pad_value), spec.width as i32, spec.height as i32, i32::from(spec.bgr));
        let function = match element {
            TensorElement::F32 => &self.preprocess_f32,
            TensorElement::F16 => &self.preprocess_f16,
        };
        let (Some(pixels), Some(regions), Some(starts), Some(counts), Some(weights), Some(lut), Some(output)) = (
            self.pixels.buffer.as_ref(),
            self.regions.buffer.as_ref(),
            self.starts.buffer.as_ref(),
            self.counts.buffer.as_ref(),
            self.weights.buffer.as_ref(),
            self.lut.buffer.as_ref(),
            self.output.buffer.as_mut(),
        ) else {
            return Err(DeviceError::Cuda { operation: "preprocess", message: "buffers missing".into() });
        };
        let mut launch = stream.launch_builder(function);
        launch.arg(pixels).arg(regions).arg(starts).arg(counts).arg(weights).arg(lut);
        launch.arg(&pad).arg(&w).arg(&h).arg(&swap).arg(&mut *output);
        // SAFETY: argument types and order are the kernel's; every buffer holds what it indexes.
        unsafe { launch.launch(config) }.map_err(DeviceError::cuda("preprocess launch"))?;
        if pad_to > rows {
            let mut padding = output.slice_mut(rows * row_bytes..pad_to * row_bytes);
            stream.memset_zeros(&mut padding).map_err(DeviceError::cuda("padding"))?;
        }
        stream.synchronize().map_err(DeviceError::cuda("preprocess"))?;
        let (ptr, _sync) = output.device_ptr(&stream);
        Ok((ptr, rows.max(pad_to)))
    }

    /// Fills the output buffer (at least `bytes`) with 0xFF, a NaN in f32 and f16, so a check can
    /// see any element a kernel failed to write.
    pub fn poison_output(&mut self, bytes: usize) -> Result<(), DeviceError> {
        let stream = self.stream.clone();
        let output = self.output.at_least(&stream, bytes)?;
        let poison = vec![0xFFu8; output.len()];
        stream.memcpy_htod(&poison, output).map_err(DeviceError::cuda("poison"))?;
        stream.synchronize().map_err(DeviceError::cuda("poison"))
    }

    /// Copies the last `preprocess` output back (tests and the GPU check compare it with the CPU).
    pub fn download_output(&self, bytes: usize) -> Result<Vec<u8>, DeviceError> {
        let output = self
            .output
            .buffer
            .as_ref()
            .ok_or(DeviceError::Cuda { operation: "download", message: "nothing preprocessed yet".into() })?;
        let all = self.stream.clone_dtoh(output).map_err(DeviceError::cuda("download"))?;
        Ok(all[..bytes.min(all.len())].to_vec())
    }

    fn staging_at_least(&mut self, len: usize) -> Result<&mut [u8], DeviceError> {
        let len = len.max(1);
        if self.staging.as_ref().is_none_or(|s| s.len() < len) {
            // SAFETY: the buffer is written before it is read (only `len` bytes are uploaded).
            let pinned = unsafe { self.device.context().alloc_pinned::<u8>(len.next_power_of_two()) }
                .map_err(DeviceError::cuda("pinned alloc"))?;
            self.staging = Some(pinned);
        }
        match self.staging.as_mut() {
            Some(s) => s.as_mut_slice().map_err(DeviceError::cuda("pinned")),
            None => Err(DeviceError::Cuda { operation: "pinned alloc", message: "no buffer".into() }),
        }
    }
}

fn upload<T: DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy>(
    stream: &Arc<CudaStream>,
    buffer: &mut Growing<T>,
    data: &[T],
) -> Result<(), DeviceError> {
    if data.is_empty() {
        return Ok(());
    }
    let dst = buffer.at_least(stream, data.len())?;
    let mut view = dst.slice_mut(..data.len());
    stream.memcpy_htod(data, &mut view).map_err(DeviceError::cuda("upload"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::Letterbox;
    use crate::imaging::linear::{LinearResizer, linear_pixel};

    /// The kernel's letterbox, run on the CPU from the tables the kernel reads, equals the CPU
    /// path's letterbox byte for byte.
    #[test]
    fn letterbox_tables_give_the_cpu_letterbox() {
        let spec = TensorSpec { width: 320, height: 256, bgr: false, mean: [0.0; 3], std: [1.0; 3], pad_value: 114 };
        for (i, &(w, h)) in [(500u32, 333u32), (241, 599), (1280, 720), (97, 61)].iter().enumerate() {
            let image = RgbImage::from_fn(w, h, |x, y| {
                let v = (x * 31 + y * 17 + i as u32 * 7) ^ (x * y);
                image::Rgb([v as u8, (v >> 3) as u8, (v >> 5) as u8])
            });
            let lb = Letterbox::new(w, h, spec.width, spec.height);
            let mut tables = Tables::default();
            tables.push_row(0, &image, RowSource::Letterbox(lb), &spec);
            let r = tables.regions[0];
            assert_eq!((r.linear, r.dst_left, r.dst_top), (1, lb.pad_left as i32, lb.pad_top as i32));
            let axis = |taps: i32, weights: i32, len: u32| LinearAxis {
                first: (0..len as usize).map(|k| tables.starts[taps as usize + k] as u32).collect(),
                second: (0..len as usize).map(|k| tables.counts[taps as usize + k] as u32).collect(),
                weights: (0..len as usize)
                    .map(|k| [tables.weights[weights as usize + 2 * k], tables.weights[weights as usize + 2 * k + 1]])
                    .collect(),
            };
            let x = axis(r.taps_x, r.weights_x, lb.resized_width);
            let y = axis(r.taps_y, r.weights_y, lb.resized_height);
            let mut expected = Vec::new();
            LinearResizer::default().resize(image.as_raw(), w, h, lb.resized_width, lb.resized_height, &mut expected);
            for oy in 0..lb.resized_height as usize {
                for ox in 0..lb.resized_width as usize {
                    let at = (oy * lb.resized_width as usize + ox) * 3;
                    assert_eq!(
                        linear_pixel(image.as_raw(), w, &x, &y, ox, oy),
                        expected[at..at + 3],
                        "{w}x{h} at {ox},{oy}"
                    );
                }
            }
        }
    }
}
