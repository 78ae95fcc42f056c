//! Letterboxing into a model's input tensor, exactly as Ultralytics' `LetterBox` (aspect kept, centred,
//! OpenCV's INTER_LINEAR byte for byte, Python's round-half-even), plus the inverse transform that
//! maps boxes back to the original image.

use fast_image_resize::Resizer;
use image::RgbImage;

use super::linear::LinearResizer;

/// What a model wants as input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorSpec {
    pub width: u32,
    pub height: u32,
    /// Channel 0 is blue (BGR models) rather than red.
    pub bgr: bool,
    /// Per tensor channel, in 0..255 units: value = (pixel - mean) / std.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Border fill, in 0..255 units before normalisation.
    pub pad_value: u8,
}

impl TensorSpec {
    /// Floats in one image's tensor: [3, height, width].
    pub fn len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The geometry of one letterbox: source size, scale and padding. Its inverse maps model-input
/// pixels back to source pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub src_width: u32,
    pub src_height: u32,
    pub scale: f64,
    pub resized_width: u32,
    pub resized_height: u32,
    pub pad_left: u32,
    pub pad_top: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum LetterboxError {
    #[error("tensor buffer holds {actual} floats, the model input needs {expected}")]
    BufferSize { expected: usize, actual: usize },
    #[error("resize failed: {0}")]
    Resize(String),
}

impl Letterbox {
    pub fn new(src_width: u32, src_height: u32, dst_width: u32, dst_height: u32) -> Self {
        let (sw, sh) = (f64::from(src_width), f64::from(src_height));
        let (dw, dh) = (f64::from(dst_width), f64::from(dst_height));
        let scale = (dh / sh).min(dw / sw);
        let resized_width = ((sw * scale).round_ties_even() as u32).clamp(1, dst_width);
        let resized_height = ((sh * scale).round_ties_even() as u32).clamp(1, dst_height);
        let pad_w = (dw - f64::from(resized_width)) / 2.0;
        let pad_h = (dh - f64::from(resized_height)) / 2.0;
        Self {
            src_width,
            src_height,
            scale,
            resized_width,
            resized_height,
            pad_left: (pad_w - 0.1).round_ties_even().max(0.0) as u32,
            pad_top: (pad_h - 0.1).round_ties_even().max(0.0) as u32,
        }
    }

    /// Ultralytics' `LetterBox(auto=True)`, as predict letterboxes for a dynamic export: scaled
    /// as into `dst_width`×`dst_height`, but padded only up to a multiple of `stride` on each
    /// axis. Returns the letterbox and the tensor's width and height.
    pub fn to_stride(
        src_width: u32,
        src_height: u32,
        dst_width: u32,
        dst_height: u32,
        stride: u32,
    ) -> (Self, u32, u32) {
        let full = Self::new(src_width, src_height, dst_width, dst_height);
        let stride = stride.max(1);
        let width = full.resized_width + (dst_width - full.resized_width) % stride;
        let height = full.resized_height + (dst_height - full.resized_height) % stride;
        let half = |pad: u32| (f64::from(pad) / 2.0 - 0.1).round_ties_even().max(0.0) as u32;
        let letterbox =
            Self { pad_left: half(width - full.resized_width), pad_top: half(height - full.resized_height), ..full };
        (letterbox, width, height)
    }

    /// Model-input pixels → source pixels, clipped to the source image. Each axis by the ratio it
    /// was actually resized by (resized / source side, the side rounded to whole pixels), as
    /// Ultralytics' `scale_boxes` maps boxes back (8.4).
    pub fn to_source(&self, x: f32, y: f32) -> (f32, f32) {
        let gain_x = f64::from(self.resized_width) / f64::from(self.src_width);
        let gain_y = f64::from(self.resized_height) / f64::from(self.src_height);
        let sx = (f64::from(x) - f64::from(self.pad_left)) / gain_x;
        let sy = (f64::from(y) - f64::from(self.pad_top)) / gain_y;
        (sx.clamp(0.0, f64::from(self.src_width)) as f32, sy.clamp(0.0, f64::from(self.src_height)) as f32)
    }
}

/// Per-thread preprocessing state (the resizers keep scratch buffers between frames).
#[derive(Default)]
pub struct Preprocessor {
    /// Crops for embedders.
    pub(super) resizer: Resizer,
    /// Letterboxes.
    linear: LinearResizer,
    resized: Vec<u8>,
}

impl Preprocessor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Letterboxes `image` into `out` ([3, h, w] f32, normalised per `spec`) and returns its geometry.
    pub fn letterbox_into(
        &mut self,
        image: &RgbImage,
        spec: &TensorSpec,
        out: &mut [f32],
    ) -> Result<Letterbox, LetterboxError> {
        let lb = Letterbox::new(image.width(), image.height(), spec.width, spec.height);
        self.letterbox_with(image, spec, &lb, out)?;
        Ok(lb)
    }

