//! `linesight`: serve the inspection API, or run a pipeline on image files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod bench;
#[cfg(feature = "camera")]
mod camera;
#[cfg(feature = "cuda")]
mod gpu_check;
mod remote;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use linesight::config::Config;
use linesight::imaging::{self, DecodeLimits, ImageEncoding};
use linesight::pipeline::{FrameRequest, ImageInput, Pipelines, draw_detections};
use linesight::track::{Tracker, TrackerParams, motchallenge};

#[derive(Parser)]
#[command(
    name = "linesight",
    version,
    about = "Vision-inspection service: camera frames over gRPC, batched into ONNX Runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Common {
    /// TOML config file (see linesight.example.toml); without one, built-in defaults are used.
    #[arg(long, short, env = "LINESIGHT_CONFIG")]
    config: Option<PathBuf>,
    /// Folder of models (one sub-folder per model with model.onnx + model.toml).
    #[arg(long, env = "LINESIGHT_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// ONNX Runtime threads per inference call.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (Inspection, Health, Reflection).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on, e.g. 0.0.0.0:50051.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run a pipeline on image files: prints JSON, writes an annotated PNG per image.
    Infer {
        #[command(flatten)]
        common: Common,
        /// Pipeline to run (default: the config's default pipeline).
        #[arg(long, default_value = "")]
        pipeline: String,
        /// Where annotated PNGs go (default: next to each image).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Do not write annotated images.
        #[arg(long)]
        no_annotate: bool,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Load harness: N cameras streaming real frames at F fps; latency against the budget, capacity
    /// search, batching on vs off, overhead over the bare model. Writes JSON and an SVG plot.
    Bench(Box<BenchArgs>),
    /// Track MOTChallenge detections offline with the service's DeepSORT tracker.
    Mot(MotArgs),
    /// Camera bridge: capture RTSP/HTTP streams, video files, V4L2 devices or GStreamer pipelines
    /// (OpenCV) and stream each camera's newest frame to a server; answers as JSON lines.
    #[cfg(feature = "camera")]
    Camera(Box<camera::CameraArgs>),
    /// One camera's capture process: `camera` starts one per camera.
    #[cfg(feature = "camera")]
    #[command(hide = true)]
    CameraCapture(camera::CaptureArgs),
    /// Spin THREADS busy threads for at most SECONDS: `bench --background-load` runs this in a
    /// process of its own.
    #[command(hide = true)]
    Busy {
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
    /// On an NVIDIA GPU: check the kernels against the CPU path, then time the service end to end
    /// on each provider next to the CPU baseline (`scripts/gpu-check.sh` runs this).
    #[cfg(feature = "cuda")]
    GpuCheck {
        #[command(flatten)]
        common: Common,
        /// Folders of JPEG frames to send (default: the test fixtures' vtest frames).
        #[arg(long)]
        frames: Vec<PathBuf>,
        /// Frames timed per batch size and provider.
        #[arg(long, default_value_t = 400)]
        iterations: usize,
        /// Write the full report here as JSON.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// A running server to load, e.g. http://10.0.0.5:50051. Without it, the bench starts one itself
    /// on 127.0.0.1 from --config (in this process, sharing its CPUs).
    #[arg(long)]
    server: Option<String>,
    /// Pipeline the cameras ask for (empty: the server's default).
    #[arg(long, default_value = "")]
    pipeline: String,
    /// Simulated cameras, each on its own connection.
    #[arg(long, default_value_t = 4)]
    cameras: usize,
    /// Frames per second each camera sends (on a fixed schedule, whatever the answers).
    #[arg(long, default_value_t = 10.0)]
    fps: f64,
    /// Measured seconds of load.
    #[arg(long, default_value_t = 20.0, conflicts_with = "count")]
    duration_s: f64,
    /// Measured frames per camera instead of a duration (sent after the warm-up's frames).
    #[arg(long)]
    count: Option<u64>,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup_s: f64,
    /// `stream`: one InspectStream per camera; `unary`: one Inspect call per frame.
    #[arg(long, value_enum, default_value = "stream")]
    mode: bench::Mode,
    /// Budget sent with each frame; 0 = the server's default for the pipeline.
    #[arg(long, default_value_t = 0)]
    budget_ms: u32,
    /// Folders of JPEG frames, played in file-name order (default: the test fixtures' vtest clip;
    /// scripts/bench-frames.sh extracts all 795 frames of vtest.avi).
    #[arg(long)]
    frames: Vec<PathBuf>,
    /// Search the most cameras at --fps whose frames are 99 % within budget (ignores --cameras).
    #[arg(long)]
    capacity: bool,
    /// Upper bound of the capacity search.
    #[arg(long, default_value_t = 64)]
    max_cameras: usize,
    /// Measured seconds per capacity probe.
    #[arg(long, default_value_t = 10.0)]
    probe_s: f64,
    /// Also run the same load with batching off (max_batch = 1), on a server of the bench's own.
    #[arg(long)]
    compare_batching: bool,
    /// Bare `Session::run` calls timed for the overhead ratio (own server only; 0 = skip).
    #[arg(long, default_value_t = 100)]
    bare_runs: usize,
    /// Open loop at this multiple of the server's capacity: a closed-loop run of one client is
    /// made first, and --cameras becomes what offers FACTOR times its goodput at --fps.
    #[arg(long, conflicts_with_all = ["capacity", "compare_batching"])]
    overload: Option<f64>,
    /// Keep this many CPU cores busy from another process while the bench runs (a shared machine,
    /// on purpose).
    #[arg(long, default_value_t = 0)]
    background_load: usize,
    /// Run a grid instead of one load: background load (--matrix-background busy cores) × load
    /// shape (one camera at 10 fps, three times capacity open loop, six closed-loop clients) ×
    /// pipeline (--matrix-pipelines), each against one client's capacity under the same
    /// background; prints one table. Measured seconds per run: --duration-s.
    #[arg(long, conflicts_with_all = ["capacity", "compare_batching", "overload", "server", "background_load"])]
    matrix: bool,
    /// --matrix: the pipelines, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "detect,track")]
    matrix_pipelines: Vec<String>,
    /// --matrix: the background loads, in busy cores, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    matrix_background: Vec<usize>,
    /// --matrix: write each capacity run's service times (decode, preprocess, inference per frame)
    /// as CSV into this folder, one file per pipeline and background.
    #[arg(long, requires = "matrix")]
    trace_dir: Option<PathBuf>,
    /// Write the full report (every figure, per run) as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the latency plots (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// --server: how to reach a server with TLS or tokens.
    #[command(flatten)]
    remote: remote::RemoteArgs,
}

/// Input rows: `frame,-1,x,y,w,h,conf,-1,-1,-1[,e1..eK]`; output rows: `frame,id,x,y,w,h,conf,-1,-1,-1`.
#[derive(clap::Args)]
struct MotArgs {
    /// MOTChallenge detections, optionally with an appearance embedding appended to each row.
    #[arg(long)]
    detections: PathBuf,
    /// Where the track rows go.
    #[arg(long)]
    out: PathBuf,
    /// Detections scoring below this are dropped before tracking.
    #[arg(long, default_value_t = 0.0)]
    min_confidence: f32,
    /// A tracker parameter, as `[pipelines.<name>.tracker]` names it: `max_age=30`, `n_init=3`,
    /// `max_iou_distance=0.7`, `max_cosine_distance=0.2`, `nn_budget=100`,
    /// `gallery_update=every`. Repeat for several; the rest keep their defaults.
    #[arg(long = "tracker", value_name = "KEY=VALUE")]
    tracker: Vec<String>,
    /// Start from the DeepSORT paper's tracker (`track::DEEP_SORT_SETTINGS`) instead of the
    /// defaults; `--tracker` settings still apply on top.
    #[arg(long)]
    deep_sort: bool,
}

/// `--tracker` settings read into the same type a config file's tracker table is read into.
fn tracker_params(settings: &[String], deep_sort: bool) -> Result<TrackerParams> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tracker {
        #[serde(flatten)]
        params: TrackerParams,
    }
    let mut table = if deep_sort {
        toml::from_str::<toml::Table>(linesight::track::DEEP_SORT_SETTINGS).context("DeepSORT settings")?
    } else {
        toml::Table::new()
    };
    for setting in settings {
        let (key, value) =
            setting.split_once('=').with_context(|| format!("--tracker {setting}: expected KEY=VALUE"))?;
        // A bare word is a string (`every`); anything else is read as TOML (`30`, `0.7`).
        let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()));
        table.insert(key.trim().to_owned(), value);
    }
    let tracker: Tracker = table.try_into().context("--tracker")?;
    Ok(tracker.params)
}

