//! proto ⇄ domain.

use std::time::Duration;

use tokio::time::Instant;

use super::proto;
use super::status::{code_of, code_of_undecodable, message_of};
use super::wire::UndecodableMessage;
use crate::imaging::ImageEncoding;
use crate::pipeline::{
    FrameRequest, FrameResult, ImageInput, InspectError, PipelineCounts, PipelineInfo, StageTimings, TrackingStats,
    Verdict,
};
use crate::segment::encode_runs;
use crate::track::FrameOrder;
use crate::track::analytics::{Direction, FrameAnalytics, LineTotal, ZoneCount};

pub fn frame_request(
    request: proto::InspectRequest,
    received: Instant,
    client_deadline: Option<Instant>,
) -> Result<FrameRequest, InspectError> {
    let image = match request.image {
        None => None,
        Some(image) => {
            use proto::image::Encoding;
            let encoding = match Encoding::try_from(image.encoding) {
                Ok(Encoding::Unspecified) => ImageEncoding::Sniff,
                Ok(Encoding::Jpeg) => ImageEncoding::Jpeg,
                Ok(Encoding::Png) => ImageEncoding::Png,
                Ok(Encoding::RawRgb8) => ImageEncoding::RawRgb8,
                Ok(Encoding::RawBgr8) => ImageEncoding::RawBgr8,
                Ok(Encoding::RawGray8) => ImageEncoding::RawGray8,
                Err(_) => return Err(InspectError::UnknownEncoding(image.encoding)),
            };
            Some(ImageInput { data: image.data, encoding, width: image.width, height: image.height })
        }
    };
    Ok(FrameRequest {
        camera_id: request.camera_id,
        sequence: request.sequence,
        pipeline: request.pipeline,
        image,
        budget: (request.budget_ms > 0).then(|| Duration::from_millis(u64::from(request.budget_ms))),
        annotate: request.annotate,
        received,
        client_deadline,
    })
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

fn timings(t: &StageTimings) -> proto::StageTimings {
    proto::StageTimings {
        decode_us: micros(t.decode),
        preprocess_us: micros(t.preprocess),
        queue_wait_us: micros(t.queue_wait),
        inference_us: micros(t.inference),
        postprocess_us: micros(t.postprocess),
        total_us: micros(t.total),
        embed_us: micros(t.embed),
        track_us: micros(t.track),
    }
}

fn verdict(v: Verdict) -> proto::Verdict {
    match v {
        Verdict::WithinBudget => proto::Verdict::WithinBudget,
        Verdict::OverBudget => proto::Verdict::OverBudget,
        Verdict::Shed => proto::Verdict::Shed,
    }
}

fn tracking(order: Option<FrameOrder>) -> (proto::Tracking, u64) {
    match order {
        None => (proto::Tracking::Unspecified, 0),
        Some(FrameOrder::Applied) => (proto::Tracking::Applied, 0),
        Some(FrameOrder::Late { last_applied }) => (proto::Tracking::Late, last_applied),
        Some(FrameOrder::Duplicate) => (proto::Tracking::Duplicate, 0),
    }
}

fn fraction(part: u64, whole: u64) -> f32 {
    if whole == 0 { 0.0 } else { (part as f64 / whole as f64) as f32 }
}

pub fn inspect_response(result: FrameResult) -> proto::InspectResponse {
    let (tracking, last_applied_sequence) = tracking(result.tracking);
    let image_pixels = u64::from(result.image_width) * u64::from(result.image_height);
    proto::InspectResponse {
        tracking: tracking as i32,
        last_applied_sequence,
        camera_id: result.camera_id,
        sequence: result.sequence,
        detections: result
            .detections
            .into_iter()
            .map(|d| proto::Detection {
                r#box: Some(proto::Box {
                    x1: d.detection.bbox.x1,
                    y1: d.detection.bbox.y1,
                    x2: d.detection.bbox.x2,
                    y2: d.detection.bbox.y2,
                }),
                class_id: d.detection.class_id,
                class_name: d.class_name,
                score: d.detection.score,
                track_id: d.track_id,
                mask: d.shape.as_ref().map(|s| proto::Mask {
                    left: s.mask.left,
                    top: s.mask.top,
                    width: s.mask.width,
                    height: s.mask.height,
                    runs: encode_runs(&s.mask.pixels),
                }),
                polygons: d.shape.as_ref().map_or_else(Vec::new, |s| {
                    s.polygons
                        .iter()
                        .map(|p| proto::Polygon {
                            points: p.points.iter().map(|&[x, y]| proto::Point { x, y }).collect(),
                        })
                        .collect()
                }),
                area_fraction: d.shape.as_ref().map_or(0.0, |s| fraction(u64::from(s.area), image_pixels)),
            })
            .collect(),
        cell: result.cell.map(|c| proto::Cell {
            verdict: if c.defective { proto::CellVerdict::Defective } else { proto::CellVerdict::Ok } as i32,
            defect_area_fraction: c.defect_area_fraction,
            defects_counted: c.counted,
            defect_probability: c.defect_probability,
        }),
        timings: Some(timings(&result.timings)),
        verdict: verdict(result.verdict) as i32,
        annotated_jpeg: result.annotated_jpeg.unwrap_or_default(),
        error: None,
        pipeline: result.pipeline,
        model: result.model,
        batch_size: result.batch_size,
        image_width: result.image_width,
        image_height: result.image_height,
        analytics: result.analytics.map(line_analytics),
    }
}