    /// Letterboxes `image` into `out` ([3, h, w] f32 of `spec`'s size) with geometry `lb` (made for
    /// this image and a tensor of `spec`'s size, e.g. by [`Letterbox::to_stride`]).
    pub fn letterbox_with(
        &mut self,
        image: &RgbImage,
        spec: &TensorSpec,
        lb: &Letterbox,
        out: &mut [f32],
    ) -> Result<(), LetterboxError> {
        if out.len() != spec.len() {
            return Err(LetterboxError::BufferSize { expected: spec.len(), actual: out.len() });
        }
        let pixels: &[u8] = if (lb.resized_width, lb.resized_height) == image.dimensions() {
            image.as_raw()
        } else {
            let (w, h) = image.dimensions();
            self.linear.resize(image.as_raw(), w, h, lb.resized_width, lb.resized_height, &mut self.resized);
            &self.resized
        };

        let (w, h) = (spec.width as usize, spec.height as usize);
        let pad = normalization_tables(spec);
        for c in 0..3 {
            out[c * w * h..(c + 1) * w * h].fill(pad[c][usize::from(spec.pad_value)]);
        }
        write_planes(pixels, lb.resized_width as usize, spec, out, lb.pad_left as usize, lb.pad_top as usize);
        Ok(())
    }
}

/// Per tensor channel: 256-entry table of normalised values.
pub(crate) fn normalization_tables(spec: &TensorSpec) -> [[f32; 256]; 3] {
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, slot) in table.iter_mut().enumerate() {
            *slot = (v as f32 - spec.mean[c]) / spec.std[c];
        }
    }
    lut
}