fn load_config(common: &Common) -> Result<Config> {
    let mut config = match &common.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &common.model_dir {
        config.model_dir = Some(dir.clone());
    }
    if let Some(threads) = common.threads {
        config.engine.intra_threads = threads;
    }
    config.validate().map_err(linesight::config::ConfigError::Invalid)?;
    Ok(config)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    linesight::telemetry::init_logging();
    // Offline tools need no async runtime.
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match cli.command {
        Command::Mot(args) => mot(&args),
        Command::Busy { threads, seconds } => {
            bench::busy(
                threads,
                std::time::Duration::from_secs_f64(seconds.clamp(0.0, bench::BUSY_LIMIT.as_secs_f64())),
            );
            Ok(())
        }
        Command::Serve { common, listen } => runtime()?.block_on(serve(common, listen)),
        Command::Infer { common, pipeline, out_dir, no_annotate, images } => {
            runtime()?.block_on(infer(common, &pipeline, out_dir.as_deref(), !no_annotate, &images))
        }
        Command::Bench(args) => runtime()?.block_on(bench(*args)),
        #[cfg(feature = "camera")]
        Command::Camera(args) => runtime()?.block_on(camera::run(*args)),
        #[cfg(feature = "camera")]
        Command::CameraCapture(args) => camera::run_capture_process(&args),
        #[cfg(feature = "cuda")]
        Command::GpuCheck { common, frames, iterations, out } => {
            runtime()?.block_on(gpu_check(common, frames, iterations, out))
        }
    }
}

