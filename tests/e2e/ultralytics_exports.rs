//! Ultralytics ONNX exports served as they come, with no model.toml: the service reads names,
//! input size, batch and layout from the export's metadata and graph. Each export's detections over
//! gRPC are compared with what Ultralytics itself predicts on the same held-out conveyor images
//! (`YOLO(onnx).predict(conf, iou)`, tests/fixtures/ultralytics/reference.json, made by
//! eval/ultralytics_reference.py from models trained by models/tools/train_yolo.py): YOLOv8,
//! YOLO11 and YOLO26 heads; dynamic and fixed batch (1 and 2); FP32 and FP16; YOLO26's raw head
//! and its NMS-free end-to-end head; a fixed 256×320 opset-12 unsimplified export, a dynamic
//! 224×384 opset-16 one and an `nms=True` 320×256 opset-17 one.
//!
//! Tolerances: the service decodes JPEG with libjpeg-turbo and letterboxes with OpenCV's
//! INTER_LINEAR arithmetic, so every image reaches the network with the same pixels as in predict
//! (tests/e2e/preprocess_parity.rs), and every detection has a twin of the same class within 0.5 px
//! and 0.002 in score. On JPEG frames of odd sizes the match is one-to-one, with no extra box, for
//! every export. On the PNG images, compared both ways, detections within 0.03 of the confidence
//! threshold may exist on one side only (the f16-output export's scores tie often, and NMS breaks
//! ties in torchvision's order there and in ours here).
//!
//! Dynamic exports are predicted at their export `imgsz` and predict's default `rect=True`: each
//! frame letterboxed only to a stride multiple, as the service letterboxes them (docs/operations.md).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::common::{TestServer, fixture, test_config};
use linesight::api::proto::inspection_client::InspectionClient;
use linesight::api::proto::{self, Image, InspectRequest};
use linesight::pipeline::{DetectSettings, PipelineSettings, Pipelines};
use serde_json::Value;
use tonic::transport::Channel;

