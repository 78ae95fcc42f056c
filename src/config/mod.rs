//! Service configuration: a TOML file (see `linesight.example.toml`) layered over defaults that are
//! good enough for `linesight serve` to need no file at all.

mod manifest;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use manifest::{
    ChannelOrder, DecoderSpec, InputSpec, ManifestError, ModelManifest, PostprocessSpec, ResizeMode, YoloVersion,
};

/// The pipeline served when a request leaves `pipeline` empty and the config names none.
pub const DEFAULT_PIPELINE: &str = "detect";
/// The detector bundled in `models/` and served by default.
pub const DEFAULT_DETECT_MODEL: &str = "nanodet-g";
/// The appearance embedder bundled in `models/`, used by the default `track` pipeline.
pub const DEFAULT_EMBED_MODEL: &str = "mobilenetv2-reid";
/// The EL-cell defect segmenter of the default `el-defect` pipeline.
pub const DEFAULT_SEGMENT_MODEL: &str = "el-maskrcnn";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub engine: EngineConfig,
    /// Directory holding one folder per model (`model.onnx` + `model.toml`).
    pub model_dir: Option<PathBuf>,
    /// Pipeline used when a request's `pipeline` is empty.
    pub default_pipeline: String,
    pub pipelines: BTreeMap<String, PipelineConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest accepted gRPC message. The 4 MiB gRPC default is too small for raw frames
    /// (one 1920x1080 RGB8 frame is 6.2 MB).
    pub max_message_bytes: usize,
    /// Largest decoded image, in pixels (width x height): stops decompression bombs.
    pub max_decoded_pixels: u64,
    /// Largest accepted width or height, in pixels.
    pub max_image_side: u32,
    /// Budget for a frame whose request says `budget_ms = 0`.
    pub default_budget_ms: u32,
    /// Frames decoded / pre- / post-processed at once (bounded blocking pool).
    pub cpu_workers: usize,
    /// Frames of one `InspectStream` in flight at once; responses still leave in request order.
    pub stream_window: usize,
    /// Frames of one camera in flight at once, over all its streams and calls; more are refused
    /// with RESOURCE_EXHAUSTED.
    pub max_in_flight_per_camera: usize,
    /// Frames in flight in the whole server; more are refused with RESOURCE_EXHAUSTED. Bounds the
    /// memory held by decoded frames whatever the number of clients.
    pub max_frames_in_flight: usize,
    /// Connections in use (their HTTP/2 preface, or under TLS their first byte, has arrived). Up
    /// to as many again may be waiting for their first bytes; past that the oldest waiting one is
    /// closed.
    pub max_connections: usize,
    /// A new connection must send the HTTP/2 client preface (under TLS: start its handshake)
    /// within this, or it is closed.
    pub preface_timeout_ms: u64,
    /// How long an established connection may stay silent before the server sends an HTTP/2 PING.
    pub keepalive_interval_ms: u64,
    /// A PING not acknowledged within this closes the connection.
    pub keepalive_timeout_ms: u64,
    /// Concurrent gRPC calls (HTTP/2 streams) per connection.
    pub max_concurrent_streams: u32,
    /// On SIGTERM/SIGINT: how long in-flight frames may take to finish before connections are cut.
    pub shutdown_grace_ms: u64,
    pub tls: Option<TlsConfig>,
    pub auth: Option<AuthConfig>,
    pub metrics: Option<MetricsConfig>,
}

/// TLS for the gRPC port. With `client_ca_path`, mutual TLS: every client
/// must present a certificate signed by that CA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_path: PathBuf,
    /// PEM private key of the server (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
    /// PEM CA certificate(s) that client certificates must chain to; set = mutual TLS.
    #[serde(default)]
    pub client_ca_path: Option<PathBuf>,
    /// A TLS handshake must finish within this.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

fn default_handshake_timeout_ms() -> u64 {
    5_000
}

/// Bearer-token authentication on every gRPC service and on the metrics endpoint. Tokens come from
/// a file (one per line; blank lines and `#` comments skipped), from an environment variable
/// (comma-separated), or both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    #[serde(default)]
    pub tokens_env: Option<String>,
}