#[cfg(feature = "cuda")]
async fn gpu_check(common: Common, frames: Vec<PathBuf>, iterations: usize, out: Option<PathBuf>) -> Result<()> {
    let mut config = load_config(&common)?;
    // Nothing may be shed while timing: the budget is the caller's concern here, not the check's.
    config.server.default_budget = std::time::Duration::from_secs(60);
    let frame_dirs = if frames.is_empty() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        vec![root.join("tests/fixtures/vtest"), root.join("tests/fixtures/vtest-clip")]
    } else {
        frames
    };
    let options = gpu_check::GpuCheckOptions { config, frame_dirs, iterations, out };
    let report = gpu_check::run(options).await.map_err(|e| anyhow::anyhow!(e))?;
    print!("{}", gpu_check::table(&report));
    if report.passed() { Ok(()) } else { anyhow::bail!("gpu-check failed") }
}

// The command line's flags mapped one by one onto the bench's options.
#[allow(clippy::too_many_lines)]
async fn bench(args: BenchArgs) -> Result<()> {
    use bench::{BenchOptions, CapacitySearch, Frames, LoadSpec, Target};
    anyhow::ensure!(args.fps > 0.0 && args.fps.is_finite(), "--fps must be positive");
    anyhow::ensure!(args.duration_s > 0.0 && args.probe_s > 0.0, "--duration-s and --probe-s must be positive");
    anyhow::ensure!(args.count != Some(0), "--count must be positive");
    anyhow::ensure!(args.cameras > 0 || args.capacity, "--cameras must be positive");
    let frame_dirs = if args.frames.is_empty() {
        vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vtest-clip")]
    } else {
        args.frames.clone()
    };
    let frames = Arc::new(Frames::load(&frame_dirs)?);
    let target = match &args.server {
        Some(url) => Target::Remote(url.clone()),
        None => Target::OwnServer(Box::new(load_config(&args.common)?)),
    };
    let options = BenchOptions {
        target,
        frames,
        load: LoadSpec {
            pipeline: args.pipeline.clone(),
            cameras: args.cameras,
            fps: args.fps,
            duration: std::time::Duration::from_secs_f64(
                args.count.map_or(args.duration_s, |count| count as f64 / args.fps),
            ),
            warmup: std::time::Duration::from_secs_f64(args.warmup_s.max(0.0)),
            mode: args.mode,
            budget_ms: args.budget_ms,
        },
        capacity: args.capacity.then(|| CapacitySearch {
            max_cameras: args.max_cameras,
            probe: std::time::Duration::from_secs_f64(args.probe_s),
        }),
        compare_batching: args.compare_batching,
        bare_runs: args.bare_runs,
        progress: !args.quiet,
        access: args.remote.access()?,
        overload: args.overload,
    };
    if args.matrix {
        let spec = bench::matrix::MatrixSpec {
            pipelines: args.matrix_pipelines.clone(),
            backgrounds: args.matrix_background.clone(),
            duration: options.load.duration,
            warmup: options.load.warmup,
            trace_dir: args.trace_dir.clone(),
        };
        let report = bench::matrix::run(&options, &spec).await?;
        let machine = &report.machine;
        println!(
            "machine: {} CPUs ({}), {} {}, model on {}; budget {:.0} ms; {} s measured per run",
            machine.cpus,
            machine.cpu_model.as_deref().unwrap_or("unknown CPU"),
            machine.os,
            machine.arch,
            machine.execution_provider,
            report.budget_ms,
            spec.duration.as_secs_f64()
        );
        print!("{}", report.table());
        if let Some(path) = &args.out {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("report: {}", path.display());
        }
        return Ok(());
    }
    let background = bench::BackgroundLoad::start(args.background_load)?;
    let outcome = bench::run(options).await;
    drop(background);
    let outcome = outcome?;
    let report = &outcome.report;
    println!(
        "machine: {} CPUs ({}), {} {}, model on {}; target: {}",
        report.machine.cpus,
        report.machine.cpu_model.as_deref().unwrap_or("unknown CPU"),
        report.machine.os,
        report.machine.arch,
        report.machine.execution_provider,
        report.target
    );
    for run in &report.runs {
        print!("{}", run.summary());
    }
    if let Some(capacity) = &report.capacity {
        println!(
            "capacity: {}{} cameras at {} fps within {:.0} ms (99 % of frames), pipeline {}",
            capacity.cameras,
            if capacity.hit_ceiling { "+ (search ceiling)" } else { "" },
            capacity.fps,
            capacity.budget_ms,
            capacity.pipeline
        );
    }
    if let [on, off] = report.runs.as_slice()
        && args.compare_batching
    {
        println!(
            "batching on vs off: throughput {:.1} vs {:.1} fps, p50 {:.1} vs {:.1} ms, p99 {:.1} vs {:.1} ms, within budget {:.1} vs {:.1} %",
            on.throughput_fps,
            off.throughput_fps,
            on.latency_ms.p50,
            off.latency_ms.p50,
            on.latency_ms.p99,
            off.latency_ms.p99,
            on.within_budget_fraction * 100.0,
            off.within_budget_fraction * 100.0
        );
    }
    for bare in &report.bare {
        println!(
            "bare Session::run {} batch {}: median {:.2} ms ({} runs)",
            bare.model, bare.batch, bare.median_ms, bare.runs
        );
    }
    if let Some(capacity) = report.one_client_capacity_fps {
        println!("one-client capacity: {capacity:.1} frames/s within budget");
    }
    if let Some(ratio) = report.goodput_over_capacity {
        println!("goodput / one-client capacity: {ratio:.3}");
    }
    if args.background_load > 0 {
        println!("background load: {} busy threads in another process", args.background_load);
    }
    if let Some(ratio) = report.overhead_ratio {
        println!("overhead ratio (end-to-end p50 of the first run / bare batch 1, last line above): {ratio:.3}");
    }
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("report: {}", path.display());
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, outcome.svg()?).with_context(|| format!("cannot write {}", path.display()))?;
        println!("plot: {}", path.display());
    }
    Ok(())
}

