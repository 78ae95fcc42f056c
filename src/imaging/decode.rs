//! Client bytes → RGB8 image, with limits checked from the header before any pixel is allocated.
//! JPEG goes through libjpeg-turbo (ISLOW DCT, fancy upsampling: its defaults, and OpenCV's and
//! PIL's), so a frame's pixels equal `cv2.imread`'s; CMYK JPEG and PNG through the `image` crate.

use std::cell::RefCell;
use std::io::Cursor;

use image::{ImageFormat, ImageReader, RgbImage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageEncoding {
    /// JPEG or PNG, told apart by their magic bytes.
    Sniff,
    Jpeg,
    Png,
    RawRgb8,
    RawBgr8,
    RawGray8,
}

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest width × height accepted (decompression-bomb guard).
    pub max_pixels: u64,
    /// Largest width or height accepted.
    pub max_side: u32,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("image.data is empty")]
    Empty,
    #[error("image.data is neither JPEG nor PNG (first bytes {0}); set image.encoding for raw pixels")]
    UnknownFormat(String),
    #[error("image.data is not a valid {format}: {message}")]
    Corrupt { format: &'static str, message: String },
    #[error("image is {width}x{height}: width and height must be positive")]
    ZeroSize { width: u32, height: u32 },
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {max_pixels} pixels")]
    TooManyPixels { width: u32, height: u32, pixels: u64, max_pixels: u64 },
    #[error("image is {width}x{height}: a side exceeds the limit of {max_side} pixels")]
    SideTooLong { width: u32, height: u32, max_side: u32 },
    #[error(
        "image.data holds {actual} bytes but {width}x{height} {encoding} needs {expected} \
         (width x height x {channels})"
    )]
    RawLength { encoding: &'static str, width: u32, height: u32, channels: u64, expected: u64, actual: u64 },
}

fn check_size(width: u32, height: u32, limits: DecodeLimits) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::ZeroSize { width, height });
    }
    if width > limits.max_side || height > limits.max_side {
        return Err(DecodeError::SideTooLong { width, height, max_side: limits.max_side });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(DecodeError::TooManyPixels { width, height, pixels, max_pixels: limits.max_pixels });
    }
    Ok(())
}

/// Decodes a frame to RGB8. `width`/`height` are required for raw encodings and ignored otherwise.
pub fn decode(
    data: &[u8],
    encoding: ImageEncoding,
    width: u32,
    height: u32,
    limits: DecodeLimits,
) -> Result<RgbImage, DecodeError> {
    if data.is_empty() {
        return Err(DecodeError::Empty);
    }
    match encoding {
        ImageEncoding::Sniff => {
            let format = sniff(data).ok_or_else(|| {
                let head: Vec<String> = data.iter().take(4).map(|b| format!("{b:02x}")).collect();
                DecodeError::UnknownFormat(head.join(" "))
            })?;
            decode_compressed(data, format, limits)
        }
        ImageEncoding::Jpeg => decode_compressed(data, ImageFormat::Jpeg, limits),
        ImageEncoding::Png => decode_compressed(data, ImageFormat::Png, limits),
        ImageEncoding::RawRgb8 => raw(data, width, height, 3, "RAW_RGB8", limits, |px| [px[0], px[1], px[2]]),
        ImageEncoding::RawBgr8 => raw(data, width, height, 3, "RAW_BGR8", limits, |px| [px[2], px[1], px[0]]),
        ImageEncoding::RawGray8 => raw(data, width, height, 1, "RAW_GRAY8", limits, |px| [px[0]; 3]),
    }
}

/// A frame's size and the most memory its decode holds at once, read from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedSize {
    pub width: u32,
    pub height: u32,
    /// The decoder's pixels (in the image's own colour type) plus the RGB8 copy made of them when
    /// that type is not RGB8.
    pub peak_bytes: u64,
}

/// What decoding `data` will take, checked against `limits`; cheap (the header only), so it can
/// run before the frame is given any memory or CPU.
pub fn decoded_size(
    data: &[u8],
    encoding: ImageEncoding,
    width: u32,
    height: u32,
    limits: DecodeLimits,
) -> Result<DecodedSize, DecodeError> {
    use image::ImageDecoder;
    if data.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = match encoding {
        ImageEncoding::RawRgb8 | ImageEncoding::RawBgr8 | ImageEncoding::RawGray8 => {
            check_size(width, height, limits)?;
            let peak_bytes = u64::from(width) * u64::from(height) * 3;
            return Ok(DecodedSize { width, height, peak_bytes });
        }
        ImageEncoding::Jpeg => ImageFormat::Jpeg,
        ImageEncoding::Png => ImageFormat::Png,
        ImageEncoding::Sniff => sniff(data).ok_or_else(|| {
            let head: Vec<String> = data.iter().take(4).map(|b| format!("{b:02x}")).collect();
            DecodeError::UnknownFormat(head.join(" "))
        })?,
    };
    let name = format_name(format);
    let corrupt = |e: image::ImageError| DecodeError::Corrupt { format: name, message: e.to_string() };
    let decoder = ImageReader::with_format(Cursor::new(data), format).into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, limits)?;
    let pixels = u64::from(width) * u64::from(height);
    let own = decoder.color_type();
    let converted = if own == image::ColorType::Rgb8 { 0 } else { 3 };
    Ok(DecodedSize { width, height, peak_bytes: pixels * (u64::from(own.bytes_per_pixel()) + converted) })
}