/// Writes RGB8 `pixels` (rows of `width` pixels) into `out` ([3, spec.height, spec.width]) at
/// (`left`, `top`), normalised and in the spec's channel order.
pub(super) fn write_planes(pixels: &[u8], width: usize, spec: &TensorSpec, out: &mut [f32], left: usize, top: usize) {
    let lut = normalization_tables(spec);
    // Tensor channel c reads RGB channel src[c].
    let src = if spec.bgr { [2usize, 1, 0] } else { [0usize, 1, 2] };
    let w = spec.width as usize;
    let plane = w * spec.height as usize;
    for (row, line) in pixels.chunks_exact(width * 3).enumerate() {
        let base = (top + row) * w + left;
        for c in 0..3 {
            let table = &lut[c];
            let dst = &mut out[c * plane + base..c * plane + base + width];
            for (d, px) in dst.iter_mut().zip(line.chunks_exact(3)) {
                *d = table[usize::from(px[src[c]])];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtest_frame_geometry_matches_ultralytics() {
        // 768x576 into 416x416: r = 0.5417, 416x312, 52 px top and bottom.
        let lb = Letterbox::new(768, 576, 416, 416);
        assert_eq!((lb.resized_width, lb.resized_height), (416, 312));
        assert_eq!((lb.pad_left, lb.pad_top), (0, 52));
        // 1280x720 into 640x640: 640x360, dh = 140.
        let lb = Letterbox::new(1280, 720, 640, 640);
        assert_eq!((lb.resized_width, lb.resized_height, lb.pad_left, lb.pad_top), (640, 360, 0, 140));
        // Odd padding: 100x51 into 64x64 → r = 0.64, 64x33 (32.64 → 33), dh = 15.5 → top round(15.4) = 15.
        let lb = Letterbox::new(100, 51, 64, 64);
        assert_eq!((lb.resized_width, lb.resized_height, lb.pad_left, lb.pad_top), (64, 33, 0, 15));
    }

    #[test]
    fn stride_letterbox_matches_ultralytics_auto() {
        // Ultralytics 8.4.190 `LetterBox((320, 320), auto=True, stride=32)`:
        // (source) -> (resized, (left, top), tensor width x height).
        let cases = [
            ((500, 333), (320, 213), (0, 5), (320, 224)),
            ((241, 599), (129, 320), (15, 0), (160, 320)),
            ((1280, 720), (320, 180), (0, 6), (320, 192)),
            ((97, 61), (320, 201), (0, 11), (320, 224)),
            ((320, 240), (320, 240), (0, 8), (320, 256)),
            ((200, 320), (200, 320), (12, 0), (224, 320)),
        ];
        for ((sw, sh), resized, pad, tensor) in cases {
            let (lb, w, h) = Letterbox::to_stride(sw, sh, 320, 320, 32);
            assert_eq!((lb.resized_width, lb.resized_height), resized, "{sw}x{sh}");
            assert_eq!((lb.pad_left, lb.pad_top), pad, "{sw}x{sh}");
            assert_eq!((w, h), tensor, "{sw}x{sh}");
            assert_eq!(lb.scale, Letterbox::new(sw, sh, 320, 320).scale);
        }
    }

    #[test]
    fn python_rounding_is_half_to_even() {
        // 10x5 into 5x5: r = 0.5, height 2.5 rounds to 2 (not 3), dh = 1.5 → top = round(1.4) = 1.
        let lb = Letterbox::new(10, 5, 5, 5);
        assert_eq!((lb.resized_width, lb.resized_height, lb.pad_top), (5, 2, 1));
        // 3x5 into 7x7: r = 1.4, 4.2 → 4 wide, dw = 1.5 → left = round(1.4) = 1.
        let lb = Letterbox::new(3, 5, 7, 7);
        assert_eq!((lb.resized_width, lb.resized_height, lb.pad_left, lb.pad_top), (4, 7, 1, 0));
        // 5x2 into 3x3 → r = 0.6: 3x1.2 → 3x1, dh = 1 → top = round(0.9) = 1.
        let lb = Letterbox::new(5, 2, 3, 3);
        assert_eq!((lb.resized_width, lb.resized_height, lb.pad_top), (3, 1, 1));
    }

    #[test]
    fn inverse_maps_model_pixels_back_to_source() {
        let lb = Letterbox::new(768, 576, 416, 416);
        let (x, y) = lb.to_source(208.0, 52.0 + 156.0);
        assert!((x - 384.0).abs() < 1e-3 && (y - 288.0).abs() < 1e-3, "{x} {y}");
        // Padding maps outside the image and is clipped.
        assert_eq!(lb.to_source(0.0, 0.0), (0.0, 0.0));
        assert_eq!(lb.to_source(416.0, 416.0), (768.0, 576.0));
    }

    #[test]
    fn tensor_is_normalised_chw_with_padding_and_channel_order() {
        let spec = TensorSpec {
            width: 4,
            height: 4,
            bgr: true,
            mean: [10.0, 20.0, 30.0],
            std: [2.0, 4.0, 5.0],
            pad_value: 114,
        };
        // 4x2 source: no resize, 1 row of padding top and bottom.
        let img = RgbImage::from_fn(4, 2, |x, _| image::Rgb([100 + x as u8, 50, 0]));
        let mut out = vec![0.0; spec.len()];
        let lb = Preprocessor::new().letterbox_into(&img, &spec, &mut out).expect("letterbox");
        assert_eq!((lb.pad_left, lb.pad_top), (0, 1));
        let at = |c: usize, y: usize, x: usize| out[c * 16 + y * 4 + x];
        // Row 0 is padding: (114 - mean) / std per channel.
        assert_eq!(at(0, 0, 0), (114.0 - 10.0) / 2.0);
        assert_eq!(at(2, 3, 3), (114.0 - 30.0) / 5.0);
        // Row 1 is the image: channel 0 = blue (0), channel 2 = red (100 + x).
        assert_eq!(at(0, 1, 2), (0.0 - 10.0) / 2.0);
        assert_eq!(at(1, 1, 2), (50.0 - 20.0) / 4.0);
        assert_eq!(at(2, 1, 3), (103.0 - 30.0) / 5.0);
    }

    #[test]
    fn wrong_buffer_size_is_an_error() {
        let spec = TensorSpec { width: 2, height: 2, bgr: false, mean: [0.0; 3], std: [1.0; 3], pad_value: 0 };
        let img = RgbImage::new(2, 2);
        assert!(Preprocessor::new().letterbox_into(&img, &spec, &mut [0.0; 5]).is_err());
    }
}
