//! Pipelines: each composes decode → preprocess → batch → infer → postprocess, timing every stage
//! and judging each frame against its budget.

mod admission;
mod detect;
mod error;
mod frame;
mod health;
mod memory;
mod models;
mod segment;
pub mod settings;
mod stage;
mod track;
mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;

pub use admission::{Admitted, FrameHold, InFlightCaps};
pub use detect::DetectPipeline;
pub use error::{InspectError, ShedCause, ShedLimit};
pub use frame::{FrameRequest, FrameResult, ImageInput, LabeledDetection, PipelineInfo, Stage, StageTimings, Verdict};
pub use health::{ModelHealth, ModelState};
pub use memory::{DecodedMemory, MemoryLease};
pub use models::resolve_manifest;
pub use segment::SegmentPipeline;
pub use settings::{
    CellRuleSettings, DetectSettings, LetterboxMode, PipelineSettings, SegmentSettings, ServiceSettings, TrackSettings,
    TrackerSettings,
};
use stage::ModelStage;
pub use stage::{draw_detections, tensor_spec};
pub use track::TrackPipeline;

use crate::engine::{EngineError, OrtRuntime, RuntimeError, SessionOptions};
use crate::imaging::DecodeLimits;
use crate::model::{ManifestError, Task};
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
    WrongTask { pipeline: String, model: String, task: Task, kind: &'static str },
    #[error("pipeline `{pipeline}`: its detector is not a configured `detect` pipeline")]
    NoDetector { pipeline: String },
    #[error("pipeline `{pipeline}`: model `{model}`'s decoder is not {expected}'s")]
    WrongDecoder { pipeline: String, model: String, expected: &'static str },
    #[error("pipeline `{pipeline}`: {key}: `{class}` is not one of its classes {known:?}")]
    UnknownClass { pipeline: String, key: String, class: String, known: Vec<String> },
    #[error("pipeline `{pipeline}`: cell_rule: {problem}")]
    CellRule { pipeline: String, problem: String },
    #[error(
        "pipeline `{pipeline}`: letterbox = \"stride\" needs a model whose input size is open; model \
         `{model}` takes {width}x{height} only"
    )]
    LetterboxNeedsOpenInput { pipeline: String, model: String, width: u32, height: u32 },
    #[error("internal error: {0}")]
    Internal(String),
}

/// What every stage shares: the bounded CPU pool and the input limits.
#[derive(Debug)]
pub struct StageContext {
    /// Permits for CPU-heavy stages (decode, pre/postprocess) on the blocking pool; each is held by
    /// the blocking work itself, so a call that is cancelled keeps its place until its work ends.
    pub cpu_permits: Arc<Semaphore>,
    pub decode_limits: DecodeLimits,
    /// What frames in flight may take decoded (`server.max_decoded_mib`).
    pub decoded_memory: DecodedMemory,
    pub default_budget: Duration,
}

/// What every pipeline's workers start from.
pub struct EngineSetup<'a> {
    pub runtime: &'a OrtRuntime,
    pub options: &'a SessionOptions,
    pub gpu_preprocess: bool,
    /// GPU sessions keep fixed batch shapes.
    pub fixed_shapes: bool,
    pub device_memory: &'a crate::cuda::DeviceMemory,
    /// Held by a CPU session through each run when CPU runs are exclusive (`None`: concurrent).
    pub(crate) cpu_runs: Option<Arc<worker::CpuRuns>>,
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

/// One served pipeline, by kind.
#[derive(Clone)]
pub enum Pipeline {
    Detect(Arc<DetectPipeline>),
    Track(Arc<TrackPipeline>),
    Segment(Arc<SegmentPipeline>),
}

impl Pipeline {
    pub fn describe(&self) -> PipelineInfo {
        match self {
            Pipeline::Detect(p) => p.describe(),
            Pipeline::Track(p) => p.describe(),
            Pipeline::Segment(p) => p.describe(),
        }
    }

    /// The model stages the pipeline runs, its own first (a `track` pipeline's second is its
    /// detector's, shared with that pipeline).
    fn stages(&self) -> Vec<&ModelStage> {
        match self {
            Pipeline::Detect(p) => vec![p.stage()],
            Pipeline::Track(p) => p.stages().to_vec(),
            Pipeline::Segment(p) => vec![p.stage()],
        }
    }

    /// Frames waiting for this pipeline's own model.
    fn queue_depth(&self) -> usize {
        self.stages().first().map_or(0, |s| s.queue_depth())
    }

    fn close(&self) {
        if let Pipeline::Track(p) = self {
            p.close();
        }
        if let Some(own) = self.stages().first() {
            own.close();
        }
    }

