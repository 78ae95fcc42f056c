//! The bodies of the `cargo fuzz` targets (`fuzz/`), here so the normal test suite replays the
//! committed corpus through exactly the same code (`tests/fuzz_replay.rs`). Each takes arbitrary
//! bytes and panics only on a real bug: an error for bad input is the expected outcome.
// A fuzz target reports a broken invariant by panicking.
#![allow(clippy::expect_used)]

use crate::api::{
    WireRequest, decode_inspect_request, frame_request, parse_grpc_timeout, to_status, undecodable_status,
};
use crate::imaging::{CropBox, DecodeLimits, ImageEncoding, Preprocessor, TensorSpec, decode};
use crate::pipeline::check_camera_id;

/// Small enough that a fuzzer's huge headers are refused quickly, large enough for real frames.
const LIMITS: DecodeLimits = DecodeLimits { max_pixels: 4_000_000, max_side: 4096 };

const SPEC: TensorSpec = TensorSpec {
    width: 96,
    height: 64,
    bgr: true,
    mean: [103.5, 116.3, 123.7],
    std: [57.4, 57.1, 58.4],
    pad_value: 114,
};

/// Image decode and preprocessing. Input: byte 0 picks the encoding, bytes 1..5 are the raw
/// width and height (u16 little-endian each), bytes 5..13 a crop box, the rest is `image.data`.
pub fn decode_and_preprocess(input: &[u8]) {
    let Some((header, data)) = input.split_at_checked(13) else {
        return;
    };
    let encoding = match header[0] % 6 {
        0 => ImageEncoding::Sniff,
        1 => ImageEncoding::Jpeg,
        2 => ImageEncoding::Png,
        3 => ImageEncoding::RawRgb8,
        4 => ImageEncoding::RawBgr8,
        _ => ImageEncoding::RawGray8,
    };
    let width = u32::from(u16::from_le_bytes([header[1], header[2]]));
    let height = u32::from(u16::from_le_bytes([header[3], header[4]]));
    let Ok(image) = decode(data, encoding, width, height, LIMITS) else {
        return;
    };
    let (w, h) = image.dimensions();
    assert!(w > 0 && h > 0 && w <= LIMITS.max_side && h <= LIMITS.max_side, "decoded {w}x{h} past the limits");
    assert!(u64::from(w) * u64::from(h) <= LIMITS.max_pixels);
    assert_eq!(image.as_raw().len(), w as usize * h as usize * 3);
    let mut preprocessor = Preprocessor::new();
    let mut tensor = vec![0f32; SPEC.len()];
    let letterbox = preprocessor.letterbox_into(&image, &SPEC, &mut tensor).expect("letterbox a decoded image");
    assert!(tensor.iter().all(|v| v.is_finite()));
    assert!(letterbox.resized_width <= SPEC.width && letterbox.resized_height <= SPEC.height);
    let corner = |i: usize| f32::from(i8::from_le_bytes([header[i]])) * 8.0;
    let crop = CropBox { x1: corner(5), y1: corner(6), x2: corner(7) + 512.0, y2: corner(8) + 512.0 };
    preprocessor.crop_into(&image, crop, &SPEC, &mut tensor).expect("crop a decoded image");
    assert!(tensor.iter().all(|v| v.is_finite()));
}

/// Request validation: the server's lenient decode of an `InspectRequest` (bytes that do not
/// decode must map to INVALID_ARGUMENT), its mapping to a frame, the camera check and every
/// error's gRPC status; the input as text is also a `grpc-timeout` header.
pub fn validate_request(input: &[u8]) {
    let _ = parse_grpc_timeout(&String::from_utf8_lossy(input));
    let request = match decode_inspect_request(bytes::Bytes::copy_from_slice(input)) {
        WireRequest::Decoded(request) => request,
        WireRequest::Undecodable(error) => {
            let status = undecodable_status(&error);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{error}");
            assert!(status.message().contains("could not be decoded"), "{error}");
            return;
        }
    };
    let outcome = frame_request(request, tokio::time::Instant::now(), None)
        .and_then(|frame| check_camera_id(&frame.camera_id).map(|()| frame));
    match outcome {
        Ok(frame) => {
            assert!(!frame.camera_id.is_empty() && frame.camera_id.len() <= crate::pipeline::MAX_CAMERA_ID_BYTES);
            if let Some(budget) = frame.budget {
                assert!(!budget.is_zero());
            }
        }
        Err(error) => {
            let status = to_status(&error);
            assert!(!status.message().is_empty());
        }
    }
}
