//! The fixed-point taps of `fast_image_resize`'s bilinear u8 resize (Pillow-SIMD's scheme), as tables
//! a GPU kernel can read. The CPU path resizes with `fast_image_resize` itself; the `cuda` kernels
//! resize with these tables and so produce the same bytes. `resample_rgb` is the kernels' arithmetic
//! on the CPU, which tests compare with `fast_image_resize` bit for bit.

/// Bits of the fixed-point accumulator left for the result: 8 for a u8, 2 for overflow.
const PRECISION_BITS: u8 = 32 - 8 - 2;
/// Coefficients are stored as i16.
const MAX_COEFFS_PRECISION: u8 = 16 - 1;

/// One axis of a resize: for each output coordinate, the first source coordinate it reads, how
/// many it reads, and their weights (`window` slots each, zero past `counts`).
#[derive(Debug, Clone, PartialEq)]
pub struct AxisTaps {
    pub precision: u8,
    pub window: usize,
    pub starts: Vec<i32>,
    pub counts: Vec<i32>,
    pub weights: Vec<i16>,
}

impl AxisTaps {
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Output coordinate `i` copies source coordinate `offset + i`.
    pub fn identity(offset: u32, out_size: u32) -> Self {
        let precision = PRECISION_BITS.min(MAX_COEFFS_PRECISION - 1);
        Self {
            precision,
            window: 1,
            starts: (0..out_size).map(|i| (offset + i) as i32).collect(),
            counts: vec![1; out_size as usize],
            weights: vec![1i16 << precision; out_size as usize],
        }
    }

    /// The bilinear (triangle) filter over source range `in0..in1` of an axis `in_size` long, as
    /// `fast_image_resize`'s `precompute_coefficients` for `ResizeAlg::Interpolation`: the kernel is
    /// not widened when downscaling (OpenCV's INTER_LINEAR, which Ultralytics' letterbox uses).
    pub fn bilinear(in_size: u32, in0: f64, in1: f64, out_size: u32) -> Self {
        let empty = Self { precision: 0, window: 0, starts: Vec::new(), counts: Vec::new(), weights: Vec::new() };
        if in_size == 0 || out_size == 0 {
            return empty;
        }
        let scale = (in1 - in0) / f64::from(out_size);
        if scale <= 0.0 {
            return empty;
        }
        // Support 1.0, never scaled.
        let radius = 1.0f64;
        let window = 3;
        let mut coeffs: Vec<f64> = Vec::with_capacity(window * out_size as usize);
        let mut starts = Vec::with_capacity(out_size as usize);
        let mut counts = Vec::with_capacity(out_size as usize);
        for out in 0..out_size {
            let in_center = in0 + (f64::from(out) + 0.5) * scale;
            let x_min = (in_center - radius).floor().max(0.0) as u32;
            let x_max = (in_center + radius).ceil().min(f64::from(in_size)) as u32;
            let first = coeffs.len();
            let center = in_center - 0.5;
            let (mut bound_start, mut bound_end) = (x_min, x_max);
            let mut sum = 0.0;
            for x in x_min..x_max {
                let w = triangle(f64::from(x) - center);
                if x == bound_start && w == 0.0 {
                    bound_start += 1;
                } else {
                    coeffs.push(w);
                    sum += w;
                }
            }
            for &c in coeffs.iter().rev() {
                if bound_end <= bound_start || c != 0.0 {
                    break;
                }
                bound_end -= 1;
            }
            if sum != 0.0 {
                coeffs[first..].iter_mut().for_each(|w| *w /= sum);
            }
            coeffs.resize(first + window, 0.0);
            starts.push(bound_start as i32);
            counts.push(bound_end.saturating_sub(bound_start) as i32);
        }
        // Fixed point: the largest precision whose largest weight still fits an i16.
        let max_weight = coeffs.iter().copied().fold(0.0f64, f64::max);
        let mut precision = 0u8;
        for candidate in 0..PRECISION_BITS {
            precision = candidate;
            let next = (max_weight * f64::from(1u32 << (candidate + 1))).round() as i32;
            if next >= (1 << MAX_COEFFS_PRECISION) {
                break;
            }
        }
        let scale = f64::from(1u32 << precision);
        let mut weights = vec![0i16; window * out_size as usize];
        for (i, chunk) in coeffs.chunks_exact(window).enumerate() {
            for (k, &w) in chunk.iter().take(counts[i] as usize).enumerate() {
                weights[i * window + k] = (w * scale).round() as i16;
            }
        }
        Self { precision, window, starts, counts, weights }
    }

