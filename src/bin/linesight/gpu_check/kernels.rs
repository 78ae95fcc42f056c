//! The GPU kernels against their CPU twins on random inputs: every output element compared, the
//! output poisoned (NaN) before each launch so an unwritten element shows.

use image::RgbImage;
use serde::Serialize;

use linesight::cuda::GpuDevice;
use linesight::imaging::gpu::{FrameRows, GpuPreprocessor, TensorElement};
use linesight::imaging::{CropBox, Letterbox, Preprocessor, RowSource, TensorSpec};
use linesight::segment::paste_mask;

#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    pub kernel: String,
    pub rows: usize,
    pub elements: usize,
    /// Largest |GPU − CPU| over all elements (f16: against the CPU's f32).
    pub max_abs_diff: f64,
    /// Elements that differ (f16: by more than its rounding), or are not finite.
    pub mismatches: usize,
}

impl KernelCheck {
    pub fn passed(&self) -> bool {
        self.mismatches == 0
    }
}

/// A small deterministic generator: checks are repeatable, inputs are not zeros.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 1_000_000) as f32 / 1_000_000.0
    }
    fn image(&mut self, width: u32, height: u32) -> RgbImage {
        let data = (0..width as usize * height as usize * 3).map(|_| (self.next() >> 40) as u8).collect();
        RgbImage::from_raw(width, height, data).unwrap_or_default()
    }
}

fn spec(width: u32, height: u32, bgr: bool) -> TensorSpec {
    TensorSpec { width, height, bgr, mean: [103.53, 116.28, 123.675], std: [57.375, 57.12, 58.395], pad_value: 114 }
}

