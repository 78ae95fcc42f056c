//! Drawing detections onto a frame: coloured boxes and labels in an 8x8 bitmap font.

use std::io::Cursor;

use font8x8::UnicodeFonts;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageFormat, Rgb, RgbImage};

/// One box to draw, in image pixels.
#[derive(Debug, Clone)]
pub struct Annotation {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
    pub label: String,
    /// Picks the colour (e.g. the class id), so one class keeps one colour.
    pub color_key: u32,
}

const PALETTE: [[u8; 3]; 10] = [
    [255, 56, 56],
    [255, 157, 151],
    [255, 112, 31],
    [255, 178, 29],
    [207, 210, 49],
    [72, 249, 10],
    [26, 147, 52],
    [0, 212, 187],
    [44, 153, 168],
    [0, 194, 255],
];

/// A binary mask over the pixels `left..left + width`, `top..top + height` (non-zero = covered).
pub struct MaskOverlay<'a> {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
    pub pixels: &'a [u8],
    /// Picks the colour as [`Annotation::color_key`] does.
    pub color_key: u32,
}

/// Tints every covered pixel with its mask's colour at `opacity` (0..=1), so the image under it
/// stays readable; draw boxes and labels afterwards.
pub fn overlay_masks(image: &mut RgbImage, masks: &[MaskOverlay<'_>], opacity: f32) {
    let opacity = opacity.clamp(0.0, 1.0);
    for m in masks {
        let color = PALETTE[m.color_key as usize % PALETTE.len()];
        for row in 0..m.height {
            let y = m.top + row;
            if y >= image.height() {
                break;
            }
            for col in 0..m.width {
                let x = m.left + col;
                let covered = m.pixels.get((row * m.width + col) as usize).is_some_and(|&p| p != 0);
                if x >= image.width() || !covered {
                    continue;
                }
                let pixel = image.get_pixel_mut(x, y);
                for (channel, tint) in pixel.0.iter_mut().zip(color) {
                    *channel = (f32::from(*channel) * (1.0 - opacity) + f32::from(tint) * opacity).round() as u8;
                }
            }
        }
    }
}

pub fn annotate(image: &mut RgbImage, annotations: &[Annotation]) {
    let thickness = (image.width().max(image.height()) / 400).clamp(1, 4) as i64;
    let scale = if image.height() >= 480 { 2 } else { 1 };
    for a in annotations {
        let color = Rgb(PALETTE[a.color_key as usize % PALETTE.len()]);
        let (x1, y1, x2, y2) = (a.x1 as i64, a.y1 as i64, a.x2 as i64, a.y2 as i64);
        for t in 0..thickness {
            draw_rect(image, x1 + t, y1 + t, x2 - t, y2 - t, color);
        }
        let text_h = 8 * scale + 2;
        let text_w = a.label.chars().count() as i64 * 8 * scale + 2;
        let ty = if y1 - text_h >= 0 { y1 - text_h } else { y1 };
        fill_rect(image, x1, ty, x1 + text_w, ty + text_h, color);
        draw_text(image, x1 + 1, ty + 1, &a.label, scale, Rgb([255, 255, 255]));
    }
}

/// A path through `points` (closed back to the first when `closed`), `thickness` pixels wide, with
/// `label` at its first point.
pub fn draw_path(image: &mut RgbImage, points: &[[f32; 2]], closed: bool, label: &str, color: [u8; 3]) {
    let thickness = (image.width().max(image.height()) / 300).clamp(1, 4) as i64;
    let color = Rgb(color);
    let ends = if closed { points.len() } else { points.len().saturating_sub(1) };
    for i in 0..ends {
        let (a, b) = (points[i], points[(i + 1) % points.len()]);
        let steps = (b[0] - a[0]).abs().max((b[1] - a[1]).abs()).ceil().max(1.0) as i64;
        for step in 0..=steps {
            let t = step as f32 / steps as f32;
            let (x, y) = ((a[0] + t * (b[0] - a[0])) as i64, (a[1] + t * (b[1] - a[1])) as i64);
            fill_rect(
                image,
                x - thickness / 2,
                y - thickness / 2,
                x - thickness / 2 + thickness,
                y - thickness / 2 + thickness,
                color,
            );
        }
    }
    if let Some(first) = points.first()
        && !label.is_empty()
    {
        let scale = if image.height() >= 480 { 2 } else { 1 };
        let (x, y) = (first[0] as i64 + 2, first[1] as i64 + 2);
        fill_rect(image, x, y, x + label.chars().count() as i64 * 8 * scale + 2, y + 8 * scale + 2, color);
        draw_text(image, x + 1, y + 1, label, scale, Rgb([0, 0, 0]));
    }
}

/// Lines of text in the frame's top-left corner on a dark band.
pub fn caption(image: &mut RgbImage, lines: &[String]) {
    let scale = if image.height() >= 480 { 2 } else { 1 };
    let line_h = 8 * scale + 2;
    for (i, text) in lines.iter().enumerate() {
        let y = i as i64 * line_h;
        fill_rect(image, 0, y, text.chars().count() as i64 * 8 * scale + 4, y + line_h, Rgb([20, 20, 20]));
        draw_text(image, 2, y + 1, text, scale, Rgb([255, 255, 255]));
    }
}

fn put(image: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u64) < u64::from(image.width()) && (y as u64) < u64::from(image.height()) {
        image.put_pixel(x as u32, y as u32, color);
    }
}