/// Prometheus exposition over HTTP (`GET /metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Full path of the ONNX Runtime shared library. Overrides `ORT_DYLIB_PATH` and the default location.
    pub ort_dylib_path: Option<PathBuf>,
    /// Threads ONNX Runtime uses inside one inference call (per model instance).
    pub intra_threads: usize,
    /// `cpu`, `cuda` or `tensorrt`. The GPU providers need ONNX Runtime's GPU build (PyPI
    /// `onnxruntime-gpu`, or JetPack's); one that cannot load stops start-up unless `allow_fallback`.
    pub provider: crate::engine::Provider,
    /// When the chosen provider cannot load, run on the next one (tensorrt → cuda → cpu) with a
    /// warning instead of refusing to start.
    pub allow_fallback: bool,
    /// The GPU to run on (CUDA device ordinal).
    pub device_id: u32,
    /// CUDA provider: how cuDNN picks convolution algorithms: `exhaustive` (default; benchmarks
    /// once per session shape), `heuristic` (no benchmarking; for dynamic batch shapes) or
    /// `default`.
    pub cuda_conv_search: crate::engine::ConvSearch,
    /// Refuse to start when the models' device memory, measured as each loads, exceeds this many MiB.
    pub gpu_memory_budget_mb: Option<u64>,
    /// On a GPU provider: `fixed` (default) keeps one session per batch size bucket (a detector:
    /// 1 and `max_batch` frames; an embedder: 16 and 16 × `max_batch` crops), each always run at
    /// its size, padding a batch up to the smallest bucket that holds it; `dynamic` runs one
    /// session at whatever size each batch has. ONNX Runtime's CUDA provider re-plans every
    /// convolution when the input shape changes, which costs more than the padding.
    pub gpu_batch_shapes: BatchShapes,
    /// On a GPU provider in a `cuda` build: letterbox and crop on the GPU, straight into the
    /// model's input buffer. Off: preprocess on the CPU and let ONNX Runtime upload.
    pub gpu_preprocess: bool,
    pub tensorrt: TensorRtConfig,
    /// Let ONNX Runtime's idle intra-op threads spin before sleeping. Off by default: with more than
    /// one model instance on a few cores, spinning pools steal each other's CPU.
    pub intra_op_spinning: bool,
}

/// How GPU sessions meet batches of varying size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchShapes {
    Fixed,
    Dynamic,
}

/// TensorRT provider settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TensorRtConfig {
    /// Let TensorRT pick FP16 kernels where they are faster.
    pub fp16: bool,
    /// Where built engines are cached (default `$LINESIGHT_HOME/tensorrt-cache`); the first start
    /// on a GPU builds them, which takes minutes.
    pub engine_cache_dir: Option<PathBuf>,
    /// Scratch memory TensorRT may use while building and running, in MiB.
    pub workspace_mb: u64,
}

impl Default for TensorRtConfig {
    fn default() -> Self {
        Self { fp16: true, engine_cache_dir: None, workspace_mb: 2048 }
    }
}

