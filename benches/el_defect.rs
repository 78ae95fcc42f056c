//! `el-defect` latency per cell on the CPU (ONNX Runtime, 2 intra-op threads): a committed
//! synthetic 300x300 PNG cell through the whole pipeline (decode → letterbox → batcher → Mask R-CNN
//! → mask paste, outlines, verdict), in process, no gRPC:
//!   * batch 1: one cell at a time (no queue delay);
//!   * batch 8: eight cells submitted together to a second `el-defect` pipeline on the same model
//!     (`max_batch` 8, a 5 ms queue delay so they ride in one batch); the time for all eight,
//!     divided by eight, is the per-cell figure;
//!   * the bare model (`Session::run` of one cell's tensor), for the pipeline's overhead.
//!
//! Prints the per-cell medians. Run: cargo bench --bench el_defect
// A benchmark stops at the first broken expectation, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use linesight::config::Config;
use linesight::engine::OrtRuntime;
use linesight::imaging::{ImageEncoding, Preprocessor};
use linesight::model::ModelManifest;
use linesight::pipeline::PipelineSettings;
use linesight::pipeline::{FrameRequest, ImageInput, Pipelines, tensor_spec};

fn median_ns(name: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"), PathBuf::from);
    let text = std::fs::read_to_string(dir.join("criterion/el_defect").join(name).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

const BATCHED: &str = "el-defect-b8";

fn request(png: &[u8], sequence: u64, pipeline: &str) -> FrameRequest {
    FrameRequest {
        camera_id: format!("bench-{}", sequence % 8),
        sequence,
        pipeline: pipeline.into(),
        image: Some(ImageInput { data: png.to_vec().into(), encoding: ImageEncoding::Png, width: 0, height: 0 }),
        budget: Some(Duration::from_secs(30)),
        annotate: false,
        received: tokio::time::Instant::now(),
        client_deadline: None,
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let threads = 2;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut config = Config::default();
    config.engine.intra_threads = threads;
    config.pipelines.retain(|_, p| matches!(p, PipelineSettings::Segment(_)));
    config.default_pipeline = "el-defect".into();
    let mut batched = config.pipelines.get("el-defect").expect("the el-defect pipeline").clone();
    batched.batching_mut().max_batch = 8;
    batched.batching_mut().max_queue_delay = Duration::from_micros(5_000);
    config.pipelines.insert(BATCHED.into(), batched);
    let pipelines = rt.block_on(async {
        Arc::new(Pipelines::start(&config.service_settings()).expect("pipelines (run scripts/setup)"))
    });
    let cells: Vec<Vec<u8>> = (0..8)
        .map(|k| std::fs::read(root.join(format!("tests/fixtures/el/cell_{}.png", 900000 + k))).expect("cell"))
        .collect();

    let manifest = ModelManifest::load(&config.resolved_model_dir().join("el-maskrcnn")).expect("manifest");
    let runtime = OrtRuntime::init(None).expect("runtime");
    let mut session = common::bare_session(runtime, &manifest.onnx_path(), threads, config.engine.intra_op_spinning);
    let image = image::load_from_memory(&cells[0]).expect("cell").to_rgb8();
    let spec = tensor_spec(&manifest.input);
    let mut tensor = vec![0f32; spec.len()];
    Preprocessor::new().letterbox_into(&image, &spec, &mut tensor).expect("letterbox");

    let mut c = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(20)).configure_from_args();
    let mut group = c.benchmark_group("el_defect");
    group.bench_function("bare_session_run_b1", |b| {
        b.iter(|| {
            let input =
                ort::value::TensorRef::from_array_view(([1usize, 3, 300, 300], tensor.as_slice())).expect("tensor");
            session.run(ort::inputs!["images" => input]).expect("run").len()
        })
    });
    let mut sequence = 0u64;
    group.bench_function("pipeline_b1", |b| {
        b.iter(|| {
            sequence += 1;
            let cell = &cells[(sequence % 8) as usize];
            rt.block_on(pipelines.inspect(request(cell, sequence, "el-defect"))).expect("served").detections.len()
        })
    });
    group.bench_function("pipeline_b8", |b| {
        b.iter(|| {
            let frames: Vec<_> = cells
                .iter()
                .map(|cell| {
                    sequence += 1;
                    pipelines.inspect(request(cell, sequence, BATCHED))
                })
                .collect();
            let results = rt.block_on(futures::future::join_all(frames));
            results.into_iter().map(|r| r.expect("served").batch_size as usize).sum::<usize>()
        })
    });
    group.finish();
    c.final_summary();

    let ms = |ns: f64| ns / 1e6;
    if let (Some(bare), Some(b1), Some(b8)) =
        (median_ns("bare_session_run_b1"), median_ns("pipeline_b1"), median_ns("pipeline_b8"))
    {
        println!(
            "el-defect per-cell median on {threads} threads: bare model {:.1} ms, pipeline batch 1 {:.1} ms, \
             pipeline batch 8 {:.1} ms per cell ({:.1} ms for all eight)",
            ms(bare),
            ms(b1),
            ms(b8) / 8.0,
            ms(b8)
        );
    }
    rt.block_on(pipelines.shutdown());
}
