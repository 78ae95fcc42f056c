//! What each pipeline kind is set up with: one type per kind, as a config file's
//! `[pipelines.<name>]` table spells it (`kind = "detect" | "track" | "segment"`). A key that
//! belongs to another kind is refused when the table is read, naming the keys this kind takes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_with::{DurationMilliSeconds, DurationSeconds, serde_as};

use crate::batching::BatchPolicy;
use crate::engine::SessionOptions;
use crate::imaging::DecodeLimits;
use crate::track::{AnalyticsSettings, TrackerParams};

/// One pipeline, by kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PipelineSettings {
    Detect(DetectSettings),
    Track(TrackSettings),
    Segment(SegmentSettings),
}

impl PipelineSettings {
    /// The model folder this pipeline loads: the detector, the embedder or the segmenter.
    pub fn model(&self) -> &str {
        match self {
            PipelineSettings::Detect(p) => &p.model,
            PipelineSettings::Track(p) => &p.model,
            PipelineSettings::Segment(p) => &p.model,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            PipelineSettings::Detect(_) => "detect",
            PipelineSettings::Track(_) => "track",
            PipelineSettings::Segment(_) => "segment",
        }
    }

    /// The batching of the pipeline's own model (a `track` pipeline's: its embedder's).
    pub fn batching_mut(&mut self) -> &mut BatchPolicy {
        match self {
            PipelineSettings::Detect(p) => &mut p.batching,
            PipelineSettings::Track(p) => &mut p.tracker.embedder_batching,
            PipelineSettings::Segment(p) => &mut p.batching,
        }
    }

    /// The pipeline's default budget; `None`: the server's.
    pub fn budget_mut(&mut self) -> &mut Option<Duration> {
        match self {
            PipelineSettings::Detect(p) => &mut p.budget,
            PipelineSettings::Track(p) => &mut p.budget,
            PipelineSettings::Segment(p) => &mut p.budget,
        }
    }

    pub fn as_detect_mut(&mut self) -> Option<&mut DetectSettings> {
        if let PipelineSettings::Detect(p) = self { Some(p) } else { None }
    }

    pub fn as_track(&self) -> Option<&TrackSettings> {
        if let PipelineSettings::Track(p) = self { Some(p) } else { None }
    }

    pub fn as_track_mut(&mut self) -> Option<&mut TrackSettings> {
        if let PipelineSettings::Track(p) = self { Some(p) } else { None }
    }

    pub fn as_segment_mut(&mut self) -> Option<&mut SegmentSettings> {
        if let PipelineSettings::Segment(p) = self { Some(p) } else { None }
    }

    /// Model instances, each a worker thread owning its own ONNX Runtime session.
    pub fn instances_mut(&mut self) -> &mut usize {
        match self {
            PipelineSettings::Detect(p) => &mut p.instances,
            PipelineSettings::Track(p) => &mut p.instances,
            PipelineSettings::Segment(p) => &mut p.instances,
        }
    }
}

/// A `detect` pipeline: a detector.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectSettings {
    /// Folder name under `model_dir`.
    pub model: String,
    #[serde(default)]
    pub batching: BatchPolicy,
    /// Default budget for this pipeline's frames; falls back to `server.default_budget_ms`.
    #[serde(default, rename = "budget_ms")]
    #[serde_as(as = "Option<DurationMilliSeconds<u64>>")]
    pub budget: Option<Duration>,
    #[serde(default)]
    pub score_threshold: Option<f32>,
    #[serde(default)]
    pub iou_threshold: Option<f32>,
    #[serde(default)]
    pub max_detections: Option<usize>,
    /// NMS across classes (Ultralytics' `agnostic_nms`): one box per object even when the model
    /// scores it as two classes. Counting lines want it; off by default, as in Ultralytics.
    #[serde(default)]
    pub class_agnostic_nms: bool,
    #[serde(default = "one")]
    pub instances: usize,
    /// How frames are letterboxed for a model whose input size is open (an Ultralytics dynamic
    /// export): `stride` (its default: to a multiple of the stride, as predict does) or `full`
    /// (to the whole input size, so frames of every size batch together and a GPU session keeps
    /// one shape). A model of fixed size is always `full`.
    #[serde(default)]
    pub letterbox: Option<LetterboxMode>,
}

/// See [`DetectSettings::letterbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LetterboxMode {
    Stride,
    Full,
}

impl DetectSettings {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            batching: BatchPolicy::default(),
            budget: None,
            score_threshold: None,
            iou_threshold: None,
            max_detections: None,
            class_agnostic_nms: false,
            instances: 1,
            letterbox: None,
        }
    }
}

