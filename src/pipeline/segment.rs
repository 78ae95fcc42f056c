//! The `segment` pipeline (e.g. `el-defect`): the model stage, then instances — boxes, each with
//! its mask pasted into the image and outlined — and the image's cell verdict.

use std::sync::Arc;
use std::time::Duration;

use super::FrameHold;
use super::stage::{Answer, FrameDeadline, InferredFrame, ModelStage, named_views};
use super::{
    CellRuleSettings, FrameRequest, FrameResult, InspectError, LabeledDetection, PipelineInfo, SegmentSettings,
    StageContext, StartError,
};
use crate::model::{DecoderSpec, ModelManifest};
use crate::segment::{CellRule, SegmentDecoder, SegmentThresholds, judge_cell};

/// Douglas–Peucker tolerance of instance outlines, in pixels: a one-pixel staircase becomes a
/// straight edge, so outlines stay short without moving off the mask.
const POLYGON_EPSILON: f64 = 1.0;

/// How a frame's outputs become instances and a verdict; shared by every frame's postprocessing.
struct Instances {
    decoder: SegmentDecoder,
    thresholds: SegmentThresholds,
    rule: CellRule,
    classes: Vec<String>,
}

pub struct SegmentPipeline {
    stage: ModelStage,
    instances: Arc<Instances>,
    budget: Duration,
}

impl SegmentPipeline {
    pub fn start(
        name: &str,
        settings: &SegmentSettings,
        manifest: ModelManifest,
        engine: &super::EngineSetup<'_>,
        context: Arc<StageContext>,
    ) -> Result<Self, StartError> {
        let instances = Arc::new(instances_for(name, settings, &manifest)?);
        let budget = settings.budget.unwrap_or(context.default_budget);
        let stage = ModelStage::for_frames(name, manifest, settings.batching, settings.instances, engine, context)?;
        Ok(Self { stage, instances, budget })
    }

    pub fn describe(&self) -> PipelineInfo {
        self.stage.describe(self.budget)
    }

    pub(super) fn stage(&self) -> &ModelStage {
        &self.stage
    }

    pub async fn inspect(&self, request: FrameRequest, hold: &FrameHold) -> Result<FrameResult, InspectError> {
        let deadline = FrameDeadline::new(&request, self.budget);
        let InferredFrame { inferred, letterbox, image, mut timings } =
            self.stage.infer_frame(&request, deadline, false, hold).await?;
        let batch_size = inferred.batch_frames as u32;
        let instances = self.instances.clone();
        let (detections, cell, postprocess) = self
            .stage
            .on_cpu_pool(hold, move || -> Result<_, InspectError> {
                let started = std::time::Instant::now();
                let named = named_views(&inferred.outputs)?;
                let Instances { decoder, thresholds, rule, classes } = instances.as_ref();
                // The rule may count instances under the score the response shows.
                let decode_at = SegmentThresholds { score: thresholds.score.min(rule.min_score), ..*thresholds };
                let found = decoder.decode(&named, &decode_at, &letterbox)?;
                let probability = decoder.defect_probability(&named)?;
                let cell = judge_cell(&found, probability, letterbox.src_width, letterbox.src_height, rule);
                let detections: Vec<LabeledDetection> = found
                    .into_iter()
                    .filter(|i| i.detection.score >= thresholds.score)
                    .map(|i| LabeledDetection {
                        class_name: classes.get(i.detection.class_id as usize).cloned().unwrap_or_default(),
                        detection: i.detection,
                        track_id: 0,
                        shape: Some(Arc::new(i.shape)),
                    })
                    .collect();
                Ok((detections, cell, started.elapsed()))
            })
            .await??;
        timings.postprocess = postprocess;
        let answer =
            Answer { detections, image, timings, batch_size, tracking: None, cell: Some(cell), analytics: None };
        self.stage.answer(request, deadline, answer, hold).await
    }
}

/// How a pipeline's settings and its model's manifest set up the instances stage.
fn instances_for(
    pipeline: &str,
    settings: &SegmentSettings,
    manifest: &ModelManifest,
) -> Result<Instances, StartError> {
    let DecoderSpec::Maskrcnn { boxes, labels, scores, masks, defect_probability } = &manifest.decoder else {
        return Err(StartError::WrongDecoder {
            pipeline: pipeline.to_owned(),
            model: manifest.name.clone(),
            expected: "a segmenter",
        });
    };
    let post = manifest.postprocess.unwrap_or_default();
    let score = settings.score_threshold.unwrap_or(post.score_threshold);
    let rule = cell_rule(pipeline, &settings.cell_rule, manifest, score)?;
    if rule.min_defect_probability.is_some() && defect_probability.is_none() {
        return Err(StartError::CellRule {
            pipeline: pipeline.to_owned(),
            problem: format!("min_defect_probability is set, but model `{}` has no cell head", manifest.name),
        });
    }
    if !rule.count_instances && rule.min_defect_probability.is_none() {
        return Err(StartError::CellRule {
            pipeline: pipeline.to_owned(),
            problem: "count_instances = false needs min_defect_probability, or every cell is OK".into(),
        });
    }
    Ok(Instances {
        decoder: SegmentDecoder {
            boxes: boxes.clone(),
            labels: labels.clone(),
            scores: scores.clone(),
            masks: masks.clone(),
            defect_probability: defect_probability.clone(),
            num_classes: manifest.classes.len(),
        },
        thresholds: SegmentThresholds {
            score,
            iou: settings.iou_threshold.unwrap_or(post.iou_threshold),
            mask: settings.mask_threshold.unwrap_or(post.mask_threshold),
            max_instances: settings.max_detections.unwrap_or(post.max_detections),
            polygon_epsilon: POLYGON_EPSILON,
        },
        rule,
        classes: manifest.classes.clone(),
    })
}

/// The cell rule: each key from the pipeline's `cell_rule`, else the model's `[cell_rule]`, else the
/// built-in default.
fn cell_rule(
    pipeline: &str,
    settings: &CellRuleSettings,
    manifest: &ModelManifest,
    score_threshold: f32,
) -> Result<CellRule, StartError> {
    let model = manifest.cell_rule.clone().unwrap_or_default();
    let (classes, key) = match (&settings.classes, model.classes) {
        (Some(classes), _) => (classes.clone(), "cell_rule.classes"),
        (None, Some(classes)) => (classes, "the model's cell_rule.classes"),
        (None, None) => (Vec::new(), ""),
    };
    let class_id = |name: &String| {
        manifest.classes.iter().position(|c| c == name).map(|i| i as u32).ok_or_else(|| StartError::UnknownClass {
            pipeline: pipeline.to_owned(),
            key: key.into(),
            class: name.clone(),
            known: manifest.classes.clone(),
        })
    };
    Ok(CellRule {
        min_score: settings.min_score.or(model.min_score).unwrap_or(score_threshold),
        min_area_fraction: settings.min_area_fraction.or(model.min_area_fraction).unwrap_or(0.0),
        classes: classes.iter().map(class_id).collect::<Result<_, _>>()?,
        count_instances: settings.count_instances.or(model.count_instances).unwrap_or(true),
        min_defect_probability: settings.min_defect_probability.or(model.min_defect_probability),
    })
}
