//! The load harness behind `linesight bench`: simulated cameras streaming real frames at a frame rate
//! to a server (one it starts itself on 127.0.0.1, or a running one), the report of what they saw,
//! a capacity search, batching on against off, and the bare model's latency for the overhead ratio.

pub mod background;
pub mod bare;
pub mod capacity;
pub mod load;
pub mod matrix;
pub mod plot;
pub mod report;

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::remote::{self, Access};
pub use background::{BUSY_LIMIT, BackgroundLoad, busy};
pub use bare::BareTiming;
pub use capacity::{CapacityReport, Probe};
use linesight::api::proto::ListPipelinesRequest;
use linesight::config::Config;
use linesight::pipeline::PipelineSettings;
use linesight::pipeline::Pipelines;
pub use load::{Frames, LoadSpec, Mode, Sample};
pub use report::LoadReport;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("frames: {0}")]
    Frames(String),
    #[error(transparent)]
    Connect(#[from] remote::ConnectError),
    #[error("the server has no pipeline {pipeline:?} (it serves: {served})")]
    UnknownPipeline { pipeline: String, served: String },
    #[error("ListPipelines failed: {0}")]
    ListPipelines(String),
    #[error("cannot start the server: {0}")]
    Start(String),
    #[error("{0} needs a server the bench starts itself (leave out --server)")]
    NeedsOwnServer(&'static str),
    #[error("bare Session::run of {model}: {message}")]
    Bare { model: String, message: String },
    #[error("plot: {0}")]
    Plot(String),
    #[error("background load: {0}")]
    Background(String),
    #[error("service-time trace {path}: {message}")]
    Trace { path: String, message: String },
}

/// Where the frames go.
pub enum Target {
    /// A running server, e.g. `http://10.0.0.5:50051`.
    Remote(String),
    /// A server started by the bench, in this process, on 127.0.0.1, from this config.
    OwnServer(Box<Config>),
}

pub struct BenchOptions {
    pub target: Target,
    pub frames: Arc<Frames>,
    /// The load; with `capacity`, its camera count is ignored by the search.
    pub load: LoadSpec,
    pub capacity: Option<CapacitySearch>,
    /// Also run the load with batching off (`max_batch = 1` everywhere).
    pub compare_batching: bool,
    /// `Session::run` calls timed for the overhead ratio (own server only; 0 = none).
    pub bare_runs: usize,
    pub progress: bool,
    /// TLS and token for a remote server.
    pub access: Access,
    /// Open loop at this multiple of the one-client capacity: the camera count is chosen from a
    /// closed-loop run of one client made first.
    pub overload: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
pub struct CapacitySearch {
    pub max_cameras: usize,
    pub probe: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub os: &'static str,
    pub arch: &'static str,
    /// Where the pipeline's model runs, as the server reports it.
    pub execution_provider: String,
}

impl Machine {
    fn here(execution_provider: String) -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        });
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            execution_provider,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The client's machine; with the bench's own server, also the server's.
    pub machine: Machine,
    pub target: String,
    pub runs: Vec<LoadReport>,
    pub capacity: Option<CapacityReport>,
    pub bare: Vec<BareTiming>,
    /// End-to-end p50 of the first run over the bare model's median at batch 1, paced at the run's
    /// frame interval where it was (`detect` pipelines on the bench's own server).
    pub overhead_ratio: Option<f64>,
    /// Goodput of one client calling back to back, measured in the same bench (with `--overload`,
    /// or a closed loop of several clients): the run labelled "one client back to back".
    pub one_client_capacity_fps: Option<f64>,
    /// The first run's goodput over that capacity.
    pub goodput_over_capacity: Option<f64>,
}

/// A finished bench: the report and, per run, its frames (for the plot).
pub struct BenchOutcome {
    pub report: BenchReport,
    pub samples: Vec<Vec<Sample>>,
}