impl EngineConfig {
    /// The provider settings the engine applies to every session.
    pub fn provider_choice(&self) -> crate::engine::ProviderChoice {
        let engine_cache_dir = self.tensorrt.engine_cache_dir.clone().unwrap_or_else(|| {
            crate::engine::default_library_dir()
                .and_then(|d| d.parent().map(|p| p.join("tensorrt-cache")))
                .unwrap_or_else(|| PathBuf::from("tensorrt-cache"))
        });
        crate::engine::ProviderChoice {
            provider: self.provider,
            allow_fallback: self.allow_fallback,
            device_id: self.device_id,
            conv_search: self.cuda_conv_search,
            tensorrt: crate::engine::TensorRtOptions {
                fp16: self.tensorrt.fp16,
                engine_cache_dir,
                workspace_bytes: usize::try_from(self.tensorrt.workspace_mb.saturating_mul(1 << 20))
                    .unwrap_or(usize::MAX),
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// `detect`, `track` or `segment`.
    pub kind: PipelineKind,
    /// Folder name under `model_dir`: the detector of a `detect` pipeline, the appearance embedder
    /// of a `track` pipeline, the instance segmenter of a `segment` pipeline.
    pub model: String,
    /// `track` only: the `detect` pipeline whose detections are tracked. Its queue and model
    /// instances are shared, so detect and track frames batch together.
    #[serde(default)]
    pub detector: Option<String>,
    /// `track` only.
    #[serde(default)]
    pub tracker: TrackerConfig,
    #[serde(default)]
    pub batching: BatchingConfig,
    /// Default budget for this pipeline's frames; falls back to `server.default_budget_ms`.
    #[serde(default)]
    pub budget_ms: Option<u32>,
    /// Overrides of the model's own thresholds.
    #[serde(default)]
    pub score_threshold: Option<f32>,
    #[serde(default)]
    pub iou_threshold: Option<f32>,
    #[serde(default)]
    pub max_detections: Option<usize>,
    /// `segment` only: overrides the model's mask threshold.
    #[serde(default)]
    pub mask_threshold: Option<f32>,
    /// `segment` only: when an image (a cell) is judged defective.
    #[serde(default)]
    pub verdict: VerdictConfig,
    /// Model instances, each a worker thread owning its own ONNX Runtime session.
    #[serde(default = "one")]
    pub instances: usize,
}

fn one() -> usize {
    1
}

impl PipelineConfig {
    /// A pipeline of `kind` on `model` with every other setting at its default.
    pub fn new(kind: PipelineKind, model: &str) -> Self {
        Self {
            kind,
            model: model.to_owned(),
            detector: None,
            tracker: TrackerConfig::default(),
            batching: BatchingConfig::default(),
            budget_ms: None,
            score_threshold: None,
            iou_threshold: None,
            max_detections: None,
            mask_threshold: None,
            verdict: VerdictConfig::default(),
            instances: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PipelineKind {
    Detect,
    Track,
    Segment,
}

/// A `segment` pipeline's image verdict: defective when at least one instance of a counted class
/// scores at least `min_score` and the counted instances cover at least `min_area_fraction` of the
/// image.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerdictConfig {
    /// Default: the pipeline's score threshold.
    pub min_score: Option<f32>,
    pub min_area_fraction: f32,
    /// Class names counted; empty = every class.
    pub classes: Vec<String>,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        Self { min_score: None, min_area_fraction: 0.0, classes: Vec::new() }
    }
}

impl VerdictConfig {
    /// The default `el-defect` rule: a crack or an inactive area scoring at least 0.2. Chosen on
    /// the odd rows of ELPV (`eval/elpv_eval.py`, best F1 of the rules swept); finger interruptions
    /// are found and returned but not counted, as on real cells they rarely made a cell defective
    /// and the model confuses them with texture.
    pub fn el_defect() -> Self {
        Self { min_score: Some(0.2), min_area_fraction: 0.0, classes: vec!["crack".into(), "inactive".into()] }
    }
}

/// DeepSORT parameters (defaults are the paper's), which detections to track, and the embedder's
/// crop size.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    pub max_age: u32,
    pub n_init: u32,
    pub max_iou_distance: f64,
    pub max_cosine_distance: f64,
    pub nn_budget: usize,
    /// `consistent` (default): a confirmed track's gallery takes only embeddings that agree with
    /// it; `every`: every matched embedding, as the paper's reference code.
    pub gallery_update: crate::track::GalleryUpdate,
    /// Detector classes to track, by name; empty = all.
    pub classes: Vec<String>,
    /// Embedder input size for each crop; default: the embedder manifest's input size.
    pub crop_width: Option<u32>,
    pub crop_height: Option<u32>,
    /// A camera with no frame for this long loses its tracks (memory stays bounded).
    pub camera_idle_s: u64,
    /// Embedder batching: a batch holds the crops of up to `max_batch` frames.
    pub embedder_batching: BatchingConfig,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        let p = crate::track::TrackerParams::default();
        Self {
            max_age: p.max_age,
            n_init: p.n_init,
            max_iou_distance: p.max_iou_distance,
            max_cosine_distance: p.max_cosine_distance,
            nn_budget: p.nn_budget,
            gallery_update: p.gallery_update,
            classes: Vec::new(),
            crop_width: None,
            crop_height: None,
            camera_idle_s: 60,
            embedder_batching: BatchingConfig::default(),
        }
    }
}

impl TrackerConfig {
    pub fn params(&self) -> crate::track::TrackerParams {
        crate::track::TrackerParams {
            max_age: self.max_age,
            n_init: self.n_init,
            max_iou_distance: self.max_iou_distance,
            max_cosine_distance: self.max_cosine_distance,
            nn_budget: self.nn_budget,
            gallery_update: self.gallery_update,
        }
    }

    pub fn camera_idle(&self) -> Duration {
        Duration::from_secs(self.camera_idle_s)
    }
}

/// Dynamic batching, as Triton's dynamic batcher: a batch ships when it holds `max_batch` frames or
/// when its oldest frame has waited `max_queue_delay_us`; at most `max_queue_size` frames wait.
/// The default delay is 0, as Triton's: a lone frame costs no wait, and under load batches still
/// form from the frames that queue while the model is busy.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    pub max_batch: usize,
    pub max_queue_delay_us: u64,
    pub max_queue_size: usize,
}

impl BatchingConfig {
    pub fn max_queue_delay(&self) -> Duration {
        Duration::from_micros(self.max_queue_delay_us)
    }

