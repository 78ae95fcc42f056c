//! Detections compared with reference implementations:
//! - YOLO decoders against Ultralytics' own NMS + scale_boxes on committed raw outputs
//!   (tests/fixtures/yolo, made by eval/make_yolo_fixtures.py): boxes within 1e-3 px, scores 1e-6.
//! - Letterbox geometry against Ultralytics' LetterBox: exact.
//! - The NanoDet-g pipeline on real vtest frames against Python onnxruntime + the reference decode
//!   (tests/fixtures/vtest/nanodet-g.reference.json, made by eval/reference_detect.py: cv2.imread,
//!   OpenCV letterbox). The pixels are the same (libjpeg-turbo, OpenCV's INTER_LINEAR arithmetic),
//!   so the detections match one-to-one: same class, box corners within 0.5 px, |Δscore| ≤ 0.002,
//!   and no extra detection.

use crate::common::fixture;
use linesight::config::Config;
use linesight::detect::YoloVersion;
use linesight::detect::{BBox, Layout, NamedOutput, Thresholds};
use linesight::imaging::{ImageEncoding, Letterbox};
use linesight::pipeline::{FrameRequest, ImageInput, Pipelines};
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("yolo/expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("json")
}

fn load_raw(name: &str, shape: &[usize]) -> ArrayD<f32> {
    let bytes = std::fs::read(fixture(&format!("yolo/{name}"))).expect("raw fixture");
    let data: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape")
}

#[test]
fn yolo_decoders_match_ultralytics_postprocessing() {
    let _machine = crate::common::machine_shared();
    let expected = expected();
    let cases = expected["cases"].as_array().expect("cases");
    assert!(cases.len() >= 3);
    for case in cases {
        let name = case["name"].as_str().unwrap_or_default();
        let shape: Vec<usize> =
            case["shape"].as_array().expect("shape").iter().map(|v| v.as_u64().expect("dim") as usize).collect();
        let raw = load_raw(case["file"].as_str().expect("file"), &shape);
        let size = case["input"].as_u64().expect("input") as u32;
        let (h0, w0) = (case["image"][0].as_u64().expect("h") as u32, case["image"][1].as_u64().expect("w") as u32);
        let thresholds = Thresholds {
            score: case["conf"].as_f64().expect("conf") as f32,
            iou: case["iou"].as_f64().expect("iou") as f32,
            max_detections: case["max_det"].as_u64().expect("max_det") as usize,
            class_agnostic: false,
        };
        let letterbox = Letterbox::new(w0, h0, size, size);
        let versions: &[YoloVersion] = match case["layout"].as_str() {
            Some("v8") => &[YoloVersion::V8, YoloVersion::V11],
            Some("v5") => &[YoloVersion::V5],
            other => panic!("unknown layout {other:?}"),
        };
        let outputs: Vec<NamedOutput<'_>> = vec![("output0", raw.view())];
        let want = case["detections"].as_array().expect("detections");
        assert!(want.len() >= 10, "{name}: fixture too thin");
        for &version in versions {
            let decoder = linesight::detect::Decoder::Yolo(Layout::for_version(version, 80));
            let got = decoder.detect(&outputs, 0, &thresholds, &letterbox).expect("decode");
            assert_eq!(got.len(), want.len(), "{name} {version:?}: count");
            for (g, w) in got.iter().zip(want) {
                let w: Vec<f32> =
                    w.as_array().expect("row").iter().map(|v| v.as_f64().expect("number") as f32).collect();
                assert_eq!(w.len(), 6, "{name}: reference row {w:?} (box, score, class)");
                let b = [g.bbox.x1, g.bbox.y1, g.bbox.x2, g.bbox.y2];
                for k in 0..4 {
                    assert!((b[k] - w[k]).abs() < 1e-3, "{name} {version:?}: box {b:?} vs {w:?}");
                }
                assert!((g.score - w[4]).abs() < 1e-6, "{name}: score {} vs {}", g.score, w[4]);
                assert_eq!(g.class_id as f32, w[5], "{name}: class");
            }
        }
    }
}

