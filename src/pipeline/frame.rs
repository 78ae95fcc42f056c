//! A frame's request and result as the library sees them (the API maps proto ⇄ these).

use std::time::Duration;

use tokio::time::Instant;

use crate::detect::Detection;
use crate::imaging::ImageEncoding;
use crate::track::FrameOrder;

#[derive(Debug, Clone)]
pub struct FrameRequest {
    pub camera_id: String,
    pub sequence: u64,
    /// Empty = the server's default pipeline.
    pub pipeline: String,
    pub image: Option<ImageInput>,
    /// `None` = the pipeline's default budget.
    pub budget: Option<Duration>,
    pub annotate: bool,
    /// When the server received the request: the budget counts from here.
    pub received: Instant,
    /// The client's gRPC deadline, if it set one.
    pub client_deadline: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct ImageInput {
    pub data: bytes::Bytes,
    pub encoding: ImageEncoding,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LabeledDetection {
    pub detection: Detection,
    pub class_name: String,
    /// 0 = not tracked.
    pub track_id: u64,
    /// Segmentation pipelines: the instance's mask and outline in the image.
    pub shape: Option<std::sync::Arc<crate::segment::InstanceShape>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StageTimings {
    pub decode: Duration,
    pub preprocess: Duration,
    pub queue_wait: Duration,
    pub inference: Duration,
    pub postprocess: Duration,
    /// `track`: cropping every detection and embedding the crops (queue wait included).
    pub embed: Duration,
    /// `track`: waiting for the camera's earlier frames, then the tracker step.
    pub track: Duration,
    pub total: Duration,
}

/// The stages a frame's time is measured in, in the order a frame passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Decode,
    Preprocess,
    QueueWait,
    Inference,
    Postprocess,
    /// `track` only.
    Embed,
    /// `track` only.
    Track,
    Total,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Decode,
        Stage::Preprocess,
        Stage::QueueWait,
        Stage::Inference,
        Stage::Postprocess,
        Stage::Embed,
        Stage::Track,
        Stage::Total,
    ];

    /// The stage's name in metrics labels and reports.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Preprocess => "preprocess",
            Stage::QueueWait => "queue_wait",
            Stage::Inference => "inference",
            Stage::Postprocess => "postprocess",
            Stage::Embed => "embed",
            Stage::Track => "track",
            Stage::Total => "total",
        }
    }

    /// Stages only some pipeline kinds have: zero there is no measurement.
    pub fn is_optional(self) -> bool {
        matches!(self, Stage::Embed | Stage::Track)
    }
}

impl StageTimings {
    pub fn get(&self, stage: Stage) -> Duration {
        match stage {
            Stage::Decode => self.decode,
            Stage::Preprocess => self.preprocess,
            Stage::QueueWait => self.queue_wait,
            Stage::Inference => self.inference,
            Stage::Postprocess => self.postprocess,
            Stage::Embed => self.embed,
            Stage::Track => self.track,
            Stage::Total => self.total,
        }
    }

    /// Every stage with its time, in [`Stage::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Stage, Duration)> + '_ {
        Stage::ALL.into_iter().map(|stage| (stage, self.get(stage)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    WithinBudget,
    OverBudget,
    Shed,
}

impl Verdict {
    /// A served frame's verdict: within its budget, or over it.
    pub fn judge(total: std::time::Duration, budget: std::time::Duration) -> Self {
        if total <= budget { Verdict::WithinBudget } else { Verdict::OverBudget }
    }
}

#[derive(Debug, Clone)]
pub struct FrameResult {
    pub camera_id: String,
    pub sequence: u64,
    pub pipeline: String,
    pub model: String,
    pub detections: Vec<LabeledDetection>,
    pub timings: StageTimings,
    pub verdict: Verdict,
    pub annotated_jpeg: Option<Vec<u8>>,
    /// Frames in the inference batch this frame rode in.
    pub batch_size: u32,
    pub image_width: u32,
    pub image_height: u32,
    /// `track` pipelines: whether the frame was applied to its camera's tracker in order.
    pub tracking: Option<FrameOrder>,
    /// Segmentation pipelines: the image's verdict by the pipeline's rule.
    pub cell: Option<crate::segment::CellInspection>,
    /// `track` pipelines with lines or zones on the frame's camera: this frame's crossings, the
    /// camera's totals after it and its zones' occupants.
    pub analytics: Option<crate::track::FrameAnalytics>,
}

/// What `ListPipelines` reports for one pipeline.
#[derive(Debug, Clone)]
pub struct PipelineInfo {
    pub name: String,
    pub model: String,
    pub description: String,
    pub classes: Vec<String>,
    pub budget: Duration,
    pub input_width: u32,
    pub input_height: u32,
    pub max_batch: usize,
    pub max_queue_delay: Duration,
    pub max_queue_size: usize,
    /// `track` pipelines: the detect pipeline they track.
    pub detector: Option<String>,
    /// Where the model runs (after any fallback).
    pub provider: crate::engine::Provider,
    /// Tensors are made on the GPU from the decoded frame.
    pub gpu_preprocess: bool,
    /// Device memory the model's sessions took at load, when measured (`cuda` builds).
    pub device_memory_bytes: Option<u64>,
}
