//! Pipelines: each composes decode → preprocess → batch → infer → postprocess, timing every stage
//! and judging each frame against its budget.

mod admission;
mod detect;
mod error;
mod frame;
mod health;
mod track;
mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;

pub use admission::{Admission, Admitted};
pub use detect::{DetectPipeline, draw_detections, tensor_spec};
pub use error::{InspectError, ShedLimit};
pub use frame::{FrameRequest, FrameResult, ImageInput, LabeledDetection, PipelineInfo, StageTimings, Verdict};
pub use health::{ModelHealth, ModelState};
pub use track::TrackPipeline;

use crate::config::{Config, ManifestError, ModelManifest, PipelineKind};
use crate::engine::{EngineError, OrtRuntime, Provider, RuntimeError, SessionOptions};
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
    #[error("internal error: {0}")]
    Internal(String),
}

/// What every stage shares: the bounded CPU pool and the input limits.
#[derive(Debug)]
pub struct StageContext {
    /// Permits for CPU-heavy stages (decode, pre/postprocess) on the blocking pool.
    pub cpu_permits: Semaphore,
    pub decode_limits: DecodeLimits,
    pub default_budget: Duration,
}

/// What every pipeline's workers start from.
pub struct EngineSetup<'a> {
    pub runtime: &'a OrtRuntime,
    pub options: &'a SessionOptions,
    pub gpu_preprocess: bool,
    /// GPU sessions keep fixed batch shapes.
    pub fixed_shapes: bool,
    pub device_memory: &'a DeviceMemory,
}

/// Device memory the models take, measured around each model's load, against the configured
/// budget. The measure is the device's used memory before and after (any other process's
/// allocations in between count too), so models are loaded one at a time.
pub struct DeviceMemory {
    budget: Option<u64>,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    device_id: u32,
    #[cfg(feature = "cuda")]
    device: std::sync::OnceLock<Result<crate::engine::GpuDevice, String>>,
    taken: std::sync::Mutex<Vec<(String, u64)>>,
}

/// A measurement in progress: the device's used bytes before a model loaded.
pub(crate) struct Measuring {
    before: Option<u64>,
}