    async fn join_workers(&self) {
        if let Some(own) = self.stages().first() {
            own.join_workers().await;
        }
    }

    /// The frame's work, holding `hold` until it is answered and its work has ended. A `track`
    /// frame's place in its camera's order is taken now, in call order.
    fn inspect(self, request: FrameRequest, hold: FrameHold) -> BoxFuture<'static, Result<FrameResult, InspectError>> {
        match self {
            Pipeline::Detect(p) => Box::pin(async move { p.inspect(request, &hold).await }),
            Pipeline::Segment(p) => Box::pin(async move { p.inspect(request, &hold).await }),
            Pipeline::Track(p) => {
                let order = p.admit(&request);
                if let crate::track::Placement::NoRoom { max_cameras } = order {
                    let refused = InspectError::TooManyCameras { pipeline: p.name().to_owned(), max: max_cameras };
                    return Box::pin(std::future::ready(Err(refused)));
                }
                Box::pin(async move { p.inspect(request, order, &hold).await })
            }
        }
    }
}

/// A `track` pipeline's tracker registry at one moment.
#[derive(Debug, Clone)]
pub struct TrackingStats {
    pub pipeline: String,
    pub stats: RegistryStats,
}

/// A `track` pipeline's line and zone counts per camera.
#[derive(Debug, Clone)]
pub struct PipelineCounts {
    pub pipeline: String,
    pub cameras: Vec<crate::track::CameraCounts>,
}

/// All served pipelines, by name.
pub struct Pipelines {
    by_name: BTreeMap<String, Pipeline>,
    default: String,
    admission: Arc<InFlightCaps>,
    context: Arc<StageContext>,
}

impl Pipelines {
    /// Loads ONNX Runtime and every configured model; must run inside a tokio runtime.
    pub fn start(settings: &ServiceSettings) -> Result<Self, StartError> {
        let runtime = OrtRuntime::init(settings.ort_dylib_path.as_deref())?;
        let context = Arc::new(StageContext {
            cpu_permits: Arc::new(Semaphore::new(settings.cpu_workers)),
            decode_limits: settings.decode_limits,
            decoded_memory: DecodedMemory::new(settings.max_decoded_bytes),
            default_budget: settings.default_budget,
        });
        let device_memory = crate::cuda::DeviceMemory::new(settings.gpu_memory_budget_bytes, settings.device_id);
        let engine = EngineSetup {
            runtime,
            options: &settings.session,
            gpu_preprocess: settings.gpu_preprocess,
            fixed_shapes: settings.fixed_shapes,
            device_memory: &device_memory,
            cpu_runs: settings.exclusive_cpu_runs.then(|| Arc::new(worker::CpuRuns::default())),
        };
        let load = |name: &str, model: &str, task: Task, kind: &'static str| {
            let manifest = resolve_manifest(runtime, &settings.model_dir, model)
                .map_err(|source| StartError::Manifest { pipeline: name.to_owned(), source: Box::new(source) })?;
            if manifest.task != task {
                return Err(StartError::WrongTask {
                    pipeline: name.to_owned(),
                    model: manifest.name.clone(),
                    task: manifest.task,
                    kind,
                });
            }
            Ok(manifest)
        };
        // Detectors first: track pipelines share them.
        let mut detectors = BTreeMap::new();
        let mut by_name: BTreeMap<String, Pipeline> = BTreeMap::new();
        for (name, pipeline) in &settings.pipelines {
            match pipeline {
                PipelineSettings::Detect(p) => {
                    let manifest = load(name, &p.model, Task::Detect, "detect")?;
                    let started = Arc::new(DetectPipeline::start(name, p, manifest, &engine, context.clone())?);
                    detectors.insert(name.clone(), started.clone());
                    by_name.insert(name.clone(), Pipeline::Detect(started));
                }
                PipelineSettings::Segment(p) => {
                    let manifest = load(name, &p.model, Task::Segment, "segment")?;
                    let started = SegmentPipeline::start(name, p, manifest, &engine, context.clone())?;
                    by_name.insert(name.clone(), Pipeline::Segment(Arc::new(started)));
                }
                PipelineSettings::Track(_) => {}
            }
        }
        for (name, pipeline) in &settings.pipelines {
            let PipelineSettings::Track(p) = pipeline else { continue };
            let manifest = load(name, &p.model, Task::Embed, "track")?;
            let detector =
                detectors.get(&p.detector).ok_or_else(|| StartError::NoDetector { pipeline: name.clone() })?.clone();
            let started = TrackPipeline::start(name, p, manifest, detector, &engine)?;
            by_name.insert(name.clone(), Pipeline::Track(Arc::new(started)));
        }
        let admission = Arc::new(InFlightCaps::new(settings.max_in_flight_per_camera, settings.max_frames_in_flight));
        Ok(Self { by_name, default: settings.default_pipeline.clone(), admission, context })
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    pub fn get(&self, name: &str) -> Result<&Pipeline, InspectError> {
        let name = if name.is_empty() { self.default.as_str() } else { name };
        self.by_name.get(name).ok_or_else(|| InspectError::UnknownPipeline {
            name: error::quoted(name),
            available: self.by_name.keys().cloned().collect(),
        })
    }

