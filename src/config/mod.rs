//! Service configuration: a TOML file (see `linesight.example.toml`) layered over defaults that are
//! good enough for `linesight serve` to need no file at all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_with::{DurationMilliSeconds, serde_as};

use crate::imaging::DecodeLimits;
use crate::pipeline::{DetectSettings, PipelineSettings, SegmentSettings, ServiceSettings, TrackSettings};

mod validate;
pub use validate::{ConfigProblem, Validate};

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
    /// One table per pipeline, tagged by `kind`.
    pub pipelines: BTreeMap<String, PipelineSettings>,
}

#[serde_as]
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
    /// What every frame in flight may take decoded, together (its decoded pixels and its model
    /// input), in MiB: a frame is sized from its header before it is decoded, and refused with
    /// RESOURCE_EXHAUSTED when it would pass this. The bound on frame memory whatever clients do.
    pub max_decoded_mib: u64,
    /// Budget for a frame whose request says `budget_ms = 0`.
    #[serde(rename = "default_budget_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub default_budget: Duration,
    /// Frames decoded / pre- / post-processed at once (bounded blocking pool).
    pub cpu_workers: usize,
    /// Frames of one `InspectStream` in flight at once; responses still leave in request order.
    pub stream_window: usize,
    /// Frames of one camera in flight at once, over all its streams and calls; more are refused
    /// with RESOURCE_EXHAUSTED.
    pub max_in_flight_per_camera: usize,
    /// Frames in flight in the whole server; more are refused with RESOURCE_EXHAUSTED. Bounds the
    /// tasks and queued work clients can make (their memory is bounded by `max_decoded_mib`).
    pub max_frames_in_flight: usize,
    /// Connections in use (their HTTP/2 preface, or under TLS their first byte, has arrived). Up
    /// to as many again may be waiting for their first bytes; past that the oldest waiting one is
    /// closed.
    pub max_connections: usize,
    /// A new connection must send the HTTP/2 client preface (under TLS: start its handshake)
    /// within this, or it is closed.
    #[serde(rename = "preface_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub preface_timeout: Duration,
    /// How long an established connection may stay silent before the server sends an HTTP/2 PING.
    #[serde(rename = "keepalive_interval_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub keepalive_interval: Duration,
    /// A PING not acknowledged within this closes the connection.
    #[serde(rename = "keepalive_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub keepalive_timeout: Duration,
    /// Concurrent gRPC calls (HTTP/2 streams) per connection.
    pub max_concurrent_streams: u32,
    /// On SIGTERM/SIGINT: how long in-flight frames may take to finish before connections are cut.
    #[serde(rename = "shutdown_grace_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub shutdown_grace: Duration,
    pub tls: Option<TlsConfig>,
    pub auth: Option<AuthConfig>,
    pub metrics: Option<MetricsConfig>,
}

/// TLS for the gRPC port. With `client_ca_path`, mutual TLS: every client
/// must present a certificate signed by that CA.
#[serde_as]
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
    #[serde(default = "default_handshake_timeout", rename = "handshake_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub handshake_timeout: Duration,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(5)
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
    #[serde(alias = "gpu_memory_budget_mb")]
    pub gpu_memory_budget_mib: Option<u64>,
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
    /// On the CPU provider, one inference at a time over every model, each run with all its
    /// intra-op threads. Two sessions' thread pools running at once on the same cores stall each
    /// other (each operator waits for its slowest thread), so a `track` frame's embedder and the
    /// next frame's detector are better run one after the other.
    pub exclusive_cpu_runs: bool,
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
    #[serde(alias = "workspace_mb")]
    pub workspace_mib: u64,
}