    /// The batcher's policy these settings describe.
    pub fn policy(&self) -> crate::batching::BatchPolicy {
        crate::batching::BatchPolicy {
            max_batch: self.max_batch,
            max_queue_delay: self.max_queue_delay(),
            max_queue_size: self.max_queue_size,
        }
    }
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self { max_batch: 8, max_queue_delay_us: 0, max_queue_size: 64 }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_message_bytes: 32 * 1024 * 1024,
            max_decoded_pixels: 40_000_000,
            max_image_side: 16_384,
            default_budget_ms: 83,
            cpu_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            stream_window: 4,
            max_in_flight_per_camera: 16,
            max_frames_in_flight: 256,
            max_connections: 512,
            preface_timeout_ms: 5_000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            max_concurrent_streams: 128,
            shutdown_grace_ms: 10_000,
            tls: None,
            auth: None,
            metrics: None,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            ort_dylib_path: None,
            intra_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            provider: crate::engine::Provider::Cpu,
            allow_fallback: false,
            device_id: 0,
            cuda_conv_search: crate::engine::ConvSearch::default(),
            gpu_memory_budget_mb: None,
            gpu_preprocess: true,
            gpu_batch_shapes: BatchShapes::Fixed,
            tensorrt: TensorRtConfig::default(),
            intra_op_spinning: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut pipelines = BTreeMap::new();
        pipelines.insert(DEFAULT_PIPELINE.to_owned(), PipelineConfig::new(PipelineKind::Detect, DEFAULT_DETECT_MODEL));
        pipelines.insert(
            "track".to_owned(),
            PipelineConfig {
                detector: Some(DEFAULT_PIPELINE.to_owned()),
                ..PipelineConfig::new(PipelineKind::Track, DEFAULT_EMBED_MODEL)
            },
        );
        pipelines.insert(
            "el-defect".to_owned(),
            PipelineConfig {
                verdict: VerdictConfig::el_defect(),
                ..PipelineConfig::new(PipelineKind::Segment, DEFAULT_SEGMENT_MODEL)
            },
        );
        Self {
            server: ServerConfig::default(),
            engine: EngineConfig::default(),
            model_dir: None,
            default_pipeline: DEFAULT_PIPELINE.to_owned(),
            pipelines,
        }
    }
}