fn draw_rect(image: &mut RgbImage, x1: i64, y1: i64, x2: i64, y2: i64, color: Rgb<u8>) {
    if x2 < x1 || y2 < y1 {
        return;
    }
    for x in x1..=x2 {
        put(image, x, y1, color);
        put(image, x, y2, color);
    }
    for y in y1..=y2 {
        put(image, x1, y, color);
        put(image, x2, y, color);
    }
}

fn fill_rect(image: &mut RgbImage, x1: i64, y1: i64, x2: i64, y2: i64, color: Rgb<u8>) {
    let (w, h) = (i64::from(image.width()), i64::from(image.height()));
    for y in y1.max(0)..y2.min(h) {
        for x in x1.max(0)..x2.min(w) {
            image.put_pixel(x as u32, y as u32, color);
        }
    }
}

fn draw_text(image: &mut RgbImage, x: i64, y: i64, text: &str, scale: i64, color: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS.get(ch).or_else(|| font8x8::BASIC_FONTS.get('?'));
        let Some(glyph) = glyph else { continue };
        let gx = x + i as i64 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(image, gx + col * scale + dx, y + row as i64 * scale + dy, color);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod overlay_tests {
    use super::*;

    #[test]
    fn a_path_is_drawn_between_its_points_and_nowhere_else() {
        let mut image = RgbImage::from_pixel(20, 20, Rgb([0, 0, 0]));
        draw_path(&mut image, &[[10.0, 2.0], [10.0, 17.0]], false, "", [255, 255, 0]);
        assert_eq!(image.get_pixel(10, 9).0, [255, 255, 0]);
        assert_eq!(image.get_pixel(10, 17).0, [255, 255, 0]);
        assert_eq!(image.get_pixel(10, 19).0, [0, 0, 0], "past the end");
        assert_eq!(image.get_pixel(13, 9).0, [0, 0, 0], "beside it");
    }

    #[test]
    fn a_mask_tints_only_its_covered_pixels_inside_the_image() {
        let mut image = RgbImage::from_pixel(4, 4, Rgb([0, 0, 0]));
        let pixels = [1u8, 0, 1, 1, 1, 1];
        let mask = MaskOverlay { left: 2, top: 2, width: 3, height: 2, pixels: &pixels, color_key: 0 };
        overlay_masks(&mut image, &[mask], 0.5);
        assert_eq!(image.get_pixel(2, 2).0, [128, 28, 28]);
        assert_eq!(image.get_pixel(3, 2).0, [0, 0, 0], "not covered");
        assert_eq!(image.get_pixel(3, 3).0, [128, 28, 28]);
        assert_eq!(image.get_pixel(1, 1).0, [0, 0, 0], "outside the mask");
    }
}

pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)?;
    Ok(out)
}

pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality).encode_image(image)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_outline_and_label_are_drawn_in_class_colour() {
        let mut img = RgbImage::new(100, 100);
        let a = Annotation { x1: 20.0, y1: 30.0, x2: 60.0, y2: 80.0, label: "A".into(), color_key: 0 };
        annotate(&mut img, &[a]);
        assert_eq!(img.get_pixel(40, 80).0, PALETTE[0], "bottom edge");
        assert_eq!(img.get_pixel(60, 50).0, PALETTE[0], "right edge");
        assert_eq!(img.get_pixel(40, 55).0, [0, 0, 0], "inside stays untouched");
        // The label sits above the box; some of its pixels are white glyph pixels.
        let white = (20..30)
            .flat_map(|x| (20..30).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0 == [255, 255, 255]);
        assert!(white.count() > 0);
    }

    #[test]
    fn boxes_outside_the_image_do_not_panic() {
        let mut img = RgbImage::new(10, 10);
        let a = Annotation { x1: -50.0, y1: -50.0, x2: 500.0, y2: 500.0, label: "x".into(), color_key: 3 };
        annotate(&mut img, &[a]);
    }
}
