//! Per-stage CPU costs outside the model: decode, letterbox, NanoDet decode + NMS, YOLO decode + NMS.
//! Run: cargo bench --bench stages
// A benchmark stops at the first broken expectation, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use linesight::detect::YoloVersion;
use linesight::detect::{Decoder, Layout, NamedOutput, Thresholds};
use linesight::engine::{ModelSession, OrtRuntime, SessionOptions};
use linesight::imaging::{self, DecodeLimits, ImageEncoding, Letterbox, Preprocessor};
use linesight::model::ModelManifest;
use linesight::pipeline::tensor_spec;
use ndarray::{ArrayD, IxDyn};

const LIMITS: DecodeLimits = DecodeLimits { max_pixels: 40_000_000, max_side: 16_384 };

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn nanodet() -> ModelManifest {
    ModelManifest::load(&root().join("models/nanodet-g")).expect("manifest")
}

fn preprocess(c: &mut Criterion) {
    let jpeg = std::fs::read(root().join("tests/fixtures/vtest/frame_0250.jpg")).expect("frame");
    let mut group = c.benchmark_group("preprocess");
    group.bench_function("decode_jpeg_768x576", |b| {
        b.iter(|| imaging::decode(&jpeg, ImageEncoding::Jpeg, 0, 0, LIMITS).expect("decode"))
    });
    let small = imaging::decode(&jpeg, ImageEncoding::Jpeg, 0, 0, LIMITS).expect("decode");
    let big = image::imageops::resize(&small, 1920, 1080, image::imageops::FilterType::Triangle);
    let spec = tensor_spec(&nanodet().input);
    let mut out = vec![0f32; spec.len()];
    let mut pre = Preprocessor::new();
    for (name, img) in [("768x576", &small), ("1920x1080", &big)] {
        group.bench_with_input(BenchmarkId::new("letterbox_to_416_tensor", name), img, |b, img| {
            b.iter(|| pre.letterbox_into(img, &spec, &mut out).expect("letterbox"))
        });
    }
    group.finish();
}

fn postprocess(c: &mut Criterion) {
    let mut group = c.benchmark_group("postprocess");
    // Real NanoDet-g outputs for vtest frame 250.
    let manifest = nanodet();
    let runtime = OrtRuntime::init(None).expect("ONNX Runtime (run scripts/setup)");
    let mut session = ModelSession::load(
        runtime,
        "nanodet-g",
        &manifest.onnx_path(),
        &SessionOptions { intra_threads: 2, intra_op_spinning: false, ..SessionOptions::default() },
    )
    .expect("session");
    let jpeg = std::fs::read(root().join("tests/fixtures/vtest/frame_0250.jpg")).expect("frame");
    let img = imaging::decode(&jpeg, ImageEncoding::Jpeg, 0, 0, LIMITS).expect("decode");
    let spec = tensor_spec(&nanodet().input);
    let mut tensor = vec![0f32; spec.len()];
    let lb = Preprocessor::new().letterbox_into(&img, &spec, &mut tensor).expect("letterbox");
    let outputs = session.run([1, 3, 416, 416], &tensor).expect("run");
    let named: Vec<NamedOutput<'_>> = outputs.iter().map(|o| (o.name.as_str(), o.view().expect("f32"))).collect();
    let decoder = manifest.decoder.detector(80, 416, 416).expect("a detector");
    let thresholds = Thresholds { score: 0.35, iou: 0.6, max_detections: 100, class_agnostic: false };
    group.bench_function("nanodet_decode_nms_vtest_250", |b| {
        b.iter(|| decoder.detect(&named, 0, &thresholds, &lb).expect("detect"))
    });
    let low = Thresholds { score: 0.05, ..thresholds };
    group.bench_function("nanodet_decode_nms_vtest_250_score_0.05", |b| {
        b.iter(|| decoder.detect(&named, 0, &low, &lb).expect("detect"))
    });

    // YOLOv8 layout, 640 px (8400 anchors): the committed 320 px fixture's anchors tiled 4x.
    let bytes = std::fs::read(root().join("tests/fixtures/yolo/v8_320.f32")).expect("fixture");
    let small: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let mut data = Vec::with_capacity(84 * 8400);
    for row in small.chunks_exact(2100) {
        for _ in 0..4 {
            data.extend_from_slice(row);
        }
    }
    let raw = ArrayD::from_shape_vec(IxDyn(&[1, 84, 8400]), data).expect("shape");
    let named = vec![("output0", raw.view())];
    let yolo = Decoder::Yolo(Layout::for_version(YoloVersion::V8, 80));
    let lb = Letterbox::new(768, 576, 640, 640);
    let t = Thresholds { score: 0.25, iou: 0.45, max_detections: 300, class_agnostic: false };
    group.bench_function("yolov8_decode_nms_8400_anchors", |b| {
        b.iter(|| yolo.detect(&named, 0, &t, &lb).expect("detect"))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = preprocess, postprocess
}
criterion_main!(benches);