/// A `segment` pipeline: an instance segmenter and the rule that judges each image (cell).
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSettings {
    /// Folder name under `model_dir`.
    pub model: String,
    #[serde(default)]
    pub batching: BatchPolicy,
    #[serde(default, rename = "budget_ms")]
    #[serde_as(as = "Option<DurationMilliSeconds<u64>>")]
    pub budget: Option<Duration>,
    #[serde(default)]
    pub score_threshold: Option<f32>,
    #[serde(default)]
    pub iou_threshold: Option<f32>,
    #[serde(default)]
    pub max_detections: Option<usize>,
    /// Overrides the model's mask threshold.
    #[serde(default)]
    pub mask_threshold: Option<f32>,
    /// When an image (a cell) is judged defective. `verdict` is the older name of this table.
    #[serde(default, alias = "verdict")]
    pub cell_rule: CellRuleSettings,
    #[serde(default = "one")]
    pub instances: usize,
}

impl SegmentSettings {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            batching: BatchPolicy::default(),
            budget: None,
            score_threshold: None,
            iou_threshold: None,
            max_detections: None,
            mask_threshold: None,
            cell_rule: CellRuleSettings::default(),
            instances: 1,
        }
    }
}

/// A `segment` pipeline's cell rule (`cell_rule`): the same keys as a model's `[cell_rule]`. Each
/// key unset here comes from the model's, and otherwise defaults to: the pipeline's score
/// threshold, any area, every class, instances counted, no probability threshold.
pub type CellRuleSettings = crate::model::CellRuleSpec;

/// A `track` pipeline: DeepSORT per camera over the detections of a `detect` pipeline.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackSettings {
    /// The appearance embedder: a folder name under `model_dir`.
    pub model: String,
    /// The `detect` pipeline whose detections are tracked. Its queue and model instances are
    /// shared, so detect and track frames batch together.
    pub detector: String,
    #[serde(default)]
    pub tracker: TrackerSettings,
    /// Counting lines and zones on the tracks of this pipeline's cameras.
    #[serde(default)]
    pub analytics: AnalyticsSettings,
    #[serde(default, rename = "budget_ms")]
    #[serde_as(as = "Option<DurationMilliSeconds<u64>>")]
    pub budget: Option<Duration>,
    #[serde(default = "one")]
    pub instances: usize,
}

impl TrackSettings {
    pub fn new(model: &str, detector: &str) -> Self {
        Self {
            model: model.to_owned(),
            detector: detector.to_owned(),
            tracker: TrackerSettings::default(),
            analytics: AnalyticsSettings::default(),
            budget: None,
            instances: 1,
        }
    }
}

/// DeepSORT's parameters (defaults are the paper's), which detections to track, and the
/// embedder's crop size.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerSettings {
    #[serde(flatten)]
    pub params: TrackerParams,
    /// Detector classes to track, by name; empty = all.
    pub classes: Vec<String>,
    /// Embedder input size for each crop; default: the embedder manifest's input size.
    pub crop_width: Option<u32>,
    pub crop_height: Option<u32>,
    /// A camera with no frame for this long loses its tracks (memory stays bounded).
    #[serde(rename = "camera_idle_s")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub camera_idle: Duration,
    /// Cameras tracked at once: a new camera beyond them is refused (`RESOURCE_EXHAUSTED`) until one
    /// has been idle `camera_idle_s`, so that a client cycling camera ids cannot grow memory.
    pub max_cameras: usize,
    /// Embedder batching: a batch holds the crops of up to `max_batch` frames.
    pub embedder_batching: BatchPolicy,
}

impl Default for TrackerSettings {
    fn default() -> Self {
        Self {
            params: TrackerParams::default(),
            classes: Vec::new(),
            crop_width: None,
            crop_height: None,
            camera_idle: Duration::from_secs(60),
            max_cameras: 1024,
            embedder_batching: BatchPolicy::default(),
        }
    }
}

fn one() -> usize {
    1
}

/// Everything [`Pipelines::start`](super::Pipelines::start) needs: the engine, the shared stage
/// limits and every pipeline.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Full path of the ONNX Runtime shared library; `None`: `ORT_DYLIB_PATH`, then the default.
    pub ort_dylib_path: Option<PathBuf>,
    pub session: SessionOptions,
    /// On a GPU provider in a `cuda` build: letterbox and crop on the GPU.
    pub gpu_preprocess: bool,
    /// GPU sessions keep fixed batch shapes.
    pub fixed_shapes: bool,
    /// Refuse to start when the models' device memory exceeds this many bytes.
    pub gpu_memory_budget_bytes: Option<u64>,
    pub device_id: u32,
    /// One CPU inference at a time over every model (each with all its intra-op threads).
    pub exclusive_cpu_runs: bool,
    /// Frames decoded / pre- / post-processed at once.
    pub cpu_workers: usize,
    pub decode_limits: DecodeLimits,
    /// What frames in flight may take decoded, together.
    pub max_decoded_bytes: u64,
    pub default_budget: Duration,
    pub max_in_flight_per_camera: usize,
    pub max_frames_in_flight: usize,
    pub model_dir: PathBuf,
    pub pipelines: BTreeMap<String, PipelineSettings>,
    pub default_pipeline: String,
}
