//! The pixels a model sees equal the pixels Ultralytics' predict feeds it: JPEG frames of odd sizes
//! (several encoders, 4:2:0 / 4:2:2 / 4:4:4, progressive, gray, restart markers) decoded as
//! `cv2.imread` decodes them, and letterboxed as `cv2.resize(..., INTER_LINEAR)` resizes them and
//! Ultralytics' `LetterBox` pads them (to the whole input, and to a stride multiple), byte for byte.
//! References: `tests/fixtures/preprocess/reference.json` (SHA-256 of the RGB8 bytes), made by
//! `eval/make_preprocess_fixtures.py`.

use linesight::imaging::{DecodeLimits, ImageEncoding, Letterbox, Preprocessor, TensorSpec, decode};
use sha2::{Digest, Sha256};

use crate::common::fixture;

const LIMITS: DecodeLimits = DecodeLimits { max_pixels: 40_000_000, max_side: 16_384 };

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("preprocess/reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json is JSON")
}

/// A [3, h, w] tensor of identity-normalised bytes back to RGB8 rows.
fn tensor_bytes(tensor: &[f32], width: u32, height: u32) -> Vec<u8> {
    let plane = (width * height) as usize;
    (0..plane).flat_map(|at| (0..3).map(move |c| tensor[c * plane + at] as u8)).collect()
}

#[test]
fn jpeg_frames_decode_to_the_pixels_of_cv2_imread() {
    let reference = reference();
    let mut differing = Vec::new();
    for frame in reference["frames"].as_array().expect("frames") {
        let name = frame["file"].as_str().expect("file");
        let data = std::fs::read(fixture(&format!("preprocess/{name}"))).expect("frame");
        let image = decode(&data, ImageEncoding::Sniff, 0, 0, LIMITS).expect("decodes");
        assert_eq!(
            (u64::from(image.width()), u64::from(image.height())),
            (frame["width"].as_u64().expect("width"), frame["height"].as_u64().expect("height")),
            "{name}"
        );
        if hex(image.as_raw()) != frame["rgb_sha256"].as_str().expect("sha") {
            differing.push(name.to_string());
        }
    }
    assert!(differing.is_empty(), "decoded pixels differ from cv2.imread's: {differing:?}");
}

#[test]
fn letterboxed_pixels_equal_cv2_resize_at_ultralytics_sizes() {
    let reference = reference();
    let mut preprocessor = Preprocessor::new();
    let (mut checked, mut differing) = (0, Vec::new());
    for frame in reference["frames"].as_array().expect("frames") {
        let name = frame["file"].as_str().expect("file");
        let data = std::fs::read(fixture(&format!("preprocess/{name}"))).expect("frame");
        let image = decode(&data, ImageEncoding::Sniff, 0, 0, LIMITS).expect("decodes");
        for case in frame["letterbox"].as_array().expect("letterbox") {
            let size = |v: &serde_json::Value, i: usize| v[i].as_u64().expect("size") as u32;
            let (tw, th) = (size(&case["target"], 0), size(&case["target"], 1));
            // Identity normalisation: the tensor holds the letterboxed bytes themselves.
            let spec = TensorSpec { width: tw, height: th, bgr: false, mean: [0.0; 3], std: [1.0; 3], pad_value: 114 };
            let mut tensor = vec![0.0f32; spec.len()];
            let lb: Letterbox = preprocessor.letterbox_into(&image, &spec, &mut tensor).expect("letterbox");
            assert_eq!(
                (lb.resized_width, lb.resized_height),
                (size(&case["resized"], 0), size(&case["resized"], 1)),
                "{name} into {tw}x{th}: Ultralytics' new_unpad"
            );
            assert_eq!(
                hex(&tensor_bytes(&tensor, tw, th)),
                case["letterboxed_sha256"].as_str().expect("sha"),
                "{name} into {tw}x{th}: the whole letterboxed image"
            );
            let stride = &case["stride32"];
            let (lb32, w32, h32) = Letterbox::to_stride(image.width(), image.height(), tw, th, 32);
            assert_eq!(
                (w32, h32),
                (size(&stride["size"], 0), size(&stride["size"], 1)),
                "{name} into {tw}x{th}, stride 32"
            );
            let spec32 = TensorSpec { width: w32, height: h32, ..spec };
            let mut tensor32 = vec![0.0f32; spec32.len()];
            preprocessor.letterbox_with(&image, &spec32, &lb32, &mut tensor32).expect("letterbox to a stride");
            if hex(&tensor_bytes(&tensor32, w32, h32)) != stride["rgb_sha256"].as_str().expect("sha") {
                differing.push(format!("{name} into {tw}x{th} to a multiple of 32"));
            }
            let plane = (tw * th) as usize;
            let mut resized = Vec::with_capacity((lb.resized_width * lb.resized_height * 3) as usize);
            for y in 0..lb.resized_height {
                for x in 0..lb.resized_width {
                    let at = ((lb.pad_top + y) * tw + lb.pad_left + x) as usize;
                    resized.extend((0..3).map(|c| tensor[c * plane + at] as u8));
                }
            }
            checked += 1;
            if hex(&resized) != case["rgb_sha256"].as_str().expect("sha") {
                differing.push(format!("{name} into {tw}x{th}"));
            }
        }
    }
    assert!(checked >= 30, "only {checked} letterboxes in the reference");
    assert!(differing.is_empty(), "letterboxed pixels differ from cv2.resize's: {differing:?}");
}
