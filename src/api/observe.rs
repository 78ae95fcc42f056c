//! Metrics of each answered frame: stage times, batch size, outcome, shed reason.

use crate::pipeline::{FrameResult, InspectError, ShedCause, Verdict};
use crate::telemetry::{Metrics, ModelLabels, OutcomeLabels, PipelineLabels, ReasonLabels, StageLabels};

/// Label for a frame whose pipeline does not exist (the name is the client's and unbounded).
pub const UNKNOWN_PIPELINE: &str = "(unknown)";

pub fn frame_served(metrics: &Metrics, result: &FrameResult) {
    for (stage, took) in result.timings.iter() {
        // A track stage is zero on a detect pipeline: not a measurement.
        if took.is_zero() && stage.is_optional() {
            continue;
        }
        metrics
            .stage_seconds
            .get_or_create(&StageLabels {
                pipeline: result.pipeline.clone(),
                model: result.model.clone(),
                stage: stage.name(),
            })
            .observe(took.as_secs_f64());
    }
    metrics
        .batch_size
        .get_or_create(&ModelLabels { pipeline: result.pipeline.clone(), model: result.model.clone() })
        .observe(f64::from(result.batch_size));
    let outcome = match result.verdict {
        Verdict::WithinBudget => "within_budget",
        Verdict::OverBudget => {
            metrics.frames_over_budget.get_or_create(&PipelineLabels { pipeline: result.pipeline.clone() }).inc();
            "over_budget"
        }
        Verdict::Shed => "shed",
    };
    metrics.frames.get_or_create(&OutcomeLabels { pipeline: result.pipeline.clone(), outcome }).inc();
}

/// `pipeline`: the served pipeline the frame asked for, or [`UNKNOWN_PIPELINE`].
pub fn frame_failed(metrics: &Metrics, pipeline: &str, error: &InspectError) {
    let pipeline = pipeline.to_owned();
    let reason = error.shed_cause().map(ShedCause::name);
    if let Some(reason) = reason {
        metrics.frames_shed.get_or_create(&ReasonLabels { pipeline: pipeline.clone(), reason }).inc();
    }
    let outcome = if reason.is_some() { "shed" } else { "error" };
    metrics.frames.get_or_create(&OutcomeLabels { pipeline, outcome }).inc();
}

/// A request message that did not decode: an error of no known pipeline.
pub fn message_undecodable(metrics: &Metrics) {
    metrics.frames.get_or_create(&OutcomeLabels { pipeline: UNKNOWN_PIPELINE.to_owned(), outcome: "error" }).inc();
}