fn reference() -> Value {
    let text = std::fs::read_to_string(fixture("ultralytics/reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("json")
}

/// A frame whose encoding (PNG or JPEG) the service tells from its bytes.
fn image_request(pipeline: &str, data: Vec<u8>) -> InspectRequest {
    InspectRequest {
        camera_id: "parity".into(),
        sequence: 0,
        pipeline: pipeline.into(),
        image: Some(Image {
            data: data.into(),
            encoding: proto::image::Encoding::Unspecified as i32,
            width: 0,
            height: 0,
        }),
        budget_ms: 10_000,
        annotate: false,
    }
}

fn pipeline_name(model: &str) -> String {
    model.trim_end_matches(".onnx").replace('.', "-")
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

#[derive(Debug, Clone)]
struct Found {
    class: String,
    score: f32,
    bbox: [f32; 4],
}

/// Every detection of `one` clear of the threshold has a twin in `other`; returns the worst
/// (box corner error, score error) over the twins.
fn twins(one: &[Found], other: &[Found], conf: f32, what: &str) -> (f32, f32) {
    let (mut worst_px, mut worst_score) = (0.0f32, 0.0f32);
    for d in one.iter().filter(|d| d.score >= conf + 0.03) {
        let twin = other
            .iter()
            .filter(|o| o.class == d.class)
            .max_by(|a, b| iou(a.bbox, d.bbox).total_cmp(&iou(b.bbox, d.bbox)))
            .unwrap_or_else(|| panic!("{what}: no {} at all for {d:?} in {other:?}", d.class));
        let px = d.bbox.iter().zip(twin.bbox).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        let ds = (d.score - twin.score).abs();
        assert!(px <= 0.5 && ds <= 0.002, "{what}: {d:?} vs {twin:?}");
        worst_px = worst_px.max(px);
        worst_score = worst_score.max(ds);
    }
    (worst_px, worst_score)
}

/// What the service detects on fixture `path` through `pipeline`, and the reference's `predicted`.
async fn served_and_predicted(
    client: &mut InspectionClient<Channel>,
    pipeline: &str,
    model: &str,
    path: &str,
    predicted: &Value,
) -> (Vec<Found>, Vec<Found>) {
    let data = std::fs::read(fixture(path)).expect("image");
    let response = client.inspect(image_request(pipeline, data)).await.expect("inspect").into_inner();
    assert_eq!(response.model, *model);
    let got = response
        .detections
        .iter()
        .map(|d| {
            let b = d.r#box.expect("box");
            Found { class: d.class_name.clone(), score: d.score, bbox: [b.x1, b.y1, b.x2, b.y2] }
        })
        .collect();
    let want = predicted
        .as_array()
        .expect("list")
        .iter()
        .map(|d| {
            let b: Vec<f32> =
                d["box"].as_array().expect("box").iter().map(|v| v.as_f64().expect("number") as f32).collect();
            assert_eq!(b.len(), 4, "reference box {b:?}");
            Found {
                class: d["class_name"].as_str().expect("class").to_owned(),
                score: d["score"].as_f64().expect("score") as f32,
                bbox: [b[0], b[1], b[2], b[3]],
            }
        })
        .collect();
    (got, want)
}

/// Every predicted box matched one-to-one by a served box of its class within `px` at every
/// corner and `score` in score, and no served box left over; returns the worst (px, score).
fn one_to_one(want: &[Found], got: &[Found], px: f32, score: f32, what: &str) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "{what}: served {got:?}\npredicted {want:?}");
    let mut used = vec![false; got.len()];
    let (mut worst_px, mut worst_score) = (0.0f32, 0.0f32);
    for w in want {
        let corner = |g: &Found| g.bbox.iter().zip(w.bbox).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        let best = (0..got.len())
            .filter(|&i| !used[i] && got[i].class == w.class)
            .min_by(|&a, &b| corner(&got[a]).total_cmp(&corner(&got[b])))
            .unwrap_or_else(|| panic!("{what}: no served twin for {w:?} in {got:?}"));
        used[best] = true;
        let (dp, ds) = (corner(&got[best]), (got[best].score - w.score).abs());
        assert!(dp <= px && ds <= score, "{what}: {w:?} predicted, {:?} served", got[best]);
        worst_px = worst_px.max(dp);
        worst_score = worst_score.max(ds);
    }
    (worst_px, worst_score)
}

/// Inspects every image of a reference entry through `pipeline` and checks its detections against
/// Ultralytics' both ways; returns how many of Ultralytics' were compared exactly.
async fn matches_ultralytics(
    client: &mut InspectionClient<Channel>,
    pipeline: &str,
    model: &str,
    entry: &Value,
    conf: f32,
) -> usize {
    let mut compared = 0;
    let images = entry["images"].as_object().expect("images");
    for (image, want) in images {
        let (got, want) = served_and_predicted(client, pipeline, model, &format!("ultralytics/{image}"), want).await;
        let what = format!("{model} on {image}");
        let (px, score) = twins(&want, &got, conf, &format!("{what}, Ultralytics → linesight"));
        twins(&got, &want, conf, &format!("{what}, linesight → Ultralytics"));
        eprintln!("{what}: {} vs {} detections, worst twin {px:.3} px, {score:.4} score", got.len(), want.len());
        compared += want.iter().filter(|d| d.score >= conf + 0.03).count();
    }
    compared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ultralytics_exports_served_from_their_metadata_match_ultralytics_predict() {
    let _machine = crate::common::machine_shared();
    let reference = reference();
    let conf = reference["conf"].as_f64().expect("conf") as f32;
    let iou_threshold = reference["iou"].as_f64().expect("iou") as f32;
    let models = reference["models"].as_object().expect("models");
    assert_eq!(
        models.len(),
        12,
        "v8, 11 and 26 heads; dynamic, fixed b1 / b2; fp32, fp16 (f32 and f16 io); end-to-end; other sizes and \
         opsets, unsimplified, NMS in the graph"
    );
    let mut config = test_config();
    config.model_dir = Some(fixture("ultralytics"));
    config.pipelines = models
        .keys()
        .map(|model| {
            let mut settings = DetectSettings::new(model);
            settings.score_threshold = Some(conf);
            settings.iou_threshold = Some(iou_threshold);
            (pipeline_name(model), PipelineSettings::Detect(settings))
        })
        .collect::<BTreeMap<_, _>>();
    config.default_pipeline = pipeline_name(models.keys().next().expect("a model"));
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let mut compared = 0;
    for (model, entry) in models {
        compared += matches_ultralytics(&mut client, &pipeline_name(model), model, entry, conf).await;
    }
    assert!(compared >= 50, "only {compared} detections compared: the parity models find too little");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_holding_only_an_export_is_a_model_and_unservable_exports_are_refused_by_name() {
    let _machine = crate::common::machine_shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let parts = dir.path().join("parts");
    std::fs::create_dir(&parts).expect("folder");
    std::fs::copy(fixture("ultralytics/yolo11t-fp32.onnx"), parts.join("best.onnx")).expect("copy");
    for refused in ["refused-names-mismatch.onnx", "refused-no-metadata.onnx"] {
        std::fs::copy(fixture(&format!("ultralytics/{refused}")), dir.path().join(refused)).expect("copy");
    }
    let start = |model: &str| {
        let mut config = test_config();
        config.model_dir = Some(dir.path().to_owned());
        config.default_pipeline = "parts".into();
        config.pipelines = BTreeMap::from([("parts".to_owned(), PipelineSettings::Detect(DetectSettings::new(model)))]);
        Pipelines::start(&config.service_settings())
    };
    let served = start("parts").expect("a folder with one export starts");
    let info = served.describe();
    let parts_info = info.iter().find(|p| p.name == "parts").expect("parts pipeline");
    assert_eq!(parts_info.classes, ["bolt", "nut", "washer", "bracket", "cap"]);
    drop(served);

    let refusal = |model: &str| match start(model) {
        Ok(_) => panic!("{model} was served"),
        Err(error) => error.to_string(),
    };
    let mismatch = refusal("refused-names-mismatch.onnx");
    assert!(
        mismatch.contains("refused-names-mismatch.onnx")
            && mismatch.contains("with 3 classes")
            && mismatch.contains("[n, 7, anchors]"),
        "{mismatch}"
    );
    let bare = refusal("refused-no-metadata.onnx");
    assert!(bare.contains("no Ultralytics metadata") && bare.contains("model.toml"), "{bare}");
    std::fs::copy(fixture("ultralytics/yolov8t-fp32.onnx"), parts.join("other.onnx")).expect("copy");
    let two = refusal("parts");
    assert!(two.contains("2 .onnx files") && two.contains("parts/best.onnx"), "{two}");
}

/// The shipped conveyor YOLO11n: a folder holding only its Ultralytics export, served with no
/// `model.toml`, detecting as Ultralytics predicts on the held-out fixture images.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_conveyor_yolo11n_is_served_from_its_export_alone_as_ultralytics_predicts() {
    let _machine = crate::common::machine_shared();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let dir = models.join("yolo11n-conveyor");
    assert!(!dir.join("model.toml").exists(), "the shipped YOLO is served from its export alone");
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    let reference: Value = serde_json::from_str(&text).expect("json");
    let conf = reference["conf"].as_f64().expect("conf") as f32;
    let mut settings = DetectSettings::new("yolo11n-conveyor");
    settings.score_threshold = Some(conf);
    settings.iou_threshold = Some(reference["iou"].as_f64().expect("iou") as f32);
    let mut config = test_config();
    config.model_dir = Some(models);
    config.pipelines = BTreeMap::from([("parts".to_owned(), PipelineSettings::Detect(settings))]);
    config.default_pipeline = "parts".into();
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let listed = client.list_pipelines(proto::ListPipelinesRequest {}).await.expect("list").into_inner();
    assert_eq!(listed.pipelines[0].classes, ["bolt", "nut", "washer", "bracket", "cap"]);
    let entry = &reference["models"]["yolo11n-conveyor"];
    let compared = matches_ultralytics(&mut client, "parts", "yolo11n-conveyor", entry, conf).await;
    assert!(compared >= 20, "only {compared} detections compared");
    server.stop().await;
}

/// JPEG frames of odd sizes (tests/fixtures/preprocess: 4:2:0, 4:2:2, 4:4:4, progressive, gray,
/// restart markers; 97×61 … 1280×720) through every export and the shipped YOLO11n: one-to-one
/// with what `YOLO(onnx).predict` finds on the same files (tests/fixtures/preprocess/predict.json).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpeg_frames_of_odd_sizes_are_detected_exactly_as_ultralytics_predicts() {
    let _machine = crate::common::machine_shared();
    let text = std::fs::read_to_string(fixture("preprocess/predict.json")).expect("predict.json");
    let reference: Value = serde_json::from_str(&text).expect("json");
    let conf = reference["conf"].as_f64().expect("conf") as f32;
    let iou_threshold = reference["iou"].as_f64().expect("iou") as f32;
    let models = reference["models"].as_object().expect("models");
    let settings = |model: &str| {
        let mut settings = DetectSettings::new(model);
        settings.score_threshold = Some(conf);
        settings.iou_threshold = Some(iou_threshold);
        PipelineSettings::Detect(settings)
    };
    let mut config = test_config();
    config.model_dir = Some(fixture("ultralytics"));
    config.pipelines = models
        .keys()
        .filter(|m| m.ends_with(".onnx"))
        .map(|model| (pipeline_name(model), settings(model)))
        .collect::<BTreeMap<_, _>>();
    config.default_pipeline = pipeline_name("yolov8t-fp32.onnx");
    let fixtures_server = TestServer::start(config).await;
    let mut shipped_config = test_config();
    shipped_config.model_dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    shipped_config.pipelines = BTreeMap::from([("parts".to_owned(), settings("yolo11n-conveyor"))]);
    shipped_config.default_pipeline = "parts".into();
    let shipped_server = TestServer::start(shipped_config).await;
    let (mut fixtures_client, mut shipped_client) = (fixtures_server.client().await, shipped_server.client().await);
    let (mut compared, mut worst) = (0, (0.0f32, 0.0f32));
    for (model, entry) in models {
        let (client, pipeline) = if model.ends_with(".onnx") {
            (&mut fixtures_client, pipeline_name(model))
        } else {
            (&mut shipped_client, "parts".to_owned())
        };
        for (frame, predicted) in entry["images"].as_object().expect("images") {
            let what = format!("{model} on {frame}");
            let (got, want) =
                served_and_predicted(client, &pipeline, model, &format!("preprocess/{frame}"), predicted).await;
            let (px, score) = one_to_one(&want, &got, 0.5, 0.002, &what);
            worst = (worst.0.max(px), worst.1.max(score));
            compared += want.len();
        }
    }
    eprintln!("{compared} predicted boxes matched one-to-one; worst corner {:.4} px, score {:.6}", worst.0, worst.1);
    assert!(compared >= 300, "only {compared} boxes compared");
    fixtures_server.stop().await;
    shipped_server.stop().await;
}

/// A dynamic export letterboxes each frame only to a stride multiple: frames of several sizes sent
/// at once are batched by size and answered as when sent alone. `letterbox = "full"` pads every
/// frame to the whole input instead (different pixels on a frame that is not square), and on a
/// fixed export `letterbox = "stride"` is refused at start, naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_several_sizes_batch_by_size_and_full_letterbox_is_the_other_choice() {
    use linesight::batching::BatchPolicy;
    use linesight::pipeline::LetterboxMode;

    let _machine = crate::common::machine_shared();
    let frames: Vec<(String, Vec<u8>)> = ["q90-420-500x333.jpg", "q92-422-241x599.jpg", "q85-420-1280x720.jpg"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(fixture(&format!("preprocess/{f}"))).expect("frame")))
        .collect();
    let pipeline = |letterbox: Option<LetterboxMode>| {
        let mut settings = DetectSettings::new("yolov8t-fp32.onnx");
        settings.score_threshold = Some(0.05);
        settings.letterbox = letterbox;
        // Frames wait long enough for others to join them, so that batches form.
        settings.batching =
            BatchPolicy { max_batch: 4, max_queue_delay: Duration::from_millis(50), max_queue_size: 64 };
        PipelineSettings::Detect(settings)
    };
    let mut config = test_config();
    config.model_dir = Some(fixture("ultralytics"));
    config.pipelines = BTreeMap::from([
        ("stride".to_owned(), pipeline(None)),
        ("full".to_owned(), pipeline(Some(LetterboxMode::Full))),
    ]);
    config.default_pipeline = "stride".into();
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let mut alone = BTreeMap::new();
    for (name, data) in &frames {
        let answer = client.inspect(image_request("stride", data.clone())).await.expect("inspect").into_inner();
        alone.insert(name.clone(), answer.detections);
    }
    let burst = (0..4).flat_map(|_| frames.iter()).map(|(name, data)| {
        let mut client = client.clone();
        let request = image_request("stride", data.clone());
        async move { (name.clone(), client.inspect(request).await.expect("inspect").into_inner()) }
    });
    let answers = futures::future::join_all(burst).await;
    let largest_batch = answers.iter().map(|(_, a)| a.batch_size).max().unwrap_or(0);
    assert!(largest_batch >= 2, "12 frames sent at once never shared a batch");
    for (name, answer) in &answers {
        assert_eq!(answer.detections, alone[name], "{name} in a batch of {}", answer.batch_size);
    }
    let tall = &frames[1].1;
    let full = client.inspect(image_request("full", tall.clone())).await.expect("full").into_inner();
    assert_ne!(full.detections, alone["q92-422-241x599.jpg"], "the full letterbox feeds other pixels");
    server.stop().await;

    let mut fixed = DetectSettings::new("yolov8t-fp16.onnx");
    fixed.letterbox = Some(LetterboxMode::Stride);
    let mut config = test_config();
    config.model_dir = Some(fixture("ultralytics"));
    config.pipelines = BTreeMap::from([("fixed".to_owned(), PipelineSettings::Detect(fixed))]);
    config.default_pipeline = "fixed".into();
    let refused =
        Pipelines::start(&config.service_settings()).err().expect("a fixed export cannot letterbox to a stride");
    assert!(
        refused.to_string().contains("letterbox = \"stride\" needs a model whose input size is open")
            && refused.to_string().contains("320x320"),
        "{refused}"
    );
}
