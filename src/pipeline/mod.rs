//! Pipelines: each composes decode → preprocess → batch → infer → postprocess, timing every stage
//! and judging each frame against its budget.

mod detect;
mod error;
mod frame;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

pub use detect::{DetectPipeline, draw_detections, tensor_spec};
pub use error::{InspectError, ShedLimit};
pub use frame::{FrameRequest, FrameResult, ImageInput, LabeledDetection, PipelineInfo, StageTimings, Verdict};

use crate::config::{Config, ManifestError, ModelManifest, PipelineKind};
use crate::engine::{EngineError, OrtRuntime, RuntimeError, SessionOptions};
use crate::imaging::DecodeLimits;

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
}

/// What every stage shares: the bounded CPU pool and the input limits.
#[derive(Debug)]
pub struct StageContext {
    /// Permits for CPU-heavy stages (decode, pre/postprocess) on the blocking pool.
    pub cpu_permits: Semaphore,
    pub decode_limits: DecodeLimits,
    pub default_budget: Duration,
}

/// All served pipelines, by name.
pub struct Pipelines {
    by_name: BTreeMap<String, Arc<DetectPipeline>>,
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
        let mut by_name = BTreeMap::new();
        for (name, pipeline) in &config.pipelines {
            let manifest = ModelManifest::load(&model_dir.join(&pipeline.model))
                .map_err(|source| StartError::Manifest { pipeline: name.clone(), source: Box::new(source) })?;
            let started = match pipeline.kind {
                PipelineKind::Detect => {
                    if manifest.task != "detect" {
                        return Err(StartError::WrongTask {
                            pipeline: name.clone(),
                            model: manifest.name.clone(),
                            task: manifest.task.clone(),
                            kind: "detect".into(),
                        });
                    }
                    DetectPipeline::start(name, pipeline, manifest, runtime, session_options, context.clone())
                        .map_err(|source| StartError::Engine { pipeline: name.clone(), source })?
                }
            };
            by_name.insert(name.clone(), Arc::new(started));
        }
        Ok(Self { by_name, default: config.default_pipeline.clone() })
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    pub fn get(&self, name: &str) -> Result<&Arc<DetectPipeline>, InspectError> {
        let name = if name.is_empty() { self.default.as_str() } else { name };
        self.by_name.get(name).ok_or_else(|| InspectError::UnknownPipeline {
            name: name.to_owned(),
            available: self.by_name.keys().cloned().collect(),
        })
    }

    pub fn describe(&self) -> Vec<PipelineInfo> {
        self.by_name.values().map(|p| p.describe()).collect()
    }

    /// Runs one frame through its pipeline.
    pub async fn inspect(&self, request: FrameRequest) -> Result<FrameResult, InspectError> {
        if request.camera_id.is_empty() {
            return Err(InspectError::EmptyCameraId);
        }
        if request.camera_id.len() > MAX_CAMERA_ID_BYTES {
            return Err(InspectError::CameraIdTooLong { len: request.camera_id.len(), max: MAX_CAMERA_ID_BYTES });
        }
        let pipeline = self.get(&request.pipeline)?.clone();
        pipeline.inspect(request).await
    }

    /// Stops taking frames; queued frames are still served. Returns once every model worker has ended.
    pub async fn shutdown(&self) {
        for p in self.by_name.values() {
            p.close();
        }
        for p in self.by_name.values() {
            p.join_workers().await;
        }
    }
}
