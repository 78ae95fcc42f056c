//! `linesight camera`: the camera bridge. Captures RTSP/HTTP streams, video files, V4L2 devices and
//! GStreamer pipelines with OpenCV, one process per source, and streams each camera's newest frame
//! to a server over `InspectStream`; answers go out as JSON lines, stats to the log and `/metrics`.

mod capture;
mod config;
mod frame_age;
mod latest;
mod output;
mod pipe;
mod sender;
mod stats;
mod supervisor;

pub use capture::{CaptureArgs, run_process as run_capture_process};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::remote::RemoteArgs;
use capture::CaptureSettings;
use config::{BridgeFile, CameraSettings, FrameEncoding, Source};
use latest::LatestFrame;
use output::AnswerLog;
use sender::{CameraSender, Link};
use stats::{BridgeMetrics, CameraSnapshot};

#[derive(clap::Args)]
pub struct CameraArgs {
    /// Cameras file: a [bridge] table and one [[cameras]] entry per source (see docs/camera.md).
    #[arg(long, short, env = "LINESIGHT_CAMERAS", conflicts_with = "source")]
    config: Option<PathBuf>,
    /// One camera without a file: rtsp://…, http://…, a video file, /dev/videoN, or a GStreamer
    /// pipeline ending in appsink.
    #[arg(long, required_unless_present = "config")]
    source: Option<String>,
    /// --source: the camera_id its frames carry.
    #[arg(long, default_value = "camera-1")]
    camera_id: String,
    /// --source: pipeline the frames ask for (empty: the server's default).
    #[arg(long, default_value = "")]
    pipeline: String,
    /// --source: at most this many frames per second are sent.
    #[arg(long)]
    fps: Option<f64>,
    /// --source: budget per frame; 0 = the server's default.
    #[arg(long, default_value_t = 0)]
    budget_ms: u32,
    /// --source: a video file starts again when it ends.
    #[arg(long = "loop")]
    looped: bool,
    /// The server (overrides bridge.server), e.g. http://127.0.0.1:50051.
    #[arg(long)]
    server: Option<String>,
    /// Frames of one camera in flight at once (overrides bridge.window).
    #[arg(long)]
    window: Option<usize>,
    /// How frames are sent (overrides bridge.encoding).
    #[arg(long, value_enum)]
    encoding: Option<FrameEncoding>,
    /// Answers as JSON lines: a file, or - for standard output (overrides bridge.output).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Ask for an annotated JPEG every N-th frame, written under --annotate-dir.
    #[arg(long, requires = "annotate_dir")]
    annotate_every: Option<u64>,
    #[arg(long)]
    annotate_dir: Option<PathBuf>,
    /// Serve the bridge's Prometheus metrics at GET /metrics on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Stop after this many seconds (default: run until the sources end or Ctrl-C / SIGTERM).
    #[arg(long)]
    duration_s: Option<f64>,
    /// At the end, write each camera's totals here as JSON.
    #[arg(long)]
    summary: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
}

impl CameraArgs {
    /// The cameras file, or the one camera of the command line, with the flags' overrides applied.
    fn bridge_file(&self) -> anyhow::Result<BridgeFile> {
        let mut file = match (&self.config, &self.source) {
            (Some(path), _) => BridgeFile::from_file(path)?,
            (None, Some(source)) => BridgeFile {
                bridge: config::BridgeSettings::default(),
                cameras: vec![CameraSettings {
                    id: self.camera_id.clone(),
                    source: source.clone(),
                    pipeline: self.pipeline.clone(),
                    fps: self.fps,
                    budget_ms: self.budget_ms,
                    looped: self.looped,
                }],
            },
            (None, None) => anyhow::bail!("give --config FILE or --source URL"),
        };
        let bridge = &mut file.bridge;
        if let Some(server) = &self.server {
            bridge.server.clone_from(server);
        }
        if let Some(window) = self.window {
            bridge.window = window;
        }
        if let Some(encoding) = self.encoding {
            bridge.encoding = encoding;
        }
        if let Some(output) = &self.output {
            bridge.output = Some(output.clone());
        }
        if let Some(every) = self.annotate_every {
            bridge.annotate_every = every;
        }
        if let Some(dir) = &self.annotate_dir {
            bridge.annotate_dir = Some(dir.clone());
        }
        if let Some(listen) = self.metrics_listen {
            bridge.metrics_listen = Some(listen);
        }
        file.validate()?;
        Ok(file)
    }
}

/// A camera while the bridge runs: its frame slot, its counts and its capture process.
struct Running {
    latest: Arc<LatestFrame>,
    stats: Arc<stats::CameraStats>,
    capture: supervisor::CaptureHandle,
}