fn sniff(data: &[u8]) -> Option<ImageFormat> {
    if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else {
        None
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        _ => "JPEG",
    }
}

/// The JPEG decoder conceals truncation (it fills the missing rows with grey), so a JPEG must end
/// with its end-of-image marker, allowing zero / 0xFF padding after it.
fn check_jpeg_complete(data: &[u8]) -> Result<(), DecodeError> {
    let end = data.iter().rposition(|&b| b != 0x00 && b != 0xFF).map_or(0, |i| i + 1);
    if end >= 2 && data[end - 2..end] == [0xFF, 0xD9] {
        Ok(())
    } else {
        Err(DecodeError::Corrupt { format: "JPEG", message: "truncated: no end-of-image marker".into() })
    }
}

thread_local! {
    /// One libjpeg-turbo handle per thread, reused across frames (dropped after an error).
    static JPEG_DECOMPRESSOR: RefCell<Option<turbojpeg::Decompressor>> = const { RefCell::new(None) };
}

fn turbo_error(e: turbojpeg::Error) -> DecodeError {
    DecodeError::Corrupt { format: "JPEG", message: e.to_string() }
}

/// A JPEG through libjpeg-turbo, straight to RGB8; `None` for CMYK / YCCK, which it does not
/// convert to RGB.
fn decode_jpeg_turbo(data: &[u8], limits: DecodeLimits) -> Result<Option<RgbImage>, DecodeError> {
    JPEG_DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(turbojpeg::Decompressor::new().map_err(turbo_error)?),
        };
        let result = (|| {
            let header = decompressor.read_header(data).map_err(turbo_error)?;
            if matches!(header.colorspace, turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK) {
                return Ok(None);
            }
            let (width, height) = (header.width as u32, header.height as u32);
            check_size(width, height, limits)?;
            check_jpeg_complete(data)?;
            let mut pixels = vec![0u8; header.width * header.height * 3];
            let image = turbojpeg::Image {
                pixels: pixels.as_mut_slice(),
                width: header.width,
                pitch: header.width * 3,
                height: header.height,
                format: turbojpeg::PixelFormat::RGB,
            };
            decompressor.decompress(data, image).map_err(turbo_error)?;
            Ok(RgbImage::from_raw(width, height, pixels))
        })();
        if matches!(result, Err(DecodeError::Corrupt { .. })) {
            *slot = None;
        }
        result
    })
}

fn decode_compressed(data: &[u8], format: ImageFormat, limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    if format == ImageFormat::Jpeg
        && let Some(image) = decode_jpeg_turbo(data, limits)?
    {
        return Ok(image);
    }
    let name = format_name(format);
    let corrupt = |e: image::ImageError| DecodeError::Corrupt { format: name, message: e.to_string() };
    // Header first: refuse oversized images before allocating their pixels.
    let (width, height) = ImageReader::with_format(Cursor::new(data), format).into_dimensions().map_err(corrupt)?;
    check_size(width, height, limits)?;
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(data)?;
    }
    let mut reader = ImageReader::with_format(Cursor::new(data), format);
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(width);
    decoder_limits.max_image_height = Some(height);
    // RGBA16 is the widest a PNG decodes to, plus slack for the decoder's own buffers.
    decoder_limits.max_alloc = Some(u64::from(width) * u64::from(height) * 8 + (64 << 20));
    reader.limits(decoder_limits);
    let image = reader.decode().map_err(corrupt)?;
    Ok(image.into_rgb8())
}