impl Default for TensorRtConfig {
    fn default() -> Self {
        Self { fp16: true, engine_cache_dir: None, workspace_mib: 2048 }
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
                workspace_bytes: usize::try_from(self.tensorrt.workspace_mib.saturating_mul(1 << 20))
                    .unwrap_or(usize::MAX),
            },
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_message_bytes: 32 * 1024 * 1024,
            max_decoded_pixels: 40_000_000,
            max_image_side: 16_384,
            max_decoded_mib: 1024,
            default_budget: Duration::from_millis(83),
            cpu_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            stream_window: 4,
            max_in_flight_per_camera: 16,
            max_frames_in_flight: 256,
            max_connections: 512,
            preface_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 128,
            shutdown_grace: Duration::from_secs(10),
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
            gpu_memory_budget_mib: None,
            gpu_preprocess: true,
            gpu_batch_shapes: BatchShapes::Fixed,
            tensorrt: TensorRtConfig::default(),
            intra_op_spinning: false,
            exclusive_cpu_runs: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut pipelines = BTreeMap::new();
        pipelines
            .insert(DEFAULT_PIPELINE.to_owned(), PipelineSettings::Detect(DetectSettings::new(DEFAULT_DETECT_MODEL)));
        pipelines.insert(
            "track".to_owned(),
            PipelineSettings::Track(TrackSettings::new(DEFAULT_EMBED_MODEL, DEFAULT_PIPELINE)),
        );
        pipelines
            .insert("el-defect".to_owned(), PipelineSettings::Segment(SegmentSettings::new(DEFAULT_SEGMENT_MODEL)));
        Self {
            server: ServerConfig::default(),
            engine: EngineConfig::default(),
            model_dir: None,
            default_pipeline: DEFAULT_PIPELINE.to_owned(),
            pipelines,
        }
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
        self.validate_into("", &mut problems);
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// What `Pipelines::start` is given: the engine, the stage limits and every pipeline.
    pub fn service_settings(&self) -> ServiceSettings {
        let (server, engine) = (&self.server, &self.engine);
        ServiceSettings {
            ort_dylib_path: engine.ort_dylib_path.clone(),
            session: crate::engine::SessionOptions {
                intra_threads: engine.intra_threads,
                intra_op_spinning: engine.intra_op_spinning,
                provider: engine.provider_choice(),
            },
            gpu_preprocess: engine.gpu_preprocess,
            fixed_shapes: engine.gpu_batch_shapes == BatchShapes::Fixed,
            gpu_memory_budget_bytes: engine.gpu_memory_budget_mib.map(|mib| mib.saturating_mul(1 << 20)),
            device_id: engine.device_id,
            exclusive_cpu_runs: engine.exclusive_cpu_runs,
            cpu_workers: server.cpu_workers,
            decode_limits: DecodeLimits { max_pixels: server.max_decoded_pixels, max_side: server.max_image_side },
            max_decoded_bytes: server.max_decoded_mib.saturating_mul(1 << 20),
            default_budget: server.default_budget,
            max_in_flight_per_camera: server.max_in_flight_per_camera,
            max_frames_in_flight: server.max_frames_in_flight,
            model_dir: self.resolved_model_dir(),
            pipelines: self.pipelines.clone(),
            default_pipeline: self.default_pipeline.clone(),
        }
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
        assert_eq!(config.pipelines["detect"].model(), "nanodet-g");
        assert_eq!(config.server.default_budget, Duration::from_millis(83));
    }