fn line_analytics(a: FrameAnalytics) -> proto::LineAnalytics {
    proto::LineAnalytics {
        crossings: a
            .crossings
            .into_iter()
            .map(|c| proto::LineCrossing {
                line: c.line,
                track_id: c.track_id,
                class_id: c.class_id,
                class_name: c.class_name,
                direction: match c.direction {
                    Direction::Forward => proto::CrossingDirection::Forward,
                    Direction::Backward => proto::CrossingDirection::Backward,
                } as i32,
            })
            .collect(),
        line_totals: a.totals.into_iter().map(line_count).collect(),
        zones: a.zones.into_iter().map(zone_count).collect(),
    }
}

fn line_count(t: LineTotal) -> proto::LineCount {
    proto::LineCount {
        line: t.line,
        class_id: t.class_id,
        class_name: t.class_name,
        forward: t.forward,
        backward: t.backward,
    }
}

fn zone_count(z: ZoneCount) -> proto::ZoneCount {
    proto::ZoneCount { zone: z.zone, class_id: z.class_id, class_name: z.class_name, objects: z.objects }
}

/// Every camera's counts, pipeline by pipeline.
pub fn line_counts(pipelines: Vec<PipelineCounts>) -> proto::LineCountsResponse {
    proto::LineCountsResponse {
        cameras: pipelines
            .into_iter()
            .flat_map(|p| {
                let pipeline = p.pipeline;
                p.cameras.into_iter().map(move |c| proto::CameraLineCounts {
                    pipeline: pipeline.clone(),
                    camera_id: c.camera_id,
                    lines: c.lines.into_iter().map(line_count).collect(),
                    zones: c.zones.into_iter().map(zone_count).collect(),
                })
            })
            .collect(),
    }
}

/// A frame that failed inside a stream: answered in its own response so the stream goes on.
pub fn error_response(
    camera_id: String,
    sequence: u64,
    pipeline: String,
    error: &InspectError,
    total: Duration,
) -> proto::InspectResponse {
    proto::InspectResponse {
        camera_id,
        sequence,
        timings: Some(proto::StageTimings { total_us: micros(total), ..Default::default() }),
        verdict: if error.is_shed() { proto::Verdict::Shed } else { proto::Verdict::Unspecified } as i32,
        error: Some(proto::FrameError { code: code_of(error) as i32, message: message_of(error) }),
        pipeline,
        ..Default::default()
    }
}

/// A stream's message that did not decode, answered in its place in the order. Its camera_id and
/// sequence are unknown: the response carries an empty camera_id, sequence 0 and no pipeline.
pub fn undecodable_response(error: &UndecodableMessage, total: Duration) -> proto::InspectResponse {
    proto::InspectResponse {
        timings: Some(proto::StageTimings { total_us: micros(total), ..Default::default() }),
        error: Some(proto::FrameError { code: code_of_undecodable(error) as i32, message: message_of(error) }),
        ..Default::default()
    }
}

pub fn pipeline_info(info: PipelineInfo) -> proto::PipelineInfo {
    proto::PipelineInfo {
        name: info.name,
        model: info.model,
        classes: info.classes,
        budget_ms: info.budget.as_millis().min(u128::from(u32::MAX)) as u32,
        input_width: info.input_width,
        input_height: info.input_height,
        max_batch: info.max_batch as u32,
        max_queue_delay_us: micros(info.max_queue_delay),
        max_queue_size: info.max_queue_size as u32,
        description: info.description,
        detector: info.detector.unwrap_or_default(),
        execution_provider: info.provider.name().to_owned(),
        gpu_preprocess: info.gpu_preprocess,
        device_memory_bytes: info.device_memory_bytes.unwrap_or(0),
    }
}

pub fn pipeline_tracking(t: TrackingStats) -> proto::PipelineTracking {
    let s = t.stats;
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    proto::PipelineTracking {
        pipeline: t.pipeline,
        active_cameras: count(s.cameras),
        confirmed_tracks: count(s.confirmed_tracks),
        tentative_tracks: count(s.tentative_tracks),
        frames_in_flight: count(s.frames_in_flight),
        cameras_evicted: s.cameras_evicted,
        frames_late: s.frames_late,
        frames_duplicate: s.frames_duplicate,
    }
}