/// Runs the bridge until every source has ended, the duration is up, or a signal asks it to stop.
pub async fn run(args: CameraArgs) -> anyhow::Result<()> {
    let file = args.bridge_file()?;
    let duration = args
        .duration_s
        .map(Duration::try_from_secs_f64)
        .transpose()
        .context("--duration-s must be a number of seconds, 0 or more")?;
    let bridge = &file.bridge;
    let answers = bridge.output.as_deref().map(AnswerLog::open).transpose()?.map(Arc::new);
    let link = Arc::new(Link {
        endpoint: bridge.server.clone(),
        access: args.remote.access()?,
        window: bridge.window,
        encoding: bridge.encoding,
        jpeg_quality: bridge.jpeg_quality,
        annotate_every: bridge.annotate_every,
        annotate_dir: bridge.annotate_dir.clone(),
        answers,
        reconnect_min: bridge.reconnect_min,
        reconnect_max: bridge.reconnect_max,
        max_frame_age: bridge.max_frame_age,
        answer_timeout: bridge.answer_timeout,
    });
    let metrics = Arc::new(BridgeMetrics::new());
    let metrics_server = match bridge.metrics_listen {
        Some(listen) => Some(serve_metrics(listen, metrics.clone()).await?),
        None => None,
    };
    let (stop, stopped) = watch::channel(false);
    let mut senders = tokio::task::JoinSet::new();
    let mut cameras = Vec::with_capacity(file.cameras.len());
    for camera in &file.cameras {
        let running = start_camera(camera, bridge, &metrics)?;
        let sender = CameraSender {
            camera_id: camera.id.clone(),
            pipeline: camera.pipeline.clone(),
            budget_ms: camera.budget_ms,
            latest: running.latest.clone(),
            stats: running.stats.clone(),
            link: link.clone(),
        };
        senders.spawn(sender.run(stopped.clone()));
        cameras.push(running);
    }
    let reporter = tokio::spawn(report_stats(cameras.iter().map(|c| c.stats.clone()).collect(), bridge.stats_interval));

    tokio::select! {
        () = async { while senders.join_next().await.is_some() {} } => tracing::info!(message = "Every source ended."),
        () = crate::shutdown_signal() => {}
        () = async { match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        } } => tracing::info!(message = "Duration reached."),
    }
    // Capture stops first, so that the counts are final; the senders then finish what is in flight.
    for camera in &cameras {
        camera.capture.stop();
        camera.latest.close(true);
    }
    let _ = stop.send(true);
    while senders.join_next().await.is_some() {}
    reporter.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    write_totals(&cameras, args.summary.as_deref())
}

/// A camera's slot and counters, and its capture process started.
fn start_camera(
    camera: &CameraSettings,
    bridge: &config::BridgeSettings,
    metrics: &BridgeMetrics,
) -> anyhow::Result<Running> {
    let stats = metrics.camera(&camera.id);
    let latest = Arc::new(LatestFrame::new(stats.clone()));
    let settings = CaptureSettings {
        camera_id: camera.id.clone(),
        source: camera.source.clone(),
        looped: camera.looped,
        fps_cap: camera.fps,
        reconnect_min: bridge.reconnect_min,
        reconnect_max: bridge.reconnect_max,
        open_timeout: bridge.open_timeout,
        read_timeout: bridge.read_timeout,
        max_frame_age: bridge.max_frame_age,
    };
    let shown = Source::parse(&camera.source).display();
    tracing::info!(message = "Camera starting.", camera_id = %camera.id, source = %shown, pipeline = %camera.pipeline, server = %bridge.server);
    let capture = supervisor::spawn(settings, latest.clone(), stats.clone())
        .with_context(|| format!("cannot start the capture of {}", camera.id))?;
    Ok(Running { latest, stats, capture })
}

/// Logs every camera's counts, and the latency since the last report, every `every`.
async fn report_stats(cameras: Vec<Arc<stats::CameraStats>>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        for camera in &cameras {
            camera.interval_snapshot().log("Camera stats.");
        }
    }
}

/// The run's totals, in the log and (with `--summary`) as JSON.
fn write_totals(cameras: &[Running], summary: Option<&std::path::Path>) -> anyhow::Result<()> {
    let totals: Vec<CameraSnapshot> = cameras.iter().map(|camera| camera.stats.snapshot()).collect();
    for camera in &totals {
        camera.log("Camera totals.");
    }
    if let Some(path) = summary {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "cameras": totals }))?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `GET /metrics` with the bridge's counters, until the task is aborted.
async fn serve_metrics(listen: SocketAddr, metrics: Arc<BridgeMetrics>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen} (metrics)"))?;
    tracing::info!(message = "Metrics.", address = %listener.local_addr()?);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { ([(http::header::CONTENT_TYPE, linesight::telemetry::CONTENT_TYPE)], metrics.render()) }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(message = "Metrics endpoint stopped.", %error);
        }
    }))
}
