//! Crops of detected objects, stretched to an embedder's input (as the DeepSORT reference does with
//! `cv2.resize` on the box's pixels).

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions};
use image::RgbImage;

use super::letterbox::{LetterboxError, Preprocessor, TensorSpec, write_planes};

/// A box in source pixels: (x1, y1) top-left, (x2, y2) bottom-right.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

/// What one row of a model's input batch is made from: a whole frame letterboxed, or one box of
/// it stretched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowSource {
    Letterbox(super::Letterbox),
    Crop(CropBox),
}

impl Preprocessor {
    /// Crops `region` (clipped to the image; whole pixels, truncated as the reference does) and
    /// stretches it into `out` ([3, h, w] f32, normalised per `spec`). A region with no pixels
    /// inside the image fills the tensor with the spec's padding value.
    pub fn crop_into(
        &mut self,
        image: &RgbImage,
        region: CropBox,
        spec: &TensorSpec,
        out: &mut [f32],
    ) -> Result<(), LetterboxError> {
        if out.len() != spec.len() {
            return Err(LetterboxError::BufferSize { expected: spec.len(), actual: out.len() });
        }
        let (iw, ih) = (image.width() as f32, image.height() as f32);
        let x1 = region.x1.trunc().clamp(0.0, iw);
        let y1 = region.y1.trunc().clamp(0.0, ih);
        let x2 = region.x2.trunc().clamp(0.0, iw);
        let y2 = region.y2.trunc().clamp(0.0, ih);
        if x2 - x1 < 1.0 || y2 - y1 < 1.0 || !(x1.is_finite() && y1.is_finite()) {
            let pad = super::letterbox::normalization_tables(spec);
            let plane = spec.len() / 3;
            for c in 0..3 {
                out[c * plane..(c + 1) * plane].fill(pad[c][usize::from(spec.pad_value)]);
            }
            return Ok(());
        }
        let mut dst = Image::new(spec.width, spec.height, PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Interpolation(FilterType::Bilinear)).crop(
            f64::from(x1),
            f64::from(y1),
            f64::from(x2 - x1),
            f64::from(y2 - y1),
        );
        self.resizer.resize(image, &mut dst, &options).map_err(|e| LetterboxError::Resize(e.to_string()))?;
        write_planes(dst.buffer(), spec.width as usize, spec, out, 0, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(width: u32, height: u32) -> TensorSpec {
        TensorSpec { width, height, bgr: false, mean: [0.0; 3], std: [1.0; 3], pad_value: 7 }
    }

    #[test]
    fn a_crop_at_its_own_size_copies_pixels_exactly() {
        let img = RgbImage::from_fn(20, 10, |x, y| image::Rgb([x as u8, y as u8, 200]));
        let spec = spec(4, 3);
        let mut out = vec![0.0; spec.len()];
        Preprocessor::new().crop_into(&img, CropBox { x1: 5.7, y1: 2.2, x2: 9.9, y2: 5.0 }, &spec, &mut out).unwrap();
        // Truncated to x 5..9, y 2..5: exactly 4×3, no resampling.
        assert_eq!(&out[..4], &[5.0, 6.0, 7.0, 8.0]);
        assert_eq!(out[12 + 4], 3.0, "green plane, row 1 = y 3");
        assert!(out[24..].iter().all(|&v| v == 200.0));
    }

    #[test]
    fn a_crop_is_stretched_and_clipped_to_the_image() {
        let img = RgbImage::from_fn(10, 10, |x, _| image::Rgb([if x < 5 { 0 } else { 255 }, 0, 0]));
        let spec = spec(2, 2);
        let mut out = vec![0.0; spec.len()];
        // Box spills past the right edge: clipped to x 0..10, then halved.
        Preprocessor::new()
            .crop_into(&img, CropBox { x1: -3.0, y1: 0.0, x2: 30.0, y2: 10.0 }, &spec, &mut out)
            .unwrap();
        assert_eq!(&out[..2], &[0.0, 255.0]);
    }

    #[test]
    fn an_empty_crop_is_padding() {
        let img = RgbImage::new(10, 10);
        let spec = spec(2, 2);
        let mut out = vec![0.0; spec.len()];
        Preprocessor::new().crop_into(&img, CropBox { x1: 12.0, y1: 0.0, x2: 15.0, y2: 5.0 }, &spec, &mut out).unwrap();
        assert!(out.iter().all(|&v| v == 7.0));
    }
}
