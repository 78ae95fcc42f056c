//! Pipelines: each composes decode → preprocess → batch → infer → postprocess, timing every stage
//! and judging each frame against its budget.

mod detect;
mod error;
mod frame;
mod track;
mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;

pub use detect::{DetectPipeline, draw_detections, tensor_spec};
pub use error::{InspectError, ShedLimit};
pub use frame::{FrameRequest, FrameResult, ImageInput, LabeledDetection, PipelineInfo, StageTimings, Verdict};
pub use track::TrackPipeline;

use crate::config::{Config, ManifestError, ModelManifest, PipelineKind};
use crate::engine::{EngineError, OrtRuntime, RuntimeError, SessionOptions};
use crate::imaging::DecodeLimits;
use crate::track::RegistryStats;

/// Longest accepted `camera_id`, in bytes.
pub const MAX_CAMERA_ID_BYTES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("pipeline `{pipeline}`: {source}")]
    Manifest { pipeline: String, source: Box<ManifestError> },
    #[error("pipeline `{pipeline}`: {source}")]
    Engine { pipeline: String, source: EngineError },
    #[error("pipeline `{pipeline}`: model `{model}` is a `{task}` model, not usable by a `{kind}` pipeline")]
    WrongTask { pipeline: String, model: String, task: String, kind: String },
    #[error("pipeline `{pipeline}`: its detector is not a configured `detect` pipeline")]
    NoDetector { pipeline: String },
}

/// What every stage shares: the bounded CPU pool and the input limits.
#[derive(Debug)]
pub struct StageContext {
    /// Permits for CPU-heavy stages (decode, pre/postprocess) on the blocking pool.
    pub cpu_permits: Semaphore,
    pub decode_limits: DecodeLimits,
    pub default_budget: Duration,
}

/// One served pipeline.
#[derive(Clone)]
pub enum Pipeline {
    Detect(Arc<DetectPipeline>),
    Track(Arc<TrackPipeline>),
}

impl Pipeline {
    pub fn describe(&self) -> PipelineInfo {
        match self {
            Pipeline::Detect(p) => p.describe(),
            Pipeline::Track(p) => p.describe(),
        }
    }
}

/// A `track` pipeline's tracker registry at one moment.
#[derive(Debug, Clone)]
pub struct TrackingStats {
    pub pipeline: String,
    pub stats: RegistryStats,
}

/// All served pipelines, by name.
pub struct Pipelines {
    by_name: BTreeMap<String, Pipeline>,
    default: String,
}