    #[test]
    fn verdict_rules_belong_to_segment_pipelines_and_stay_within_range() {
        let mut config = Config::default();
        assert_eq!(config.pipelines["el-defect"].kind(), "segment");
        let Some(PipelineSettings::Segment(el)) = config.pipelines.get_mut("el-defect") else {
            panic!("el-defect is a segment pipeline");
        };
        el.mask_threshold = Some(1.5);
        el.cell_rule.min_area_fraction = Some(-0.1);
        el.cell_rule.min_score = Some(2.0);
        let problems = config.validate().expect_err("invalid");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "pipelines.el-defect.mask_threshold",
            "pipelines.el-defect.cell_rule.min_area_fraction",
            "pipelines.el-defect.cell_rule.min_score",
        ] {
            assert!(paths.contains(&expected), "{expected} not in {paths:?}");
        }
        // A cell rule on a detect pipeline is not a key of that kind: refused as the file is read,
        // with the keys a detect pipeline takes.
        let err = Config::from_toml(
            "[pipelines.detect]\nkind = \"detect\"\nmodel = \"nanodet-g\"\n[pipelines.detect.verdict]\nmin_area_fraction = 0.1\n",
        )
        .expect_err("a verdict on a detect pipeline");
        let text = err.to_string();
        assert!(text.contains("pipelines.detect") && text.contains("`verdict`"), "{text}");
        assert!(text.contains("score_threshold"), "names the keys a detect pipeline takes: {text}");
    }

    #[test]
    fn a_key_of_another_kind_is_refused_naming_the_keys_this_kind_takes() {
        let err =
            Config::from_toml("[pipelines.detect]\nkind = \"detect\"\nmodel = \"nanodet-g\"\ndetector = \"detect\"\n")
                .expect_err("detector on a detect pipeline");
        let text = err.to_string();
        assert!(text.contains("unknown field `detector`") && text.contains("batching"), "{text}");
        let err = Config::from_toml(
            "[pipelines.t]\nkind = \"track\"\nmodel = \"m\"\ndetector = \"d\"\n[pipelines.t.tracker]\nmax_agee = 3\n",
        )
        .expect_err("misspelt tracker key");
        assert!(err.to_string().contains("max_agee"), "{err}");
    }

    #[test]
    fn counting_lines_and_zones_are_read_and_checked_with_their_paths() {
        let toml = r#"
[pipelines.detect]
kind = "detect"
model = "nanodet-g"
[pipelines.track]
kind = "track"
model = "mobilenetv2-reid"
detector = "detect"
[pipelines.track.analytics]
anchor = "bottom_center"
[[pipelines.track.analytics.lines]]
name = "exit"
cameras = ["belt-1"]
from = [160.0, 0.0]
to = [160.0, 320.0]
forward = [1.0, 0.0]
[[pipelines.track.analytics.lines]]
name = "exit"
from = [0.0, 0.0]
to = [10.0, 0.0]
forward = [1.0, 0.0]
[[pipelines.track.analytics.zones]]
name = "bin"
polygon = [[0.0, 0.0], [1.0, 0.0]]
"#;
        let config: Config = toml::from_str(toml).expect("parses");
        let track = config.pipelines.get("track").and_then(|p| p.as_track()).expect("track");
        assert_eq!(track.analytics.anchor, crate::track::analytics::Anchor::BottomCenter);
        assert_eq!(track.analytics.lines[0].cameras, ["belt-1"]);
        let problems: Vec<String> = config.validate().expect_err("invalid").iter().map(|p| p.to_string()).collect();
        assert_eq!(
            problems,
            [
                "pipelines.track.analytics.lines[1].name: is already the name of another line",
                "pipelines.track.analytics.lines[1].forward: runs along the line; it must point across it",
                "pipelines.track.analytics.zones[0].polygon: needs at least 3 vertices",
            ]
        );
        let err = Config::from_toml(&toml.replace("anchor = ", "anchorr = ")).expect_err("misspelt key");
        assert!(err.to_string().contains("anchorr"), "{err}");
    }

    #[test]
    fn old_mb_names_still_read_as_mib() {
        let config =
            Config::from_toml("[engine]\ngpu_memory_budget_mb = 6000\n[engine.tensorrt]\nworkspace_mb = 512\n")
                .expect("old names");
        assert_eq!(config.engine.gpu_memory_budget_mib, Some(6000));
        assert_eq!(config.engine.tensorrt.workspace_mib, 512);
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../linesight.example.toml");
        let config = Config::from_toml(text).expect("example config");
        assert_eq!(config.default_pipeline, "detect");
        // The example spells out the tracker's defaults: it must not drift from them.
        let track = config.pipelines.get("track").and_then(|p| p.as_track()).expect("track pipeline");
        assert_eq!(track.tracker.params, crate::track::TrackerParams::default());
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