impl BenchOutcome {
    pub fn svg(&self) -> Result<String, BenchError> {
        let runs: Vec<plot::RunPlot<'_>> = self
            .report
            .runs
            .iter()
            .zip(&self.samples)
            .map(|(report, samples)| plot::RunPlot { report, samples })
            .collect();
        let capacity = self.report.capacity.as_ref().map(|c| (c.probes.as_slice(), c.budget_ms));
        plot::svg(&runs, capacity)
    }
}

/// A server the bench started: its address, and how to stop it.
struct OwnServer {
    endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl OwnServer {
    async fn start(config: &Config) -> Result<Self, BenchError> {
        let started = tokio::task::block_in_place(|| Pipelines::start(&config.service_settings()));
        let pipelines = Arc::new(started.map_err(|e| BenchError::Start(e.to_string()))?);
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| BenchError::Start(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| BenchError::Start(e.to_string()))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Loopback, and the bench's clients carry no token or certificate.
        let mut server_config = config.server.clone();
        (server_config.tls, server_config.auth) = (None, None);
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = linesight::api::serve(pipelines, &server_config, listener, shutdown).await {
                tracing::error!(message = "Bench server failed.", %error);
            }
        });
        Ok(Self { endpoint: format!("http://{addr}"), stop: Some(stop), task })
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

/// How long a server may take to load its models before the bench gives up on it.
const SERVING_TIMEOUT: Duration = Duration::from_secs(300);

/// Waits for the server's health to say SERVING (a server just started is still loading models).
async fn wait_until_serving(endpoint: &str, access: &Access) -> Result<(), BenchError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = remote::connect_channel(endpoint, access).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::with_interceptor(channel, access.token.clone());
    let started = std::time::Instant::now();
    let mut said_waiting = false;
    loop {
        let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
        let status = match health.check(request).await {
            Ok(response) => ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown),
            // A server that does not implement health is taken as serving.
            Err(status) if status.code() == tonic::Code::Unimplemented => ServingStatus::Serving,
            Err(status) => return Err(BenchError::Start(format!("health check: {}", status.message()))),
        };
        if status == ServingStatus::Serving {
            return Ok(());
        }
        if started.elapsed() > SERVING_TIMEOUT {
            return Err(BenchError::Start(format!("not serving after {} s", SERVING_TIMEOUT.as_secs())));
        }
        if !said_waiting {
            eprintln!("waiting for {endpoint} to serve (loading models)…");
            said_waiting = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the server says of the pipeline under test: its budget (ms) and where its model runs.
async fn pipeline_facts(endpoint: &str, access: &Access, pipeline: &str) -> Result<(f64, String, String), BenchError> {
    let mut client =
        load::connect(endpoint, 1, access).await?.pop().ok_or_else(|| BenchError::Start("no client".into()))?;
    let listed = client
        .list_pipelines(ListPipelinesRequest {})
        .await
        .map_err(|status| BenchError::ListPipelines(status.message().to_owned()))?
        .into_inner();
    let name = if pipeline.is_empty() { listed.default_pipeline.clone() } else { pipeline.to_owned() };
    let info = listed.pipelines.iter().find(|p| p.name == name).ok_or_else(|| BenchError::UnknownPipeline {
        pipeline: name.clone(),
        served: listed.pipelines.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
    })?;
    Ok((f64::from(info.budget_ms), info.execution_provider.clone(), name))
}

fn progress_bar(show: bool, label: &str, frames: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(frames),
        if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
    );
    if let Ok(style) = ProgressStyle::with_template("{prefix:>28} [{elapsed_precise}] {wide_bar} {pos}/{len} frames") {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_owned());
    bar
}

/// Runs one load against `endpoint` and reports it against `budget_ms` (the one its frames carry).
async fn load_run(
    endpoint: &str,
    access: &Access,
    options: &BenchOptions,
    spec: &LoadSpec,
    label: &str,
    budget_ms: f64,
) -> Result<(LoadReport, Vec<Sample>), BenchError> {
    let clients = load::connect(endpoint, spec.cameras, access).await?;
    let frames = match spec.mode {
        Mode::Closed => 0,
        Mode::Stream | Mode::Unary => spec.frames_per_camera() * spec.cameras as u64,
    };
    let bar = progress_bar(options.progress, label, frames);
    let tag = format!("{}-{}", std::process::id(), label.replace(' ', "_"));
    let samples = load::run(clients, &options.frames, spec, &tag, &bar).await;
    bar.finish_and_clear();
    let report = LoadReport::new(label, spec, budget_ms, &samples);
    Ok((report, samples))
}

/// The config with batching off: every batch holds one frame.
fn without_batching(config: &Config) -> Config {
    let mut config = config.clone();
    for pipeline in config.pipelines.values_mut() {
        pipeline.batching_mut().max_batch = 1;
    }
    config
}

/// Runs the bench described by `options`.
pub async fn run(options: BenchOptions) -> Result<BenchOutcome, BenchError> {
    let (own_config, own_server, endpoint) = match &options.target {
        Target::OwnServer(config) => {
            let server = OwnServer::start(config).await?;
            let endpoint = server.endpoint.clone();
            (Some(config.as_ref()), Some(server), endpoint)
        }
        Target::Remote(_) if options.compare_batching => {
            return Err(BenchError::NeedsOwnServer("--compare-batching"));
        }
        Target::Remote(url) => (None, None, url.clone()),
    };
    // The bench's own server runs without TLS or tokens; a remote one gets the caller's access.
    let access = if own_server.is_some() { Access::default() } else { options.access.clone() };
    let result = run_against(&endpoint, &access, &options, own_config).await;
    if let Some(server) = own_server {
        server.stop().await;
    }
    let (mut report, samples) = result?;

    if let Some(config) = own_config {
        report.bare = bare_timings(config, &options, &report)?;
        let first = report.runs.first();
        let detect = first
            .and_then(|r| config.pipelines.get(&r.spec.pipeline))
            .is_some_and(|p| matches!(p, PipelineSettings::Detect(_)));
        if detect && let (Some(first), Some(bare)) = (first, report.bare.iter().rev().find(|b| b.batch == 1)) {
            report.overhead_ratio = Some(first.latency_ms.p50 / bare.median_ms);
        }
    }
    Ok(BenchOutcome { report, samples })
}

// One run's phases in the order they happen (capacity search, load, comparison, summary); split,
// they would hand a dozen locals to each other.
#[allow(clippy::too_many_lines)]
async fn run_against(
    endpoint: &str,
    access: &Access,
    options: &BenchOptions,
    own_config: Option<&Config>,
) -> Result<(BenchReport, Vec<Vec<Sample>>), BenchError> {
    wait_until_serving(endpoint, access).await?;
    let (server_budget_ms, provider, pipeline) = pipeline_facts(endpoint, access, &options.load.pipeline).await?;
    let spec = LoadSpec { pipeline, ..options.load.clone() };
    let budget_ms = if spec.budget_ms > 0 { f64::from(spec.budget_ms) } else { server_budget_ms };
    let mut runs = Vec::new();
    let mut all_samples = Vec::new();
    let mut capacity = None;
    // One client back to back first, when the load is sized or judged against it.
    let wants_reference = options.overload.is_some() || (spec.mode == Mode::Closed && spec.cameras > 1);
    let mut reference = None;
    if wants_reference && options.capacity.is_none() {
        let reference_spec = LoadSpec { cameras: 1, mode: Mode::Closed, ..spec.clone() };
        let label = "one client back to back";
        let run = load_run(endpoint, access, options, &reference_spec, label, budget_ms).await?;
        if options.progress {
            eprint!("{}", run.0.summary());
        }
        reference = Some(run);
        // Let the server drain before the measured load.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let one_client_capacity_fps = reference.as_ref().map(|(r, _)| r.goodput_fps);
    let spec = match (options.overload, one_client_capacity_fps) {
        (Some(factor), Some(capacity)) => {
            LoadSpec { cameras: ((factor * capacity / spec.fps).ceil() as usize).max(1), ..spec }
        }
        _ => spec,
    };
    if let Some(search) = options.capacity {
        let probe_spec = LoadSpec { duration: search.probe, ..spec.clone() };
        let found = capacity::search(search.max_cameras, async |cameras| {
            let spec = LoadSpec { cameras, ..probe_spec.clone() };
            let label = format!("probe {cameras} cameras");
            let (report, samples) = load_run(endpoint, access, options, &spec, &label, budget_ms).await?;
            if options.progress {
                eprint!("{}", report.summary());
            }
            // Let the server drain before the next probe.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, BenchError>((report.fits_budget(), (report, samples)))
        })
        .await?;
        let (cameras, hit_ceiling, probes) = found;
        let mut probe_reports = Vec::new();
        for (n, fits, (report, samples)) in probes {
            probe_reports.push(Probe { cameras: n, fits, report: report.clone() });
            runs.push(report);
            all_samples.push(samples);
        }
        capacity = Some(CapacityReport {
            pipeline: spec.pipeline.clone(),
            fps: spec.fps,
            budget_ms,
            cameras,
            hit_ceiling,
            probes: probe_reports,
        });
    } else {
        let label = if options.compare_batching { "batching on" } else { "load" };
        let (report, samples) = load_run(endpoint, access, options, &spec, label, budget_ms).await?;
        runs.push(report);
        all_samples.push(samples);
    }
    if options.compare_batching
        && let Some(config) = own_config
    {
        let server = OwnServer::start(&without_batching(config)).await?;
        let result = load_run(&server.endpoint, &Access::default(), options, &spec, "batching off", budget_ms).await;
        server.stop().await;
        let (report, samples) = result?;
        runs.push(report);
        all_samples.push(samples);
    }
    let goodput_over_capacity = match (runs.first(), one_client_capacity_fps) {
        (Some(run), Some(capacity)) if capacity > 0.0 => Some(run.goodput_fps / capacity),
        _ => None,
    };
    if let Some((report, samples)) = reference {
        runs.push(report);
        all_samples.push(samples);
    }
    let report = BenchReport {
        machine: Machine::here(provider),
        target: if own_config.is_some() {
            "own server on 127.0.0.1 (same process)".into()
        } else {
            endpoint.to_owned()
        },
        runs,
        capacity,
        bare: Vec::new(),
        overhead_ratio: None,
        one_client_capacity_fps,
        goodput_over_capacity,
    };
    Ok((report, all_samples))
}

/// The pipeline's models, bare, at batch 1 and at the first run's mean batch (rounded).
fn bare_timings(config: &Config, options: &BenchOptions, report: &BenchReport) -> Result<Vec<BareTiming>, BenchError> {
    if options.bare_runs == 0 {
        return Ok(Vec::new());
    }
    let Some(first) = report.runs.first() else { return Ok(Vec::new()) };
    let Some(pipeline) = config.pipelines.get(&first.spec.pipeline) else { return Ok(Vec::new()) };
    let detector = match pipeline {
        PipelineSettings::Track(track) => {
            config.pipelines.get(&track.detector).map_or_else(|| pipeline.model(), |d| d.model()).to_owned()
        }
        PipelineSettings::Detect(_) | PipelineSettings::Segment(_) => pipeline.model().to_owned(),
    };
    let jpeg = options.frames.jpegs.first().cloned().unwrap_or_default();
    let mut batches = vec![1usize];
    let typical = first.mean_batch.round() as usize;
    if typical > 1 {
        batches.push(typical);
    }
    let mut timings = Vec::new();
    for batch in batches {
        timings.push(tokio::task::block_in_place(|| {
            bare::time_model(config, &detector, &jpeg, batch, options.bare_runs, None)
        })?);
    }
    // Batch 1 again at the first run's frame interval, when that leaves the model idle in between.
    let interval = Duration::from_secs_f64(1.0 / first.offered_fps.max(1e-3));
    let back_to_back = timings.first().map_or(0.0, |t| t.median_ms);
    if interval.as_secs_f64() * 1e3 > back_to_back * 1.2 && interval < Duration::from_secs(1) {
        timings.push(tokio::task::block_in_place(|| {
            bare::time_model(config, &detector, &jpeg, 1, options.bare_runs, Some(interval))
        })?);
    }
    Ok(timings)
}
