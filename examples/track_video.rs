//! Real footage through the `track` pipeline over `InspectStream`: writes an annotated contact sheet
//! (contact-sheet.jpg)
//! and a JSON report of how many track ids there were and how stable they stayed.
//!
//! ```text
//! scripts/extract-vtest-clip.sh /tmp/vtest            # all 795 frames of vtest.avi as JPEG
//! cargo run --release --example track_video -- --frames /tmp/vtest --out docs/track-vtest --fps 10
//! ```
//! Starts its own server on 127.0.0.1 with the default config (or `--config`), unless `--server`
//! names a running one.
// An example stops at the first broken expectation, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use image::{GenericImage, RgbImage};
use linesight::api::proto::inspection_client::InspectionClient;
use linesight::api::proto::{self, Image, InspectRequest, InspectResponse};
use linesight::config::Config;
use linesight::pipeline::Pipelines;
use tokio_stream::StreamExt;

#[derive(Parser)]
struct Args {
    /// Folder of JPEG frames, tracked in file-name order.
    #[arg(long)]
    frames: PathBuf,
    /// Where contact-sheet.jpg and report.json go.
    #[arg(long)]
    out: PathBuf,
    /// A running server (http://host:port); default: start one in-process.
    #[arg(long)]
    server: Option<String>,
    #[arg(long)]
    config: Option<PathBuf>,
    /// Tracked classes (comma-separated detector class names).
    #[arg(long, default_value = "person")]
    classes: String,
    /// Frames on the contact sheet.
    #[arg(long, default_value_t = 12)]
    sheet_frames: usize,
    /// Per-frame budget; generous by default so every frame is tracked even on a slow machine.
    #[arg(long, default_value_t = 10_000)]
    budget_ms: u32,
    /// Send frames at this rate, as a camera would; 0 = as fast as the server answers.
    #[arg(long, default_value_t = 0.0)]
    fps: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&args.frames)
        .with_context(|| format!("cannot read {}", args.frames.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("jpg")))
        .collect();
    paths.sort();
    anyhow::ensure!(!paths.is_empty(), "no .jpg frames in {}", args.frames.display());
    std::fs::create_dir_all(&args.out)?;

    let (endpoint, server) = match &args.server {
        Some(url) => (url.clone(), None),
        None => {
            let mut config = match &args.config {
                Some(p) => Config::from_file(p)?,
                None => Config::default(),
            };
            if let Some(track) = config.pipelines.get_mut("track").and_then(|p| p.as_track_mut()) {
                track.tracker.classes = args.classes.split(',').map(str::trim).map(str::to_owned).collect();
            }
            let pipelines = Arc::new(Pipelines::start(&config.service_settings())?);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let server_config = config.server.clone();
            let task = tokio::spawn(async move {
                linesight::api::serve(pipelines, &server_config, listener, std::future::pending()).await
            });
            (format!("http://{addr}"), Some(task))
        }
    };
    let mut client = InspectionClient::connect(endpoint).await?.max_decoding_message_size(64 << 20);

    let sheet_every = (paths.len() / args.sheet_frames.max(1)).max(1);
    let frames: Vec<(u64, Vec<u8>, bool)> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| Ok((i as u64, std::fs::read(p)?, i % sheet_every == sheet_every / 2)))
        .collect::<Result<_>>()?;
    let budget_ms = args.budget_ms;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let period = (args.fps > 0.0).then(|| std::time::Duration::from_secs_f64(1.0 / args.fps));
    tokio::spawn(async move {
        let mut tick = period.map(tokio::time::interval);
        for (sequence, jpeg, annotate) in frames {
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
            let request = InspectRequest {
                camera_id: "vtest".into(),
                sequence,
                pipeline: "track".into(),
                image: Some(Image {
                    data: jpeg.into(),
                    encoding: proto::image::Encoding::Jpeg as i32,
                    width: 0,
                    height: 0,
                }),
                budget_ms,
                annotate,
            };
            if tx.send(request).await.is_err() {
                break;
            }
        }
    });
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    let started = std::time::Instant::now();
    let mut inbound = client.inspect_stream(requests).await?.into_inner();
    let mut responses: Vec<InspectResponse> = Vec::new();
    while let Some(r) = inbound.next().await {
        responses.push(r?);
        if responses.len().is_multiple_of(100) {
            eprintln!("{} / {} frames", responses.len(), paths.len());
        }
    }
    let wall = started.elapsed();

    let report = report(&responses, wall.as_secs_f64());
    std::fs::write(args.out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    let sheet = contact_sheet(&responses)?;
    std::fs::write(args.out.join("contact-sheet.jpg"), linesight::imaging::encode_jpeg(&sheet, 82)?)?;
    println!("{}", serde_json::to_string_pretty(&report["summary"])?);
    if let Some(task) = server {
        task.abort();
    }
    Ok(())
}