impl DeviceMemory {
    pub fn new(budget_mb: Option<u64>, device_id: u32) -> Self {
        Self {
            budget: budget_mb.map(|mb| mb.saturating_mul(1 << 20)),
            device_id,
            #[cfg(feature = "cuda")]
            device: std::sync::OnceLock::new(),
            taken: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Every measured model and the bytes it took.
    pub fn taken(&self) -> Vec<(String, u64)> {
        self.taken.lock().map(|t| t.clone()).unwrap_or_default()
    }

    #[cfg(feature = "cuda")]
    fn used_bytes(&self, model: &str) -> Result<u64, EngineError> {
        let device =
            self.device.get_or_init(|| crate::engine::GpuDevice::open(self.device_id).map_err(|e| e.to_string()));
        let device_err = |message: String| EngineError::Model { model: model.to_owned(), message };
        let device = device.as_ref().map_err(|e| device_err(format!("measuring device memory: {e}")))?;
        device.used_bytes().map_err(|e| device_err(format!("measuring device memory: {e}")))
    }

    /// Takes the device's used memory before a model loads on `provider` (the configured one).
    pub(crate) fn start_measuring(&self, model: &str, provider: Provider) -> Result<Measuring, EngineError> {
        if !provider.on_gpu() {
            return Ok(Measuring { before: None });
        }
        #[cfg(feature = "cuda")]
        {
            // No device (the provider may yet fall back to the CPU): nothing to measure.
            Ok(Measuring { before: self.used_bytes(model).ok() })
        }
        #[cfg(not(feature = "cuda"))]
        {
            if self.budget.is_some() {
                return Err(EngineError::Model {
                    model: model.to_owned(),
                    message: "engine.gpu_memory_budget_mb needs a build with the `cuda` feature, which measures \
                              device memory"
                        .into(),
                });
            }
            Ok(Measuring { before: None })
        }
    }

    /// Records what the model took on `running_on` (the provider its sessions ended up on) and
    /// refuses it if the models together exceed the budget.
    pub(crate) fn finish_measuring(
        &self,
        model: &str,
        measuring: Measuring,
        running_on: Provider,
    ) -> Result<Option<u64>, EngineError> {
        if !running_on.on_gpu() {
            return Ok(None);
        }
        let Some(_before) = measuring.before else {
            if self.budget.is_some() {
                return Err(EngineError::Model {
                    model: model.to_owned(),
                    message: "runs on the GPU but its device memory cannot be measured, so \
                              engine.gpu_memory_budget_mb cannot be enforced"
                        .into(),
                });
            }
            return Ok(None);
        };
        #[cfg(feature = "cuda")]
        {
            let took = self.used_bytes(model)?.saturating_sub(_before);
            self.record(model, took).map(Some)
        }
        #[cfg(not(feature = "cuda"))]
        {
            Ok(None)
        }
    }

    /// Adds what `model` took to the ledger; an error when the models together exceed the budget.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn record(&self, model: &str, took: u64) -> Result<u64, EngineError> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        taken.push((model.to_owned(), took));
        let total: u64 = taken.iter().map(|(_, b)| b).sum();
        tracing::info!(
            message = "Model loaded on the GPU.",
            model,
            device_memory_mib = took >> 20,
            all_models_mib = total >> 20
        );
        match self.budget {
            Some(budget) if total > budget => {
                let by_model = taken.iter().map(|(m, b)| format!("{m} {} MiB", b >> 20)).collect::<Vec<_>>().join(", ");
                Err(EngineError::DeviceMemory {
                    model: model.to_owned(),
                    total_mib: total >> 20,
                    budget_mib: budget >> 20,
                    by_model,
                })
            }
            _ => Ok(took),
        }
    }
}

/// A `camera_id` must be present and at most [`MAX_CAMERA_ID_BYTES`] long.
pub fn check_camera_id(camera_id: &str) -> Result<(), InspectError> {
    if camera_id.is_empty() {
        return Err(InspectError::EmptyCameraId);
    }
    if camera_id.len() > MAX_CAMERA_ID_BYTES {
        return Err(InspectError::CameraIdTooLong { len: camera_id.len(), max: MAX_CAMERA_ID_BYTES });
    }
    Ok(())
}

/// A camera's flow key for the batcher's fair shedding.
pub(crate) fn flow_of(camera_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    camera_id.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_past_the_memory_budget_are_refused_with_every_models_share() {
        let ledger = DeviceMemory::new(Some(1000), 0);
        assert_eq!(ledger.record("nanodet-g", 432 << 20).ok(), Some(432 << 20));
        let err = ledger.record("mobilenetv2-reid", 1906 << 20).expect_err("over budget");
        let text = err.to_string();
        assert!(text.contains("would exceed the GPU memory budget"), "{text}");
        assert!(text.contains("2338 MiB") && text.contains("nanodet-g 432 MiB"), "{text}");
        assert!(text.contains("mobilenetv2-reid 1906 MiB") && text.contains("is 1000"), "{text}");
        // No budget: recorded, never refused.
        let unbounded = DeviceMemory::new(None, 0);
        assert!(unbounded.record("big", 1 << 40).is_ok());
        assert_eq!(unbounded.taken(), vec![("big".to_owned(), 1u64 << 40)]);
    }
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
    admission: Arc<Admission>,
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
            provider: config.engine.provider_choice(),
        };
        let device_memory = DeviceMemory::new(config.engine.gpu_memory_budget_mb, config.engine.device_id);
        let engine = EngineSetup {
            runtime,
            options: &session_options,
            gpu_preprocess: config.engine.gpu_preprocess,
            fixed_shapes: config.engine.gpu_batch_shapes == crate::config::BatchShapes::Fixed,
            device_memory: &device_memory,
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
            let started = DetectPipeline::start(name, pipeline, manifest, &engine, context.clone())
                .map_err(engine_error(name))?;
            detectors.insert(name.clone(), Arc::new(started));
        }
        let mut by_name: BTreeMap<String, Pipeline> =
            detectors.iter().map(|(name, p)| (name.clone(), Pipeline::Detect(p.clone()))).collect();
        // Segmenters run as detect pipelines whose last stage decodes instances.
        for (name, pipeline) in config.pipelines.iter().filter(|(_, p)| p.kind == PipelineKind::Segment) {
            let manifest = load(name, pipeline, "segment", "segment")?;
            let started = DetectPipeline::start(name, pipeline, manifest, &engine, context.clone())
                .map_err(engine_error(name))?;
            by_name.insert(name.clone(), Pipeline::Detect(Arc::new(started)));
        }
        for (name, pipeline) in config.pipelines.iter().filter(|(_, p)| p.kind == PipelineKind::Track) {
            let manifest = load(name, pipeline, "embed", "track")?;
            let detector = pipeline
                .detector
                .as_ref()
                .and_then(|d| detectors.get(d))
                .ok_or_else(|| StartError::NoDetector { pipeline: name.clone() })?
                .clone();
            let started =
                TrackPipeline::start(name, pipeline, manifest, detector, &engine).map_err(engine_error(name))?;
            by_name.insert(name.clone(), Pipeline::Track(Arc::new(started)));
        }
        let admission =
            Arc::new(Admission::new(config.server.max_in_flight_per_camera, config.server.max_frames_in_flight));
        Ok(Self { by_name, default: config.default_pipeline.clone(), admission })
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

