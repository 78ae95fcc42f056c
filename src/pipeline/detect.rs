//! The `detect` pipeline: the model stage (decode → letterbox → dynamic batch → ONNX Runtime),
//! then decode + NMS of the detector's outputs.

use std::sync::Arc;
use std::time::Duration;

use image::RgbImage;

use super::FrameHold;
use super::stage::{Answer, FrameDeadline, InferredFrame, ModelStage, named_views};
use super::{
    DetectSettings, FrameRequest, FrameResult, InspectError, LabeledDetection, LetterboxMode, PipelineInfo,
    StageContext, StageTimings, StartError,
};
use crate::detect::{Decoder, Thresholds};
use crate::model::ModelManifest;

/// A frame after detection, before anything a composing pipeline adds.
pub(super) struct Detected {
    pub detections: Vec<LabeledDetection>,
    /// The decoded frame.
    pub image: Arc<RgbImage>,
    /// decode, preprocess, queue_wait, inference and postprocess; the rest is the caller's.
    pub timings: StageTimings,
    pub batch_size: u32,
    /// The later stage's work announced on the CPU, until the caller drops it.
    pub later_stage: Option<super::worker::LaterStagePending>,
}

pub struct DetectPipeline {
    stage: ModelStage,
    decoder: Arc<Decoder>,
    thresholds: Thresholds,
    budget: Duration,
    /// The manifest's class names, shared with every frame's postprocessing.
    classes: Arc<[String]>,
}

impl DetectPipeline {
    pub fn start(
        name: &str,
        settings: &DetectSettings,
        mut manifest: ModelManifest,
        engine: &super::EngineSetup<'_>,
        context: Arc<StageContext>,
    ) -> Result<Self, StartError> {
        match (settings.letterbox, manifest.input.stride) {
            (Some(LetterboxMode::Full), _) => manifest.input.stride = None,
            (Some(LetterboxMode::Stride), None) => {
                return Err(StartError::LetterboxNeedsOpenInput {
                    pipeline: name.to_owned(),
                    model: manifest.name.clone(),
                    width: manifest.input.width,
                    height: manifest.input.height,
                });
            }
            _ => {}
        }
        let input = &manifest.input;
        let decoder =
            manifest.decoder.detector(manifest.classes.len(), input.width, input.height).ok_or_else(|| {
                StartError::WrongDecoder {
                    pipeline: name.to_owned(),
                    model: manifest.name.clone(),
                    expected: "a detector",
                }
            })?;
        let post = manifest.postprocess.unwrap_or_default();
        let thresholds = Thresholds {
            score: settings.score_threshold.unwrap_or(post.score_threshold),
            iou: settings.iou_threshold.unwrap_or(post.iou_threshold),
            max_detections: settings.max_detections.unwrap_or(post.max_detections),
            class_agnostic: settings.class_agnostic_nms,
        };
        let budget = settings.budget.unwrap_or(context.default_budget);
        let classes: Arc<[String]> = manifest.classes.clone().into();
        let stage = ModelStage::for_frames(name, manifest, settings.batching, settings.instances, engine, context)?;
        Ok(Self { stage, decoder: Arc::new(decoder), thresholds, budget, classes })
    }

    pub fn describe(&self) -> PipelineInfo {
        self.stage.describe(self.budget)
    }

    pub fn name(&self) -> &str {
        &self.stage.pipeline
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    pub fn classes(&self) -> &Arc<[String]> {
        &self.classes
    }

    pub(super) fn stage(&self) -> &ModelStage {
        &self.stage
    }

    pub async fn inspect(&self, request: FrameRequest, hold: &FrameHold) -> Result<FrameResult, InspectError> {
        let deadline = FrameDeadline::new(&request, self.budget);
        let Detected { detections, image, timings, batch_size, .. } =
            self.detect(&request, deadline, false, hold).await?;
        let answer = Answer { detections, image, timings, batch_size, tracking: None, cell: None, analytics: None };
        self.stage.answer(request, deadline, answer, hold).await
    }

    /// The model stage, then decode + NMS on the CPU pool, for one frame (`followed`: by a later
    /// stage, whose pending work comes back in [`Detected::later_stage`]).
    pub(super) async fn detect(
        &self,
        request: &FrameRequest,
        deadline: FrameDeadline,
        followed: bool,
        hold: &FrameHold,
    ) -> Result<Detected, InspectError> {
        let InferredFrame { mut inferred, letterbox, image, mut timings } =
            self.stage.infer_frame(request, deadline, followed, hold).await?;
        let later_stage = inferred.later_stage.take();
        let (decoder, thresholds, classes) = (self.decoder.clone(), self.thresholds, self.classes.clone());
        let batch_size = inferred.batch_frames as u32;
        let (detections, postprocess) = self
            .stage
            .on_cpu_pool(hold, move || -> Result<_, InspectError> {
                let started = std::time::Instant::now();
                let named = named_views(&inferred.outputs)?;
                let found = decoder.detect(&named, inferred.first_row, &thresholds, &letterbox)?;
                let detections = found
                    .into_iter()
                    .map(|d| LabeledDetection {
                        class_name: classes.get(d.class_id as usize).cloned().unwrap_or_default(),
                        detection: d,
                        track_id: 0,
                        shape: None,
                    })
                    .collect();
                Ok((detections, started.elapsed()))
            })
            .await??;
        timings.postprocess = postprocess;
        Ok(Detected { detections, image, timings, batch_size, later_stage })
    }
}