#[test]
fn letterbox_geometry_matches_ultralytics() {
    let _machine = crate::common::machine_shared();
    let expected = expected();
    for case in expected["letterbox"].as_array().expect("letterbox") {
        let n = |v: &Value, i: usize| v[i].as_u64().expect("number") as u32;
        let lb = Letterbox::new(n(&case["src"], 0), n(&case["src"], 1), n(&case["dst"], 0), n(&case["dst"], 1));
        assert_eq!((lb.resized_width, lb.resized_height), (n(&case["resized"], 0), n(&case["resized"], 1)), "{case}");
        assert_eq!((lb.pad_left, lb.pad_top), (n(&case["pad"], 0), n(&case["pad"], 1)), "{case}");
    }
}

#[derive(Debug)]
struct Found {
    class: String,
    score: f32,
    bbox: BBox,
}

fn parse_reference(v: &Value) -> Found {
    let b: Vec<f32> = v["box"].as_array().expect("box").iter().map(|x| x.as_f64().expect("number") as f32).collect();
    assert_eq!(b.len(), 4, "reference box {b:?}");
    Found {
        class: v["class_name"].as_str().expect("class").to_owned(),
        score: v["score"].as_f64().expect("score") as f32,
        bbox: BBox { x1: b[0], y1: b[1], x2: b[2], y2: b[3] },
    }
}

fn corner_error(a: &BBox, b: &BBox) -> f32 {
    [a.x1 - b.x1, a.y1 - b.y1, a.x2 - b.x2, a.y2 - b.y2].iter().fold(0.0, |m, d| m.max(d.abs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vtest_frames_match_python_onnxruntime_reference() {
    let _machine = crate::common::machine_shared();
    let text = std::fs::read_to_string(fixture("vtest/nanodet-g.reference.json")).expect("reference");
    let reference: Value = serde_json::from_str(&text).expect("json");
    let mut config = Config::default();
    config.server.default_budget = std::time::Duration::from_millis(60_000);
    let pipelines = Pipelines::start(&config.service_settings()).expect("pipelines (run scripts/setup first)");
    let images = reference["images"].as_object().expect("images");
    assert_eq!(images.len(), 5);
    let (mut compared, mut worst) = (0, (0.0f32, 0.0f32));
    for (file, want) in images {
        let data = std::fs::read(fixture(&format!("vtest/{file}"))).expect("frame");
        let request = FrameRequest {
            camera_id: "parity".into(),
            sequence: 0,
            pipeline: String::new(),
            image: Some(ImageInput { data: data.into(), encoding: ImageEncoding::Jpeg, width: 0, height: 0 }),
            budget: None,
            annotate: false,
            received: tokio::time::Instant::now(),
            client_deadline: None,
        };
        let result = pipelines.inspect(request).await.expect("inspect");
        let got: Vec<Found> = result
            .detections
            .iter()
            .map(|d| Found { class: d.class_name.clone(), score: d.detection.score, bbox: d.detection.bbox })
            .collect();
        let want: Vec<Found> = want.as_array().expect("list").iter().map(parse_reference).collect();
        assert_eq!(got.len(), want.len(), "{file}: served {got:?}, reference {want:?}");
        let mut used = vec![false; got.len()];
        for w in &want {
            let twin = (0..got.len())
                .filter(|&i| !used[i] && got[i].class == w.class)
                .min_by(|&a, &b| corner_error(&got[a].bbox, &w.bbox).total_cmp(&corner_error(&got[b].bbox, &w.bbox)))
                .unwrap_or_else(|| panic!("{file}: reference {w:?} missing from {got:?}"));
            used[twin] = true;
            let (px, ds) = (corner_error(&got[twin].bbox, &w.bbox), (got[twin].score - w.score).abs());
            assert!(px <= 0.5 && ds <= 0.002, "{file}: reference {w:?}, served {:?}", got[twin]);
            worst = (worst.0.max(px), worst.1.max(ds));
            compared += 1;
        }
    }
    eprintln!("{compared} detections matched one-to-one; worst corner {:.4} px, score {:.6}", worst.0, worst.1);
    assert!(compared >= 25, "only {compared} detections compared");
    pipelines.shutdown().await;
}