fn as_f32(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn as_f16(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
}

/// Compares a GPU tensor with the CPU's. `tolerance(cpu)` is the allowed |diff| per element.
fn compare(kernel: &str, rows: usize, gpu: &[f32], cpu: &[f32], tolerance: impl Fn(f32) -> f32) -> KernelCheck {
    let mut max_abs_diff = 0f64;
    let mut mismatches = 0;
    for (&g, &c) in gpu.iter().zip(cpu) {
        let d = (g - c).abs();
        if !g.is_finite() || d > tolerance(c) {
            mismatches += 1;
        }
        if d.is_finite() {
            max_abs_diff = max_abs_diff.max(f64::from(d));
        } else {
            max_abs_diff = f64::INFINITY;
        }
    }
    mismatches += gpu.len().abs_diff(cpu.len());
    KernelCheck { kernel: kernel.to_owned(), rows, elements: cpu.len(), max_abs_diff, mismatches }
}

fn letterbox_batch(
    gpu: &mut GpuPreprocessor,
    rng: &mut Lcg,
    spec: &TensorSpec,
    element: TensorElement,
) -> Result<(Vec<f32>, Vec<f32>, usize), String> {
    let sizes = [(768, 576), (1280, 720), (1920, 1080), (640, 480), (333, 517), (416, 416), (97, 1203)];
    let images: Vec<RgbImage> = sizes.iter().map(|&(w, h)| rng.image(w, h)).collect();
    let rows: Vec<[RowSource; 1]> = images
        .iter()
        .map(|i| [RowSource::Letterbox(Letterbox::new(i.width(), i.height(), spec.width, spec.height))])
        .collect();
    let frames: Vec<FrameRows<'_>> = images.iter().zip(&rows).map(|(image, rows)| FrameRows { image, rows }).collect();
    let bytes = images.len() * spec.len() * element.size();
    gpu.poison_output(bytes).map_err(|e| e.to_string())?;
    gpu.preprocess(&frames, spec, element, 0).map_err(|e| e.to_string())?;
    let out = gpu.download_output(bytes).map_err(|e| e.to_string())?;
    let gpu_values = match element {
        TensorElement::F32 => as_f32(&out),
        TensorElement::F16 => as_f16(&out),
    };
    let mut cpu = vec![0f32; images.len() * spec.len()];
    let mut pre = Preprocessor::new();
    for (image, out) in images.iter().zip(cpu.chunks_exact_mut(spec.len())) {
        pre.letterbox_into(image, spec, out).map_err(|e| e.to_string())?;
    }
    Ok((gpu_values, cpu, images.len()))
}

/// Runs every kernel check on `device`.
pub fn check_kernels(device: &GpuDevice) -> Result<Vec<KernelCheck>, String> {
    let mut gpu = GpuPreprocessor::new(device).map_err(|e| e.to_string())?;
    let mut rng = Lcg(0x5eed_1234);
    let mut checks = Vec::new();

    for (name, spec) in
        [("letterbox f32 416 BGR", spec(416, 416, true)), ("letterbox f32 640 RGB", spec(640, 640, false))]
    {
        let (g, c, rows) = letterbox_batch(&mut gpu, &mut rng, &spec, TensorElement::F32)?;
        checks.push(compare(name, rows, &g, &c, |_| 0.0));
    }
    let spec416 = spec(416, 416, true);
    let (g, c, rows) = letterbox_batch(&mut gpu, &mut rng, &spec416, TensorElement::F16)?;
    // f16 keeps 11 significant bits: round-to-nearest is within 2^-11 of the value, relative.
    checks.push(compare("letterbox f16 416 BGR", rows, &g, &c, |v| v.abs() * 2f32.powi(-11) + 1e-7));

    // Crops: boxes inside, spilling over edges, sub-pixel, empty, degenerate.
    let image = rng.image(768, 576);
    let crop_spec = TensorSpec {
        width: 64,
        height: 128,
        bgr: false,
        mean: [123.675, 116.28, 103.53],
        std: [58.395, 57.12, 57.375],
        pad_value: 0,
    };
    let mut boxes: Vec<RowSource> = (0..60)
        .map(|_| {
            let x1 = rng.unit() * 900.0 - 60.0;
            let y1 = rng.unit() * 700.0 - 60.0;
            let w = rng.unit() * 300.0 + 0.5;
            let h = rng.unit() * 400.0 + 0.5;
            RowSource::Crop(CropBox { x1, y1, x2: x1 + w, y2: y1 + h })
        })
        .collect();
    boxes.push(RowSource::Crop(CropBox { x1: 10.0, y1: 10.0, x2: 10.5, y2: 300.0 }));
    boxes.push(RowSource::Crop(CropBox { x1: 800.0, y1: 10.0, x2: 900.0, y2: 300.0 }));
    boxes.push(RowSource::Crop(CropBox { x1: 0.0, y1: 0.0, x2: 768.0, y2: 576.0 }));
    let bytes = boxes.len() * crop_spec.len() * 4;
    gpu.poison_output(bytes).map_err(|e| e.to_string())?;
    gpu.preprocess(&[FrameRows { image: &image, rows: &boxes }], &crop_spec, TensorElement::F32, 0)
        .map_err(|e| e.to_string())?;
    let g = as_f32(&gpu.download_output(bytes).map_err(|e| e.to_string())?);
    let mut c = vec![0f32; boxes.len() * crop_spec.len()];
    let mut pre = Preprocessor::new();
    for (row, out) in boxes.iter().zip(c.chunks_exact_mut(crop_spec.len())) {
        if let RowSource::Crop(b) = row {
            pre.crop_into(&image, *b, &crop_spec, out).map_err(|e| e.to_string())?;
        }
    }
    checks.push(compare("crop-and-stretch f32 64x128", boxes.len(), &g, &c, |_| 0.0));

    // Mask paste: random 28×28 probabilities into random boxes on a 300×300 EL cell.
    let side = 28;
    let instances = 64;
    let masks: Vec<f32> = (0..instances * side * side).map(|_| rng.unit()).collect();
    let boxes: Vec<[f32; 4]> = (0..instances)
        .map(|_| {
            let x1 = rng.unit() * 320.0 - 20.0;
            let y1 = rng.unit() * 320.0 - 20.0;
            [x1, y1, x1 + rng.unit() * 150.0 + 0.3, y1 + rng.unit() * 150.0 + 0.3]
        })
        .collect();
    let paste = linesight::segment::GpuMaskPaste::new(device).map_err(|e| e.to_string())?;
    let pasted = paste.paste_masks(&masks, side, &boxes, 300, 300, 0.5).map_err(|e| e.to_string())?;
    let mut mismatches = 0;
    let mut elements = 0;
    for (i, (g, b)) in pasted.iter().zip(&boxes).enumerate() {
        let c = paste_mask(&masks[i * side * side..(i + 1) * side * side], side, *b, 300, 300, 0.5);
        if (g.left, g.top, g.width, g.height) != (c.left, c.top, c.width, c.height) {
            mismatches += c.pixels.len().max(1);
            continue;
        }
        elements += c.pixels.len();
        mismatches += g.pixels.iter().zip(&c.pixels).filter(|(a, b)| a != b).count();
    }
    checks.push(KernelCheck {
        kernel: "mask paste 28x28 -> 300x300".into(),
        rows: instances,
        elements,
        max_abs_diff: if mismatches == 0 { 0.0 } else { 1.0 },
        mismatches,
    });
    Ok(checks)
}
