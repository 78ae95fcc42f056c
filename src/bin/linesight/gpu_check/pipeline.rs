//! The service end to end on one provider: a real server on 127.0.0.1, a real gRPC client, real
//! JPEG frames. Frames go one at a time (batch 1) and eight at once (batch 8); the client times
//! each round trip, the server reports each stage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::Frames;
use linesight::api::proto::inspection_client::InspectionClient;
use linesight::api::proto::{self, Image, InspectRequest, InspectResponse};
use linesight::config::Config;
use linesight::engine::{ConvSearch, Provider};
use linesight::pipeline::Pipelines;

/// One way of running the service.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Variant {
    pub label: &'static str,
    pub provider: Provider,
    pub gpu_preprocess: bool,
    pub conv_search: ConvSearch,
    pub fixed_shapes: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Percentiles {
    fn of(samples: &mut [f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self { p50_ms: at(0.5), p99_ms: at(0.99) }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadResult {
    pub batch: usize,
    pub frames: usize,
    pub mean_batch_formed: f64,
    pub end_to_end: Percentiles,
    pub decode: Percentiles,
    pub preprocess: Percentiles,
    pub queue_wait: Percentiles,
    pub inference: Percentiles,
    pub postprocess: Percentiles,
    pub server_total: Percentiles,
    pub throughput_fps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VariantResult {
    pub variant: Variant,
    /// Start-up failed: the message (a provider that cannot load, say).
    pub error: Option<String>,
    pub provider_running: String,
    pub device_memory_mib: Vec<(String, f64)>,
    pub loads: Vec<LoadResult>,
    /// Each frame's detections (class, score, box), for comparison across variants.
    #[serde(skip)]
    pub detections: Vec<Vec<(u32, f32, [f32; 4])>>,
    /// Each frame's tracked objects through the `track` pipeline (track id as the class).
    #[serde(skip)]
    pub tracks: Vec<Vec<(u32, f32, [f32; 4])>>,
}

fn request(camera: &str, sequence: u64, jpeg: &[u8]) -> InspectRequest {
    pipeline_request("detect", camera, sequence, jpeg)
}

fn pipeline_request(pipeline: &str, camera: &str, sequence: u64, jpeg: &[u8]) -> InspectRequest {
    InspectRequest {
        camera_id: camera.into(),
        sequence,
        pipeline: pipeline.into(),
        image: Some(Image {
            data: jpeg.to_vec().into(),
            encoding: proto::image::Encoding::Jpeg as i32,
            width: 0,
            height: 0,
        }),
        budget_ms: 0,
        annotate: false,
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Runs `variant` on `config` (its engine settings replaced) over `frames`.
pub async fn run_variant(variant: Variant, mut config: Config, frames: &Frames, iterations: usize) -> VariantResult {
    config.engine.provider = variant.provider;
    config.engine.gpu_preprocess = variant.gpu_preprocess;
    config.engine.cuda_conv_search = variant.conv_search;
    config.engine.gpu_batch_shapes = if variant.fixed_shapes {
        linesight::config::BatchShapes::Fixed
    } else {
        linesight::config::BatchShapes::Dynamic
    };
    config.engine.allow_fallback = false;
    let mut result = VariantResult {
        variant,
        error: None,
        provider_running: String::new(),
        device_memory_mib: Vec::new(),
        loads: Vec::new(),
        detections: Vec::new(),
        tracks: Vec::new(),
    };
    let pipelines = match tokio::task::block_in_place(|| Pipelines::start(&config.service_settings())) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            result.error = Some(e.to_string());
            return result;
        }
    };
    for info in pipelines.describe() {
        if info.name == "detect" {
            result.provider_running = info.provider.name().to_owned();
        }
        if let Some(bytes) = info.device_memory_bytes {
            result.device_memory_mib.push((info.name.clone(), bytes as f64 / f64::from(1u32 << 20)));
        }
    }
    match serve_and_measure(pipelines, &config, frames, iterations, &mut result).await {
        Ok(()) => {}
        Err(e) => result.error = Some(e),
    }
    result
}

async fn serve_and_measure(
    pipelines: Arc<Pipelines>,
    config: &Config,
    frames: &Frames,
    iterations: usize,
    result: &mut VariantResult,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_config = config.server.clone();
    let server = tokio::spawn(async move {
        let _ = linesight::api::serve(pipelines, &server_config, listener, async {
            let _ = stopped.await;
        })
        .await;
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let client = InspectionClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);

    // Every frame once through `detect`, then in order through `track` (GPU crops and embeddings
    // where the variant has them); this also warms the service up.
    result.detections = labelled_boxes(&client, frames, "detect", |d| Some(d.class_id)).await?;
    result.tracks = labelled_boxes(&client, frames, "track", |d| (d.track_id > 0).then_some(d.track_id as u32)).await?;
    for batch in [1usize, 8] {
        result.loads.push(measure(&client, frames, batch, iterations).await?);
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok(())
}

/// Each frame's boxes (label, score, box) from `pipeline`, frames sent one after another on one
/// camera; `label` names a box (its class, its track id) or leaves it out.
async fn labelled_boxes(
    client: &InspectionClient<tonic::transport::Channel>,
    frames: &Frames,
    pipeline: &str,
    label: impl Fn(&proto::Detection) -> Option<u32>,
) -> Result<Vec<Vec<(u32, f32, [f32; 4])>>, String> {
    let mut out = Vec::with_capacity(frames.jpegs.len());
    for (i, jpeg) in frames.jpegs.iter().enumerate() {
        let req = pipeline_request(pipeline, &format!("{pipeline}-check"), i as u64 + 1, jpeg);
        let response = client.clone().inspect(req).await.map_err(|e| e.to_string())?.into_inner();
        if let Some(error) = response.error {
            return Err(format!("{pipeline}, frame {i}: {}", error.message));
        }
        out.push(
            response
                .detections
                .iter()
                .filter_map(|d| {
                    let b = d.r#box.unwrap_or_default();
                    label(d).map(|l| (l, d.score, [b.x1, b.y1, b.x2, b.y2]))
                })
                .collect(),
        );
    }
    Ok(out)
}

/// `iterations` frames in rounds of `batch` concurrent requests.
async fn measure(
    client: &InspectionClient<tonic::transport::Channel>,
    frames: &Frames,
    batch: usize,
    iterations: usize,
) -> Result<LoadResult, String> {
    let mut samples: Vec<(f64, InspectResponse)> = Vec::with_capacity(iterations);
    let started = Instant::now();
    let mut sequence = 0u64;
    while samples.len() < iterations {
        let round: Vec<_> = (0..batch)
            .map(|k| {
                let jpeg = &frames.jpegs[(sequence as usize + k) % frames.jpegs.len()];
                let req = request(&format!("load-{k}"), sequence + k as u64, jpeg);
                let mut client = client.clone();
                async move {
                    let t = Instant::now();
                    let response = client.inspect(req).await;
                    (t.elapsed(), response)
                }
            })
            .collect();
        sequence += batch as u64;
        for (elapsed, response) in futures::future::join_all(round).await {
            let response = response.map_err(|e| e.to_string())?.into_inner();
            if let Some(error) = &response.error {
                return Err(error.message.clone());
            }
            samples.push((elapsed.as_secs_f64() * 1000.0, response));
        }
    }
    let wall = started.elapsed().max(Duration::from_micros(1));
    let stage = |f: &dyn Fn(&proto::StageTimings) -> u64| {
        let mut v: Vec<f64> = samples.iter().map(|(_, r)| ms(r.timings.map(|t| f(&t)).unwrap_or(0))).collect();
        Percentiles::of(&mut v)
    };
    let mut e2e: Vec<f64> = samples.iter().map(|(t, _)| *t).collect();
    Ok(LoadResult {
        batch,
        frames: samples.len(),
        mean_batch_formed: samples.iter().map(|(_, r)| f64::from(r.batch_size)).sum::<f64>() / samples.len() as f64,
        end_to_end: Percentiles::of(&mut e2e),
        decode: stage(&|t| t.decode_us),
        preprocess: stage(&|t| t.preprocess_us),
        queue_wait: stage(&|t| t.queue_wait_us),
        inference: stage(&|t| t.inference_us),
        postprocess: stage(&|t| t.postprocess_us),
        server_total: stage(&|t| t.total_us),
        throughput_fps: samples.len() as f64 / wall.as_secs_f64(),
    })
}

/// How closely `other`'s detections follow `reference`'s: (matched fraction, largest score
/// difference, largest box-corner difference in pixels). Matching: same class, IoU ≥ 0.5, greedy.
pub fn agreement(
    reference: &[Vec<(u32, f32, [f32; 4])>],
    other: &[Vec<(u32, f32, [f32; 4])>],
) -> (usize, usize, f32, f32) {
    let (mut total, mut matched, mut max_score, mut max_corner) = (0, 0, 0f32, 0f32);
    for (a, b) in reference.iter().zip(other) {
        total += a.len().max(b.len());
        let mut used = vec![false; b.len()];
        for (class, score, bx) in a {
            let best = b
                .iter()
                .enumerate()
                .filter(|(j, (c, _, _))| !used[*j] && c == class)
                .map(|(j, (_, s, by))| (j, iou(bx, by), *s, *by))
                .filter(|(_, o, _, _)| *o >= 0.5)
                .max_by(|x, y| x.1.total_cmp(&y.1));
            if let Some((j, _, s, by)) = best {
                used[j] = true;
                matched += 1;
                max_score = max_score.max((s - score).abs());
                for k in 0..4 {
                    max_corner = max_corner.max((by[k] - bx[k]).abs());
                }
            }
        }
    }
    (matched, total, max_score, max_corner)
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}
