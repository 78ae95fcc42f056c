//! Mask paste: an m×m probability mask predicted for a box becomes a binary mask over the image
//! pixels the box covers. Each pixel centre is mapped into the mask (half-pixel centres, so the
//! mask's cells span the box evenly), sampled bilinearly with edges clamped, and kept when the
//! probability reaches the threshold. The `cuda` kernel does the same arithmetic in the same order
//! (no fused multiply-add), so its masks equal these exactly.

/// A binary mask over the image pixels `left..left + width`, `top..top + height` (1 = object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastedMask {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// The whole pixels a box `[x1, y1, x2, y2]` touches, clipped to the image: (left, top, width, height).
pub fn paste_region(bbox: [f32; 4], image_width: u32, image_height: u32) -> (u32, u32, u32, u32) {
    if !bbox.iter().all(|v| v.is_finite()) {
        return (0, 0, 0, 0);
    }
    let clip = |v: f32, max: u32| v.clamp(0.0, max as f32);
    let left = clip(bbox[0].floor(), image_width) as u32;
    let top = clip(bbox[1].floor(), image_height) as u32;
    let right = clip(bbox[2].ceil(), image_width) as u32;
    let bottom = clip(bbox[3].ceil(), image_height) as u32;
    (left, top, right.saturating_sub(left), bottom.saturating_sub(top))
}

/// Pastes `mask` (`side`×`side` probabilities, row-major) into box `bbox` of an image
/// `image_width`×`image_height`.
pub fn paste_mask(
    mask: &[f32],
    side: usize,
    bbox: [f32; 4],
    image_width: u32,
    image_height: u32,
    threshold: f32,
) -> PastedMask {
    let (left, top, width, height) = paste_region(bbox, image_width, image_height);
    let mut pixels = vec![0u8; width as usize * height as usize];
    if side > 0 && mask.len() >= side * side {
        for row in 0..height {
            for col in 0..width {
                let p = sample(mask, side, bbox, (left + col) as f32, (top + row) as f32);
                pixels[(row * width + col) as usize] = u8::from(p >= threshold);
            }
        }
    }
    PastedMask { left, top, width, height, pixels }
}

/// The mask's probability at image pixel (x, y)'s centre. The operation order is the kernel's.
fn sample(mask: &[f32], side: usize, bbox: [f32; 4], x: f32, y: f32) -> f32 {
    let m = side as f32;
    let bw = (bbox[2] - bbox[0]).max(1e-6);
    let bh = (bbox[3] - bbox[1]).max(1e-6);
    let u = ((x + 0.5 - bbox[0]) / bw) * m - 0.5;
    let v = ((y + 0.5 - bbox[1]) / bh) * m - 0.5;
    let u = u.clamp(0.0, m - 1.0);
    let v = v.clamp(0.0, m - 1.0);
    let (u0, v0) = (u.floor(), v.floor());
    let (fu, fv) = (u - u0, v - v0);
    let (i0, j0) = (u0 as usize, v0 as usize);
    let (i1, j1) = ((i0 + 1).min(side - 1), (j0 + 1).min(side - 1));
    let at = |i: usize, j: usize| mask[j * side + i];
    let top = at(i0, j0) * (1.0 - fu) + at(i1, j0) * fu;
    let bottom = at(i0, j1) * (1.0 - fu) + at(i1, j1) * fu;
    top * (1.0 - fv) + bottom * fv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_mask_covers_its_box_and_nothing_else() {
        let mask = vec![0.9f32; 28 * 28];
        let pasted = paste_mask(&mask, 28, [10.2, 5.0, 20.0, 15.5], 64, 64, 0.5);
        assert_eq!((pasted.left, pasted.top, pasted.width, pasted.height), (10, 5, 10, 11));
        assert!(pasted.pixels.iter().all(|&p| p == 1));
    }

    #[test]
    fn the_left_half_of_a_mask_lands_on_the_left_half_of_the_box() {
        let mask: Vec<f32> = (0..28 * 28).map(|i| if i % 28 < 14 { 1.0 } else { 0.0 }).collect();
        let pasted = paste_mask(&mask, 28, [0.0, 0.0, 56.0, 28.0], 100, 100, 0.5);
        assert_eq!(pasted.width, 56);
        let row: Vec<u8> = pasted.pixels[..56].to_vec();
        assert!(row[..27].iter().all(|&p| p == 1) && row[29..].iter().all(|&p| p == 0), "{row:?}");
    }

    #[test]
    fn a_box_outside_the_image_pastes_nothing() {
        let pasted = paste_mask(&[1.0; 4], 2, [120.0, 5.0, 130.0, 9.0], 100, 100, 0.5);
        assert_eq!(pasted.width, 0);
        assert!(pasted.pixels.is_empty());
        let pasted = paste_mask(&[1.0; 4], 2, [f32::NAN, 0.0, 4.0, 4.0], 100, 100, 0.5);
        assert!(pasted.pixels.is_empty(), "a box with a NaN corner covers nothing");
    }
}