impl Pipelines {
    /// Loads ONNX Runtime and every configured model; must run inside a tokio runtime.
    pub fn start(config: &Config) -> Result<Self, StartError> {
        let runtime = OrtRuntime::init(config.engine.ort_dylib_path.as_deref())?;
        let context = Arc::new(StageContext {
            cpu_permits: Semaphore::new(config.server.cpu_workers),
            decode_limits: DecodeLimits {
                max_pixels: config.server.max_decoded_pixels,
                max_side: config.server.max_image_side,
            },
            default_budget: Duration::from_millis(u64::from(config.server.default_budget_ms)),
        });
        let model_dir = config.resolved_model_dir();
        let session_options = SessionOptions {
            intra_threads: config.engine.intra_threads,
            intra_op_spinning: config.engine.intra_op_spinning,
        };
        let load = |name: &str, pipeline: &crate::config::PipelineConfig, task: &str, kind: &str| {
            let manifest = ModelManifest::load(&model_dir.join(&pipeline.model))
                .map_err(|source| StartError::Manifest { pipeline: name.to_owned(), source: Box::new(source) })?;
            if manifest.task != task {
                return Err(StartError::WrongTask {
                    pipeline: name.to_owned(),
                    model: manifest.name.clone(),
                    task: manifest.task.clone(),
                    kind: kind.into(),
                });
            }
            Ok(manifest)
        };
        let engine_error = |name: &str| {
            let name = name.to_owned();
            move |source| StartError::Engine { pipeline: name, source }
        };
        // Detectors first: track pipelines share them.
        let mut detectors = BTreeMap::new();
        for (name, pipeline) in config.pipelines.iter().filter(|(_, p)| p.kind == PipelineKind::Detect) {
            let manifest = load(name, pipeline, "detect", "detect")?;
            let started = DetectPipeline::start(name, pipeline, manifest, runtime, session_options, context.clone())
                .map_err(engine_error(name))?;
            detectors.insert(name.clone(), Arc::new(started));
        }
        let mut by_name: BTreeMap<String, Pipeline> =
            detectors.iter().map(|(name, p)| (name.clone(), Pipeline::Detect(p.clone()))).collect();
        for (name, pipeline) in config.pipelines.iter().filter(|(_, p)| p.kind == PipelineKind::Track) {
            let manifest = load(name, pipeline, "embed", "track")?;
            let detector = pipeline
                .detector
                .as_ref()
                .and_then(|d| detectors.get(d))
                .ok_or_else(|| StartError::NoDetector { pipeline: name.clone() })?
                .clone();
            let started = TrackPipeline::start(name, pipeline, manifest, detector, runtime, session_options)
                .map_err(engine_error(name))?;
            by_name.insert(name.clone(), Pipeline::Track(Arc::new(started)));
        }
        Ok(Self { by_name, default: config.default_pipeline.clone() })
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    pub fn get(&self, name: &str) -> Result<&Pipeline, InspectError> {
        let name = if name.is_empty() { self.default.as_str() } else { name };
        self.by_name.get(name).ok_or_else(|| InspectError::UnknownPipeline {
            name: name.to_owned(),
            available: self.by_name.keys().cloned().collect(),
        })
    }

    pub fn describe(&self) -> Vec<PipelineInfo> {
        self.by_name.values().map(Pipeline::describe).collect()
    }

    /// Every `track` pipeline's registry counts.
    pub fn tracking_stats(&self) -> Vec<TrackingStats> {
        self.by_name
            .iter()
            .filter_map(|(name, p)| match p {
                Pipeline::Track(t) => Some(TrackingStats { pipeline: name.clone(), stats: t.stats() }),
                Pipeline::Detect(_) => None,
            })
            .collect()
    }

    /// Runs one frame through its pipeline. Validation and a `track` frame's place in its camera's
    /// order are settled now, in call order; the returned future does the rest.
    pub fn inspect(&self, request: FrameRequest) -> BoxFuture<'static, Result<FrameResult, InspectError>> {
        let pipeline = match self.validate(&request) {
            Ok(p) => p.clone(),
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        match pipeline {
            Pipeline::Detect(p) => Box::pin(async move { p.inspect(request).await }),
            Pipeline::Track(p) => {
                let admission = p.admit(&request);
                Box::pin(async move { p.inspect(request, admission).await })
            }
        }
    }

    fn validate(&self, request: &FrameRequest) -> Result<&Pipeline, InspectError> {
        if request.camera_id.is_empty() {
            return Err(InspectError::EmptyCameraId);
        }
        if request.camera_id.len() > MAX_CAMERA_ID_BYTES {
            return Err(InspectError::CameraIdTooLong { len: request.camera_id.len(), max: MAX_CAMERA_ID_BYTES });
        }
        self.get(&request.pipeline)
    }

    /// Stops taking frames; queued frames are still served. Returns once every model worker has ended.
    pub async fn shutdown(&self) {
        for p in self.by_name.values() {
            match p {
                Pipeline::Detect(p) => p.close(),
                Pipeline::Track(p) => p.close(),
            }
        }
        for p in self.by_name.values() {
            match p {
                Pipeline::Detect(p) => p.join_workers().await,
                Pipeline::Track(p) => p.join_workers().await,
            }
        }
    }
}