    /// One output value from `read(source coordinate)`, rounded and clipped as `fast_image_resize`.
    fn apply(&self, i: usize, read: impl Fn(usize) -> i32) -> u8 {
        let mut acc = 1i32 << (self.precision - 1);
        let start = self.starts[i] as usize;
        for k in 0..self.counts[i] as usize {
            acc += read(start + k) * i32::from(self.weights[i * self.window + k]);
        }
        (acc >> self.precision).clamp(0, 255) as u8
    }
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// A source rectangle (`left`, `top`, `width`, `height` in whole or fractional pixels) resized to
/// `dst_width`×`dst_height`: the two axes' taps, identity where `fast_image_resize` skips a pass.
pub fn resize_taps(
    src_width: u32,
    src_height: u32,
    crop: [f64; 4],
    dst_width: u32,
    dst_height: u32,
) -> (AxisTaps, AxisTaps) {
    let [left, top, width, height] = crop;
    let need_x = f64::from(dst_width) != width || left != left.round();
    let need_y = f64::from(dst_height) != height || top != top.round();
    let x = if need_x {
        AxisTaps::bilinear(src_width, left, left + width, dst_width)
    } else {
        AxisTaps::identity(left as u32, dst_width)
    };
    let y = if need_y {
        AxisTaps::bilinear(src_height, top, top + height, dst_height)
    } else {
        AxisTaps::identity(top as u32, dst_height)
    };
    (x, y)
}

/// The GPU kernels' resize on the CPU: vertical pass to u8, then horizontal pass, per output pixel.
/// `src` is RGB8 rows of `src_width` pixels; the result is RGB8, `x.len()`×`y.len()`.
pub fn resample_rgb(src: &[u8], src_width: u32, x: &AxisTaps, y: &AxisTaps) -> Vec<u8> {
    let stride = src_width as usize * 3;
    let mut out = Vec::with_capacity(x.len() * y.len() * 3);
    for oy in 0..y.len() {
        for ox in 0..x.len() {
            for c in 0..3 {
                let value = x.apply(ox, |sx| i32::from(y.apply(oy, |sy| i32::from(src[sy * stride + sx * 3 + c]))));
                out.push(value);
            }
        }
    }
    out
}

/// A deterministic pseudo-random RGB8 image (no zeros-only shortcuts), for the resize tests.
#[cfg(test)]
pub(crate) fn noise(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..width as usize * height as usize * 3)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use fast_image_resize::images::Image;
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

    use super::*;

    fn fir(src: &[u8], sw: u32, sh: u32, crop: [f64; 4], dw: u32, dh: u32) -> Vec<u8> {
        let image = Image::from_vec_u8(sw, sh, src.to_vec(), PixelType::U8x3).expect("image");
        let mut dst = Image::new(dw, dh, PixelType::U8x3);
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Interpolation(FilterType::Bilinear))
            .crop(crop[0], crop[1], crop[2], crop[3]);
        Resizer::new().resize(&image, &mut dst, &options).expect("resize");
        dst.into_vec()
    }

    #[test]
    fn tables_reproduce_fast_image_resize_bit_for_bit() {
        // (source, crop, destination): letterbox down and up, one axis only, crops of odd sizes.
        type Case = ((u32, u32), [f64; 4], (u32, u32));
        let cases: &[Case] = &[
            ((768, 576), [0.0, 0.0, 768.0, 576.0], (416, 312)),
            ((1280, 720), [0.0, 0.0, 1280.0, 720.0], (640, 360)),
            ((100, 51), [0.0, 0.0, 100.0, 51.0], (64, 33)),
            ((120, 90), [0.0, 0.0, 120.0, 90.0], (320, 240)),
            ((200, 80), [0.0, 0.0, 200.0, 80.0], (200, 37)),
            ((200, 80), [0.0, 0.0, 200.0, 80.0], (57, 80)),
            ((768, 576), [301.0, 97.0, 43.0, 131.0], (128, 256)),
            ((768, 576), [0.0, 500.0, 768.0, 76.0], (64, 128)),
            ((640, 480), [10.0, 20.0, 4.0, 3.0], (4, 3)),
        ];
        for (i, &((sw, sh), crop, (dw, dh))) in cases.iter().enumerate() {
            let src = noise(sw, sh, i as u64);
            let (x, y) = resize_taps(sw, sh, crop, dw, dh);
            let ours = resample_rgb(&src, sw, &x, &y);
            let theirs = fir(&src, sw, sh, crop, dw, dh);
            let differing = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 0, "case {i}: {differing} of {} bytes differ", ours.len());
        }
    }

    #[test]
    fn identity_taps_copy_pixels() {
        let taps = AxisTaps::identity(3, 4);
        assert_eq!(taps.starts, vec![3, 4, 5, 6]);
        assert_eq!(taps.apply(2, |s| s as i32 * 10), 50);
    }
}