    pub fn describe(&self) -> Vec<PipelineInfo> {
        self.by_name.values().map(Pipeline::describe).collect()
    }

    /// Line totals and zone occupants per camera of `pipeline` (every track pipeline when empty),
    /// of `camera_id` alone when given.
    pub fn line_counts(&self, pipeline: &str, camera_id: Option<&str>) -> Result<Vec<PipelineCounts>, InspectError> {
        let tracking = || -> Vec<String> {
            self.by_name.iter().filter(|(_, p)| matches!(p, Pipeline::Track(_))).map(|(n, _)| n.clone()).collect()
        };
        let chosen: Vec<(&String, &Pipeline)> = if pipeline.is_empty() {
            self.by_name.iter().collect()
        } else {
            let (name, found) = self.by_name.get_key_value(pipeline).ok_or_else(|| InspectError::UnknownPipeline {
                name: error::quoted(pipeline),
                available: self.by_name.keys().cloned().collect(),
            })?;
            if !matches!(found, Pipeline::Track(_)) {
                return Err(InspectError::NotTracking { name: pipeline.to_owned(), tracking: tracking() });
            }
            vec![(name, found)]
        };
        Ok(chosen
            .into_iter()
            .filter_map(|(name, p)| match p {
                Pipeline::Track(t) => Some(PipelineCounts { pipeline: name.clone(), cameras: t.counts(camera_id) }),
                Pipeline::Detect(_) | Pipeline::Segment(_) => None,
            })
            .collect())
    }

    /// Crossings of every track pipeline's lines over all its cameras since start.
    pub fn crossing_totals(&self) -> Vec<(String, Vec<crate::track::analytics::LineTotal>)> {
        self.by_name
            .iter()
            .filter_map(|(name, p)| match p {
                Pipeline::Track(t) => Some((name.clone(), t.crossing_totals())),
                Pipeline::Detect(_) | Pipeline::Segment(_) => None,
            })
            .collect()
    }

    /// Every `track` pipeline's registry counts.
    pub fn tracking_stats(&self) -> Vec<TrackingStats> {
        self.by_name
            .iter()
            .filter_map(|(name, p)| match p {
                Pipeline::Track(t) => Some(TrackingStats { pipeline: name.clone(), stats: t.stats() }),
                Pipeline::Detect(_) | Pipeline::Segment(_) => None,
            })
            .collect()
    }

    /// Runs one frame through its pipeline. Validation, admission and a `track` frame's place in
    /// its camera's order are settled now, in call order; the returned future does the rest and
    /// holds the frame's admission ticket until it is answered (or dropped).
    pub fn inspect(&self, request: FrameRequest) -> BoxFuture<'static, Result<FrameResult, InspectError>> {
        let (pipeline, hold) = match self.validate(&request).and_then(|p| {
            let place = self.admission.admit(&request.camera_id)?;
            Ok((p.clone(), FrameHold::new(place)))
        }) {
            Ok(admitted) => admitted,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        pipeline.inspect(request, hold)
    }

    /// Frames in flight, and cameras with frames in flight.
    pub fn in_flight(&self) -> (usize, usize) {
        (self.admission.in_flight(), self.admission.cameras_in_flight())
    }

    /// Bytes the frames in flight have leased decoded.
    pub fn decoded_bytes(&self) -> u64 {
        self.context.decoded_memory.held_bytes()
    }

    /// Every pipeline's frames waiting for a model.
    pub fn queue_depths(&self) -> Vec<(String, usize)> {
        self.by_name.iter().map(|(name, p)| (name.clone(), p.queue_depth())).collect()
    }

    /// Every model's state (a model shared by pipelines is listed once).
    pub fn model_states(&self) -> Vec<(String, ModelState)> {
        let mut states = BTreeMap::new();
        for p in self.by_name.values() {
            for h in p.stages().into_iter().map(ModelStage::health) {
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
            p.close();
        }
        for p in self.by_name.values() {
            p.join_workers().await;
        }
    }
}