    /// Runs one frame through its pipeline. Validation, admission and a `track` frame's place in
    /// its camera's order are settled now, in call order; the returned future does the rest and
    /// holds the frame's admission ticket until it is answered (or dropped).
    pub fn inspect(&self, request: FrameRequest) -> BoxFuture<'static, Result<FrameResult, InspectError>> {
        let (pipeline, ticket) = match self.validate(&request).and_then(|p| {
            let ticket = self.admission.admit(&request.camera_id)?;
            Ok((p.clone(), ticket))
        }) {
            Ok(admitted) => admitted,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        match pipeline {
            Pipeline::Detect(p) => Box::pin(async move {
                let _ticket = ticket;
                p.inspect(request).await
            }),
            Pipeline::Track(p) => {
                let order = p.admit(&request);
                Box::pin(async move {
                    let _ticket = ticket;
                    p.inspect(request, order).await
                })
            }
        }
    }

    /// Frames in flight, and cameras with frames in flight.
    pub fn in_flight(&self) -> (usize, usize) {
        (self.admission.in_flight(), self.admission.cameras_in_flight())
    }

    /// Every pipeline's frames waiting for a model.
    pub fn queue_depths(&self) -> Vec<(String, usize)> {
        self.by_name
            .iter()
            .map(|(name, p)| {
                let depth = match p {
                    Pipeline::Detect(p) => p.queue_depth(),
                    Pipeline::Track(p) => p.queue_depth(),
                };
                (name.clone(), depth)
            })
            .collect()
    }

    /// Every model's state (a model shared by pipelines is listed once).
    pub fn model_states(&self) -> Vec<(String, ModelState)> {
        let mut states = BTreeMap::new();
        for p in self.by_name.values() {
            let healths = match p {
                Pipeline::Detect(p) => vec![p.health()],
                Pipeline::Track(p) => vec![p.health(), p.detector_health()],
            };
            for h in healths {
                states.insert(h.model().to_owned(), h.state());
            }
        }
        states.into_iter().collect()
    }

    fn validate(&self, request: &FrameRequest) -> Result<&Pipeline, InspectError> {
        check_camera_id(&request.camera_id)?;
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