fn iou(a: &proto::Box, b: &proto::Box) -> f32 {
    let iw = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let ih = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let inter = iw * ih;
    inter / ((a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Ids, their lifetimes, and how often a box that clearly continues (IoU ≥ 0.5 with a box of the
/// previous frame) keeps the id.
fn report(responses: &[InspectResponse], wall_s: f64) -> serde_json::Value {
    let mut spans: BTreeMap<u64, (u64, u64, usize)> = BTreeMap::new();
    for r in responses {
        for d in &r.detections {
            let e = spans.entry(d.track_id).or_insert((r.sequence, r.sequence, 0));
            e.1 = r.sequence;
            e.2 += 1;
        }
    }
    let (mut kept, mut continuing) = (0usize, 0usize);
    for w in responses.windows(2) {
        for d in &w[1].detections {
            let Some(b) = d.r#box.as_ref() else { continue };
            let best = w[0]
                .detections
                .iter()
                .filter_map(|p| p.r#box.as_ref().map(|pb| (iou(pb, b), p.track_id)))
                .max_by(|x, y| x.0.total_cmp(&y.0));
            if let Some((overlap, id)) = best
                && overlap >= 0.5
            {
                continuing += 1;
                kept += usize::from(id == d.track_id);
            }
        }
    }
    let mut lengths: Vec<f64> = spans.values().map(|s| s.2 as f64).collect();
    lengths.sort_by(f64::total_cmp);
    let mut totals: Vec<f64> =
        responses.iter().filter_map(|r| r.timings.as_ref()).map(|t| t.total_us as f64 / 1e3).collect();
    totals.sort_by(f64::total_cmp);
    let stage = |f: fn(&proto::StageTimings) -> u64| {
        let mut v: Vec<f64> = responses.iter().filter_map(|r| r.timings.as_ref()).map(|t| f(t) as f64 / 1e3).collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let errors = responses.iter().filter(|r| r.error.is_some()).count();
    let applied = responses.iter().filter(|r| r.tracking == proto::Tracking::Applied as i32).count();
    let people: Vec<usize> = responses.iter().map(|r| r.detections.len()).collect();
    serde_json::json!({
        "summary": {
            "frames": responses.len(),
            "frames_applied": applied,
            "frame_errors": errors,
            "track_ids": spans.len(),
            "tracked_boxes": people.iter().sum::<usize>(),
            "most_tracks_in_a_frame": people.iter().max(),
            "mean_tracks_per_frame": people.iter().sum::<usize>() as f64 / responses.len().max(1) as f64,
            "track_length_frames": { "median": percentile(&lengths, 0.5), "p90": percentile(&lengths, 0.9), "max": lengths.last() },
            "tracks_of_at_least_50_frames": lengths.iter().filter(|&&l| l >= 50.0).count(),
            "id_kept_on_continuing_boxes": { "kept": kept, "of": continuing, "share": kept as f64 / continuing.max(1) as f64 },
            "latency_ms": { "p50": percentile(&totals, 0.5), "p95": percentile(&totals, 0.95), "p99": percentile(&totals, 0.99), "max": totals.last() },
            "share_within_83ms": totals.iter().filter(|&&t| t <= 83.0).count() as f64 / totals.len().max(1) as f64,
            "stage_median_ms": {
                "decode": stage(|t| t.decode_us), "preprocess": stage(|t| t.preprocess_us),
                "queue_wait": stage(|t| t.queue_wait_us), "inference": stage(|t| t.inference_us),
                "postprocess": stage(|t| t.postprocess_us), "embed": stage(|t| t.embed_us), "track": stage(|t| t.track_us),
            },
            "wall_s": wall_s,
        },
        "tracks": spans.iter().map(|(id, (first, last, n))| serde_json::json!({"id": id, "first": first, "last": last, "frames": n})).collect::<Vec<_>>(),
    })
}

/// The annotated frames, 4 across, each at half size, captioned by the pipeline's drawing.
fn contact_sheet(responses: &[InspectResponse]) -> Result<RgbImage> {
    let shots: Vec<RgbImage> = responses
        .iter()
        .filter(|r| !r.annotated_jpeg.is_empty())
        .map(|r| Ok(image::load_from_memory(&r.annotated_jpeg)?.to_rgb8()))
        .collect::<Result<_>>()?;
    anyhow::ensure!(!shots.is_empty(), "no annotated frames came back");
    let (w, h) = (shots[0].width() / 2, shots[0].height() / 2);
    let cols = 4u32;
    let rows = (shots.len() as u32).div_ceil(cols);
    let mut sheet = RgbImage::new(cols * w, rows * h);
    for (i, shot) in shots.iter().enumerate() {
        let small = image::imageops::thumbnail(shot, w, h);
        sheet.copy_from(&small, (i as u32 % cols) * w, (i as u32 / cols) * h)?;
    }
    Ok(sheet)
}