fn mot(args: &MotArgs) -> Result<()> {
    let params = tracker_params(&args.tracker, args.deep_sort)?;
    let input =
        std::fs::File::open(&args.detections).with_context(|| format!("cannot open {}", args.detections.display()))?;
    let frames = motchallenge::read_detections(std::io::BufReader::new(input), args.min_confidence)
        .with_context(|| format!("{}", args.detections.display()))?;
    let out = std::fs::File::create(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let started = std::time::Instant::now();
    let summary = motchallenge::track_sequence(&mut Tracker::new(params), &frames, std::io::BufWriter::new(out))?;
    let elapsed = started.elapsed();
    eprintln!(
        "{} frames, {} track rows, {} track ids, {} of {} embeddings skipped, {:.3} ms per frame",
        summary.frames,
        summary.rows,
        summary.max_track_id,
        summary.embeddings_skipped,
        summary.observations,
        elapsed.as_secs_f64() * 1e3 / summary.frames.max(1) as f64
    );
    Ok(())
}

async fn serve(common: Common, listen: Option<SocketAddr>) -> Result<()> {
    let mut config = load_config(&common)?;
    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    // Listen first: health answers NOT_SERVING while the models load.
    let grpc = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let metrics = match &config.server.metrics {
        Some(metrics) => Some(
            tokio::net::TcpListener::bind(metrics.listen)
                .await
                .with_context(|| format!("cannot listen on {} (server.metrics.listen)", metrics.listen))?,
        ),
        None => None,
    };
    tracing::info!(
        message = "Serving.",
        address = %grpc.local_addr()?,
        metrics = ?metrics.as_ref().and_then(|m| m.local_addr().ok()),
        tls = config.server.tls.is_some(),
        mutual_tls = config.server.tls.as_ref().is_some_and(|t| t.client_ca_path.is_some()),
        auth = config.server.auth.is_some(),
        pipelines = ?config.pipelines.keys().collect::<Vec<_>>()
    );
    let server = config.server.clone();
    linesight::api::serve_with(
        linesight::api::Models::Load(Box::new(config)),
        &server,
        linesight::api::Listeners { grpc, metrics },
        shutdown_signal(),
    )
    .await?;
    tracing::info!(message = "Stopped.");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!(message = "Shutdown requested.");
}

/// One image's line of `linesight infer` output.
#[derive(serde::Serialize)]
struct InferReport {
    image: String,
    width: u32,
    height: u32,
    pipeline: String,
    model: String,
    annotated: Option<String>,
    /// Every stage the pipeline has, in microseconds.
    timings_us: std::collections::BTreeMap<&'static str, u64>,
    detections: Vec<InferDetection>,
    cell: Option<InferCell>,
}

#[derive(serde::Serialize)]
struct InferDetection {
    class_id: u32,
    class_name: String,
    score: f32,
    #[serde(rename = "box")]
    bbox: [f32; 4],
    track_id: u64,
    mask_pixels: Option<u32>,
    polygons: Option<Vec<Vec<[u32; 2]>>>,
}

#[derive(serde::Serialize)]
struct InferCell {
    defective: bool,
    defect_area_fraction: f32,
    defects_counted: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    defect_probability: Option<f32>,
}

impl InferReport {
    fn of(path: &Path, result: &linesight::pipeline::FrameResult, annotated: Option<String>) -> Self {
        Self {
            image: path.display().to_string(),
            width: result.image_width,
            height: result.image_height,
            pipeline: result.pipeline.clone(),
            model: result.model.clone(),
            annotated,
            timings_us: result
                .timings
                .iter()
                .filter(|(stage, took)| !(stage.is_optional() && took.is_zero()))
                .map(|(stage, took)| (stage.name(), took.as_micros().min(u128::from(u64::MAX)) as u64))
                .collect(),
            detections: result
                .detections
                .iter()
                .map(|d| InferDetection {
                    class_id: d.detection.class_id,
                    class_name: d.class_name.clone(),
                    score: d.detection.score,
                    bbox: [d.detection.bbox.x1, d.detection.bbox.y1, d.detection.bbox.x2, d.detection.bbox.y2],
                    track_id: d.track_id,
                    mask_pixels: d.shape.as_ref().map(|s| s.area),
                    polygons: d.shape.as_ref().map(|s| s.polygons.iter().map(|p| p.points.clone()).collect()),
                })
                .collect(),
            cell: result.cell.map(|c| InferCell {
                defective: c.defective,
                defect_area_fraction: c.defect_area_fraction,
                defects_counted: c.counted,
                defect_probability: c.defect_probability,
            }),
        }
    }
}

async fn infer(
    common: Common,
    pipeline: &str,
    out_dir: Option<&Path>,
    annotate: bool,
    images: &[PathBuf],
) -> Result<()> {
    let mut config = load_config(&common)?;
    // One file at a time: no budget pressure, no batching delay.
    config.server.default_budget = std::time::Duration::from_secs(60);
    for p in config.pipelines.values_mut() {
        p.batching_mut().max_queue_delay = std::time::Duration::ZERO;
        *p.budget_mut() = None;
    }
    let limits = DecodeLimits { max_pixels: config.server.max_decoded_pixels, max_side: config.server.max_image_side };
    let pipelines = Pipelines::start(&config.service_settings())?;
    let mut report = Vec::new();
    for path in images {
        let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let request = FrameRequest {
            camera_id: "cli".into(),
            sequence: report.len() as u64,
            pipeline: pipeline.to_owned(),
            image: Some(ImageInput { data: data.clone().into(), encoding: ImageEncoding::Sniff, width: 0, height: 0 }),
            budget: None,
            annotate: false,
            received: tokio::time::Instant::now(),
            client_deadline: None,
        };
        let result = pipelines.inspect(request).await.with_context(|| format!("{}", path.display()))?;
        let mut annotated_path = None;
        if annotate {
            let mut rgb = imaging::decode(&data, ImageEncoding::Sniff, 0, 0, limits)?;
            draw_detections(&mut rgb, &result.detections);
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
            let dir = out_dir.map_or_else(|| path.parent().unwrap_or(Path::new(".")).to_owned(), Path::to_owned);
            std::fs::create_dir_all(&dir)?;
            let out = dir.join(format!("{stem}.annotated.png"));
            std::fs::write(&out, imaging::encode_png(&rgb)?)?;
            annotated_path = Some(out.display().to_string());
        }
        report.push(InferReport::of(path, &result, annotated_path));
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    pipelines.shutdown().await;
    Ok(())
}