/// One problem found in a configuration, with its TOML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid configuration:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<ConfigProblem>),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse { path: path.to_owned(), source },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|source| ConfigError::Parse { path: PathBuf::from("<string>"), source })?;
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// Every problem in the configuration, each with its TOML path.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem =
            |path: String, message: &str| problems.push(ConfigProblem { path, message: message.to_owned() });
        let s = &self.server;
        if s.max_message_bytes < 1024 {
            problem("server.max_message_bytes".into(), "must be at least 1024");
        }
        if s.max_decoded_pixels == 0 {
            problem("server.max_decoded_pixels".into(), "must be positive");
        }
        if s.max_image_side == 0 {
            problem("server.max_image_side".into(), "must be positive");
        }
        if s.default_budget_ms == 0 {
            problem("server.default_budget_ms".into(), "must be positive");
        }
        if s.cpu_workers == 0 {
            problem("server.cpu_workers".into(), "must be positive");
        }
        if s.stream_window == 0 {
            problem("server.stream_window".into(), "must be positive");
        }
        if s.max_in_flight_per_camera == 0 {
            problem("server.max_in_flight_per_camera".into(), "must be positive");
        }
        if s.max_frames_in_flight == 0 {
            problem("server.max_frames_in_flight".into(), "must be positive");
        }
        if s.max_connections == 0 {
            problem("server.max_connections".into(), "must be positive");
        }
        for (key, value) in [
            ("server.preface_timeout_ms", s.preface_timeout_ms),
            ("server.keepalive_interval_ms", s.keepalive_interval_ms),
            ("server.keepalive_timeout_ms", s.keepalive_timeout_ms),
        ] {
            if value == 0 {
                problem(key.into(), "must be positive");
            }
        }
        if s.max_concurrent_streams == 0 {
            problem("server.max_concurrent_streams".into(), "must be positive");
        }
        if let Some(tls) = &s.tls
            && tls.handshake_timeout_ms == 0
        {
            problem("server.tls.handshake_timeout_ms".into(), "must be positive");
        }
        if let Some(auth) = &s.auth
            && auth.tokens_file.is_none()
            && auth.tokens_env.is_none()
        {
            problem("server.auth".into(), "needs tokens_file, tokens_env or both");
        }
        if let Some(metrics) = &s.metrics
            && metrics.listen == s.listen
        {
            problem("server.metrics.listen".into(), "must differ from server.listen");
        }
        if self.engine.intra_threads == 0 {
            problem("engine.intra_threads".into(), "must be positive");
        }
        if self.engine.tensorrt.workspace_mb == 0 {
            problem("engine.tensorrt.workspace_mb".into(), "must be positive");
        }
        if self.engine.gpu_memory_budget_mb == Some(0) {
            problem("engine.gpu_memory_budget_mb".into(), "must be positive (leave it out for no budget)");
        }
        if self.pipelines.is_empty() {
            problem("pipelines".into(), "at least one pipeline is required");
        }
        if !self.pipelines.contains_key(&self.default_pipeline) {
            problem("default_pipeline".into(), "names no configured pipeline");
        }
        for (name, p) in &self.pipelines {
            let at = |field: &str| format!("pipelines.{name}.{field}");
            if name.is_empty() {
                problem("pipelines".into(), "pipeline names must not be empty");
            }
            if p.model.is_empty() {
                problem(at("model"), "must name a model folder");
            }
            if p.batching.max_batch == 0 {
                problem(at("batching.max_batch"), "must be positive");
            }
            if p.batching.max_queue_size < p.batching.max_batch {
                problem(at("batching.max_queue_size"), "must be at least max_batch");
            }
            if p.instances == 0 {
                problem(at("instances"), "must be positive");
            }
            if p.budget_ms == Some(0) {
                problem(at("budget_ms"), "must be positive");
            }
            if let Some(t) = p.score_threshold
                && !(0.0..=1.0).contains(&t)
            {
                problem(at("score_threshold"), "must be within 0..=1");
            }
            if let Some(t) = p.iou_threshold
                && !(0.0..=1.0).contains(&t)
            {
                problem(at("iou_threshold"), "must be within 0..=1");
            }
            if p.max_detections == Some(0) {
                problem(at("max_detections"), "must be positive");
            }
            match (p.kind, &p.detector) {
                (PipelineKind::Detect, Some(_)) => problem(at("detector"), "only `track` pipelines take a detector"),
                (PipelineKind::Track, None) => {
                    problem(at("detector"), "a `track` pipeline must name a `detect` pipeline")
                }
                (PipelineKind::Track, Some(d)) => match self.pipelines.get(d) {
                    Some(target) if target.kind == PipelineKind::Detect => {}
                    Some(_) => problem(at("detector"), "must name a pipeline of kind `detect`"),
                    None => problem(at("detector"), "names no configured pipeline"),
                },
                (PipelineKind::Segment, Some(_)) => problem(at("detector"), "only `track` pipelines take a detector"),
                (PipelineKind::Detect | PipelineKind::Segment, None) => {}
            }
            if let Some(t) = p.mask_threshold
                && !(0.0..=1.0).contains(&t)
            {
                problem(at("mask_threshold"), "must be within 0..=1");
            }
            if p.kind != PipelineKind::Segment && (p.mask_threshold.is_some() || p.verdict != VerdictConfig::default())
            {
                problem(at("verdict"), "only `segment` pipelines take a mask threshold and a verdict rule");
            }
            if let Some(t) = p.verdict.min_score
                && !(0.0..=1.0).contains(&t)
            {
                problem(at("verdict.min_score"), "must be within 0..=1");
            }
            if !(0.0..=1.0).contains(&p.verdict.min_area_fraction) {
                problem(at("verdict.min_area_fraction"), "must be within 0..=1");
            }
            if p.kind == PipelineKind::Track {
                let t = &p.tracker;
                if t.n_init == 0 {
                    problem(at("tracker.n_init"), "must be positive");
                }
                if t.max_age == 0 {
                    problem(at("tracker.max_age"), "must be positive");
                }
                if !(0.0..=1.0).contains(&t.max_iou_distance) {
                    problem(at("tracker.max_iou_distance"), "must be within 0..=1");
                }
                if !(0.0..=2.0).contains(&t.max_cosine_distance) {
                    problem(at("tracker.max_cosine_distance"), "must be within 0..=2");
                }
                if t.nn_budget == 0 {
                    problem(at("tracker.nn_budget"), "must be positive");
                }
                if t.crop_width.is_some_and(|v| !(16..=1024).contains(&v)) {
                    problem(at("tracker.crop_width"), "must be within 16..=1024");
                }
                if t.crop_height.is_some_and(|v| !(16..=1024).contains(&v)) {
                    problem(at("tracker.crop_height"), "must be within 16..=1024");
                }
                if t.camera_idle_s == 0 {
                    problem(at("tracker.camera_idle_s"), "must be positive");
                }
                if t.embedder_batching.max_batch == 0 {
                    problem(at("tracker.embedder_batching.max_batch"), "must be positive");
                }
                if t.embedder_batching.max_queue_size < t.embedder_batching.max_batch {
                    problem(at("tracker.embedder_batching.max_queue_size"), "must be at least max_batch");
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// The model directory: the configured one, else `./models` when it exists, else the `models/`
    /// folder of the source tree this binary was built from.
    pub fn resolved_model_dir(&self) -> PathBuf {
        if let Some(dir) = &self.model_dir {
            return dir.clone();
        }
        let local = PathBuf::from("models");
        if local.is_dir() {
            return local;
        }
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_serve_nanodet() {
        let config = Config::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.pipelines["detect"].model, "nanodet-g");
        assert_eq!(config.server.default_budget_ms, 83);
    }

    #[test]
    fn verdict_rules_belong_to_segment_pipelines_and_stay_within_range() {
        let mut config = Config::default();
        assert_eq!(config.pipelines["el-defect"].kind, PipelineKind::Segment);
        let el = config.pipelines.get_mut("el-defect").expect("el-defect");
        el.mask_threshold = Some(1.5);
        el.verdict.min_area_fraction = -0.1;
        el.verdict.min_score = Some(2.0);
        config.pipelines.get_mut("detect").expect("detect").verdict.min_area_fraction = 0.1;
        let problems = config.validate().expect_err("invalid");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "pipelines.el-defect.mask_threshold",
            "pipelines.el-defect.verdict.min_area_fraction",
            "pipelines.el-defect.verdict.min_score",
            "pipelines.detect.verdict",
        ] {
            assert!(paths.contains(&expected), "{expected} not in {paths:?}");
        }
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../linesight.example.toml");
        let config = Config::from_toml(text).expect("example config");
        assert_eq!(config.default_pipeline, "detect");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = Config::from_toml("[server]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn validate_reports_every_problem_with_its_path() {
        let text = r#"
default_pipeline = "nope"
[server]
default_budget_ms = 0
preface_timeout_ms = 0
keepalive_interval_ms = 0
keepalive_timeout_ms = 0
[pipelines.detect]
kind = "detect"
model = ""
batching = { max_batch = 0 }
score_threshold = 1.5
"#;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(text) else {
            panic!("expected invalid config");
        };
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "server.default_budget_ms",
            "server.preface_timeout_ms",
            "server.keepalive_interval_ms",
            "server.keepalive_timeout_ms",
            "default_pipeline",
            "pipelines.detect.model",
            "pipelines.detect.batching.max_batch",
            "pipelines.detect.score_threshold",
        ] {
            assert!(paths.contains(&expected), "{expected} missing from {paths:?}");
        }
    }
}