fn raw(
    data: &[u8],
    width: u32,
    height: u32,
    channels: u64,
    encoding: &'static str,
    limits: DecodeLimits,
    to_rgb: impl Fn(&[u8]) -> [u8; 3],
) -> Result<RgbImage, DecodeError> {
    check_size(width, height, limits)?;
    let expected = u64::from(width) * u64::from(height) * channels;
    let actual = data.len() as u64;
    if actual != expected {
        return Err(DecodeError::RawLength { encoding, width, height, channels, expected, actual });
    }
    let mut rgb = Vec::with_capacity((u64::from(width) * u64::from(height) * 3) as usize);
    for px in data.chunks_exact(channels as usize) {
        rgb.extend_from_slice(&to_rgb(px));
    }
    RgbImage::from_raw(width, height, rgb).ok_or(DecodeError::RawLength {
        encoding,
        width,
        height,
        channels,
        expected,
        actual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits { max_pixels: 40_000_000, max_side: 16_384 };

    fn png_bytes(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).expect("png");
        out
    }

    #[test]
    fn png_round_trips_by_sniffing() {
        let img = decode(&png_bytes(5, 3), ImageEncoding::Sniff, 0, 0, LIMITS).expect("decode");
        assert_eq!(img.dimensions(), (5, 3));
        assert_eq!(img.get_pixel(4, 2).0, [4, 2, 7]);
    }

    #[test]
    fn raw_bgr_is_swapped_to_rgb() {
        let img = decode(&[1, 2, 3, 4, 5, 6], ImageEncoding::RawBgr8, 2, 1, LIMITS).expect("decode");
        assert_eq!(img.get_pixel(0, 0).0, [3, 2, 1]);
        assert_eq!(img.get_pixel(1, 0).0, [6, 5, 4]);
    }

    #[test]
    fn raw_gray_is_replicated() {
        let img = decode(&[9, 200], ImageEncoding::RawGray8, 1, 2, LIMITS).expect("decode");
        assert_eq!(img.get_pixel(0, 1).0, [200, 200, 200]);
    }

    #[test]
    fn raw_length_mismatch_names_both_lengths() {
        let err = decode(&[0; 11], ImageEncoding::RawRgb8, 2, 2, LIMITS).unwrap_err();
        assert_eq!(err.to_string(), "image.data holds 11 bytes but 2x2 RAW_RGB8 needs 12 (width x height x 3)");
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let bytes = png_bytes(64, 64);
        let err = decode(&bytes[..bytes.len() / 2], ImageEncoding::Sniff, 0, 0, LIMITS).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt { format: "PNG", .. }), "{err}");
    }

    #[test]
    fn decompression_bomb_is_refused_from_its_header() {
        // A valid 20000x20000 PNG header (400 MP) with a 1-pixel image's data behind it.
        let limits = DecodeLimits { max_pixels: 40_000_000, max_side: 65_535 };
        let mut bytes = png_bytes(1, 1);
        bytes[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let crc = crc32fast::hash(&bytes[12..29]); // IHDR chunk type + data
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode(&bytes, ImageEncoding::Png, 0, 0, limits).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooManyPixels { width: 20_000, height: 20_000, pixels: 400_000_000, max_pixels: 40_000_000 }
        );
    }

    #[test]
    fn zero_and_absurd_raw_dimensions_are_refused() {
        assert!(matches!(decode(&[1], ImageEncoding::RawGray8, 0, 1, LIMITS), Err(DecodeError::ZeroSize { .. })));
        assert!(matches!(
            decode(&[1], ImageEncoding::RawGray8, 100_000, 1, LIMITS),
            Err(DecodeError::SideTooLong { .. })
        ));
        assert!(matches!(
            decode(&[1], ImageEncoding::RawGray8, 10_000, 10_000, LIMITS),
            Err(DecodeError::TooManyPixels { .. })
        ));
    }

    fn jpeg_bytes() -> Vec<u8> {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Jpeg).expect("jpeg");
        out
    }

    #[test]
    fn the_decoded_size_is_read_from_the_header_and_counts_a_conversion_to_rgb() {
        let rgb = decoded_size(&jpeg_bytes(), ImageEncoding::Sniff, 0, 0, LIMITS).expect("jpeg header");
        assert_eq!(rgb, DecodedSize { width: 64, height: 48, peak_bytes: 64 * 48 * 3 });
        let gray = image::GrayImage::from_pixel(10, 20, image::Luma([9]));
        let mut png = Vec::new();
        gray.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).expect("png");
        let size = decoded_size(&png, ImageEncoding::Png, 0, 0, LIMITS).expect("png header");
        assert_eq!(size.peak_bytes, 10 * 20 * (1 + 3), "grey pixels and their RGB copy");
        let raw = decoded_size(&[0; 6], ImageEncoding::RawGray8, 3, 2, LIMITS).expect("raw");
        assert_eq!(raw.peak_bytes, 3 * 2 * 3);
        let small = DecodeLimits { max_pixels: 100, max_side: 16_384 };
        let refused = decoded_size(&jpeg_bytes(), ImageEncoding::Jpeg, 0, 0, small).expect_err("over the limit");
        assert!(matches!(refused, DecodeError::TooManyPixels { .. }), "{refused}");
    }

    #[test]
    fn truncated_jpeg_is_corrupt_but_padding_after_eoi_is_fine() {
        let bytes = jpeg_bytes();
        let err = decode(&bytes[..bytes.len() - 40], ImageEncoding::Sniff, 0, 0, LIMITS).unwrap_err();
        assert_eq!(err, DecodeError::Corrupt { format: "JPEG", message: "truncated: no end-of-image marker".into() });
        let mut padded = bytes.clone();
        padded.extend([0, 0, 0xFF, 0]);
        assert_eq!(decode(&padded, ImageEncoding::Jpeg, 0, 0, LIMITS).expect("padded").dimensions(), (64, 48));
    }

    #[test]
    fn unknown_bytes_are_named() {
        let err = decode(b"GIF89a", ImageEncoding::Sniff, 0, 0, LIMITS).unwrap_err();
        assert_eq!(err, DecodeError::UnknownFormat("47 49 46 38".into()));
    }
}
