//! The service's overhead: end-to-end `Inspect` (client → gRPC on 127.0.0.1 → decode → letterbox →
//! batcher → model worker → decode + NMS → response) for a 768x576 JPEG, against a bare
//! `Session::run` of the same model with the same threads, measured side by side in one run.
//! Prints both medians and their ratio. Run: cargo bench --bench inspect_overhead
// A benchmark stops at the first broken expectation, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use linesight::api::proto::inspection_client::InspectionClient;
use linesight::api::proto::{Image, InspectRequest};
use linesight::config::Config;
use linesight::engine::OrtRuntime;
use linesight::imaging::{self, DecodeLimits, ImageEncoding, Preprocessor};
use linesight::model::ModelManifest;
use linesight::pipeline::{Pipelines, tensor_spec};

const BARE: &str = "bare_session_run_nanodet-g_b1";
const E2E: &str = "inspect_unary_vtest_768x576_jpeg";

fn median_ns(name: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"), PathBuf::from);
    let path = dir.join("criterion").join("overhead").join(name).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let threads = 2;
    let spinning = std::env::var("LINESIGHT_BENCH_SPINNING").is_ok_and(|v| v == "1");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut config = Config::default();
    config.engine.intra_threads = threads;
    config.engine.intra_op_spinning = spinning;
    config.server.default_budget = std::time::Duration::from_millis(10_000);

    let jpeg = std::fs::read(root.join("tests/fixtures/vtest/frame_0250.jpg")).expect("frame");
    let (addr, mut client) = rt.block_on(async {
        let pipelines = Arc::new(Pipelines::start(&config.service_settings()).expect("pipelines (run scripts/setup)"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server_config = config.server.clone();
        tokio::spawn(async move {
            let _ = linesight::api::serve(pipelines, &server_config, listener, std::future::pending()).await;
        });
        let client = InspectionClient::connect(format!("http://{addr}")).await.expect("connect");
        (addr, client)
    });

    // The same model, same input, same thread count, straight through ONNX Runtime.
    let manifest = ModelManifest::load(&config.resolved_model_dir().join("nanodet-g")).expect("manifest");
    let runtime = OrtRuntime::init(None).expect("runtime");
    // Plain ort: the same builder options the engine uses, no output copies.
    let mut session = common::bare_session(runtime, &manifest.onnx_path(), threads, config.engine.intra_op_spinning);
    let limits = DecodeLimits { max_pixels: 40_000_000, max_side: 16_384 };
    let img = imaging::decode(&jpeg, ImageEncoding::Jpeg, 0, 0, limits).expect("decode");
    let spec = tensor_spec(&manifest.input);
    let mut tensor = vec![0f32; spec.len()];
    Preprocessor::new().letterbox_into(&img, &spec, &mut tensor).expect("letterbox");

    let request = InspectRequest {
        camera_id: "bench".into(),
        sequence: 0,
        pipeline: String::new(),
        image: Some(Image { data: jpeg.into(), encoding: 0, width: 0, height: 0 }),
        budget_ms: 0,
        annotate: false,
    };

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(60)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    {
        let mut group = c.benchmark_group("overhead");
        group.bench_function(BARE, |b| {
            b.iter(|| {
                let input =
                    ort::value::TensorRef::from_array_view(([1usize, 3, 416, 416], tensor.as_slice())).expect("tensor");
                let outputs = session.run(ort::inputs!["images" => input]).expect("run");
                outputs.len()
            })
        });
        let mut stages = Vec::new();
        group.bench_function(E2E, |b| {
            b.iter(|| {
                let response = rt.block_on(client.inspect(request.clone())).expect("inspect").into_inner();
                if let Some(t) = response.timings {
                    stages.push([
                        t.decode_us,
                        t.preprocess_us,
                        t.queue_wait_us,
                        t.inference_us,
                        t.postprocess_us,
                        t.total_us,
                    ]);
                }
            });
        });
        group.finish();
        let names = ["decode", "preprocess", "queue_wait", "inference", "postprocess", "total"];
        let medians: Vec<String> = (0..6)
            .map(|k| {
                let mut v: Vec<u64> = stages.iter().map(|s| s[k]).collect();
                v.sort_unstable();
                format!("{} {:.2} ms", names[k], v.get(v.len() / 2).copied().unwrap_or(0) as f64 / 1e3)
            })
            .collect();
        println!("server stage medians over {} requests: {}", stages.len(), medians.join(", "));
    }
    c.final_summary();
    if let (Some(bare), Some(e2e)) = (median_ns(BARE), median_ns(E2E)) {
        println!(
            "\ncriterion medians (one after the other): bare Session::run {:.2} ms, end-to-end Inspect {:.2} ms, ratio {:.3}",
            bare / 1e6,
            e2e / 1e6,
            e2e / bare
        );
    }

    // Interleaved pairs, so that drift on a shared machine hits both sides alike.
    let pairs = 200;
    let (mut bare, mut e2e) = (Vec::with_capacity(pairs), Vec::with_capacity(pairs));
    for _ in 0..pairs {
        let t = std::time::Instant::now();
        let input = ort::value::TensorRef::from_array_view(([1usize, 3, 416, 416], tensor.as_slice())).expect("tensor");
        drop(session.run(ort::inputs!["images" => input]).expect("run"));
        bare.push(t.elapsed().as_secs_f64() * 1e3);
        let t = std::time::Instant::now();
        rt.block_on(client.inspect(request.clone())).expect("inspect");
        e2e.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, e) = (median(&mut bare), median(&mut e2e));
    println!(
        "interleaved, {pairs} pairs (server {addr}, {threads} ONNX Runtime threads, spinning {spinning}): bare Session::run median {b:.2} ms, \
         end-to-end Inspect median {e:.2} ms, ratio {:.3}",
        e / b
    );
}
