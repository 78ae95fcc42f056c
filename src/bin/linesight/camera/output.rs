//! Where answers go: one JSON line per answered frame, and annotated JPEGs.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use linesight::api::proto::{self, InspectResponse};
use parking_lot::Mutex;
use serde::Serialize;

/// The JSON-lines sink shared by all cameras: each line is written whole and flushed, so that a
/// reader following the file sees complete answers as they come.
pub struct AnswerLog {
    out: Mutex<Box<dyn Write + Send>>,
}

impl AnswerLog {
    /// `-` is standard output; anything else a file, created anew.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?)
        };
        Ok(Self { out: Mutex::new(out) })
    }

    pub fn write(&self, line: &AnswerLine<'_>) {
        let mut text = match serde_json::to_vec(line) {
            Ok(text) => text,
            Err(error) => {
                tracing::warn!(message = "Answer not written.", %error);
                return;
            }
        };
        text.push(b'\n');
        let mut out = self.out.lock();
        if let Err(error) = out.write_all(&text).and_then(|()| out.flush()) {
            tracing::warn!(message = "Answer not written.", %error);
        }
    }
}

/// One answered frame.
#[derive(Serialize)]
pub struct AnswerLine<'a> {
    pub camera_id: &'a str,
    pub sequence: u64,
    pub captured_unix_ms: u64,
    /// When the bridge sent the frame (Unix milliseconds).
    pub sent_unix_ms: u64,
    /// From capture to answer, in the bridge.
    pub latency_ms: f64,
    pub verdict: &'static str,
    pub pipeline: &'a str,
    pub model: &'a str,
    /// The server's own time for the frame.
    pub server_ms: f64,
    pub width: u32,
    pub height: u32,
    pub detections: Vec<DetectionLine<'a>>,
    /// `track` pipelines: `applied`, or why the frame was not tracked (`late`, `duplicate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell: Option<CellLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotated: Option<String>,
}

#[derive(Serialize)]
pub struct DetectionLine<'a> {
    pub class: &'a str,
    pub class_id: u32,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// 0 when the pipeline does not track.
    pub track_id: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub polygons: Vec<Vec<[u32; 2]>>,
}

#[derive(Serialize)]
pub struct CellLine {
    pub defective: bool,
    pub defect_area_fraction: f32,
    pub defects_counted: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defect_probability: Option<f32>,
}

#[derive(Serialize)]
pub struct ErrorLine<'a> {
    pub code: i32,
    pub message: &'a str,
}

/// The verdict as the JSON lines name it.
pub fn verdict_name(response: &InspectResponse) -> &'static str {
    if response.error.is_some() {
        return "error";
    }
    match proto::Verdict::try_from(response.verdict) {
        Ok(proto::Verdict::WithinBudget) => "within_budget",
        Ok(proto::Verdict::OverBudget) => "over_budget",
        Ok(proto::Verdict::Shed) => "shed",
        _ => "unspecified",
    }
}

impl<'a> AnswerLine<'a> {
    pub fn of(
        response: &'a InspectResponse,
        captured_unix_ms: u64,
        sent_unix_ms: u64,
        latency_ms: f64,
        annotated: Option<String>,
    ) -> Self {
        let detections = response
            .detections
            .iter()
            .map(|d| DetectionLine {
                class: &d.class_name,
                class_id: d.class_id,
                score: d.score,
                bbox: d.r#box.as_ref().map_or([0.0; 4], |b| [b.x1, b.y1, b.x2, b.y2]),
                track_id: d.track_id,
                polygons: d.polygons.iter().map(|p| p.points.iter().map(|pt| [pt.x, pt.y]).collect()).collect(),
            })
            .collect();
        Self {
            camera_id: &response.camera_id,
            sequence: response.sequence,
            captured_unix_ms,
            sent_unix_ms,
            latency_ms,
            verdict: verdict_name(response),
            pipeline: &response.pipeline,
            model: &response.model,
            server_ms: response.timings.as_ref().map_or(0.0, |t| t.total_us as f64 / 1000.0),
            width: response.image_width,
            height: response.image_height,
            detections,
            tracking: match proto::Tracking::try_from(response.tracking) {
                Ok(proto::Tracking::Applied) => Some("applied"),
                Ok(proto::Tracking::Late) => Some("late"),
                Ok(proto::Tracking::Duplicate) => Some("duplicate"),
                _ => None,
            },
            cell: response.cell.as_ref().map(|cell| CellLine {
                defective: cell.verdict == proto::CellVerdict::Defective as i32,
                defect_area_fraction: cell.defect_area_fraction,
                defects_counted: cell.defects_counted,
                defect_probability: cell.defect_probability,
            }),
            error: response.error.as_ref().map(|e| ErrorLine { code: e.code, message: &e.message }),
            annotated,
        }
    }
}

/// `<dir>/<camera_id>/<sequence>.jpg`, with the camera id made safe for a file name.
pub fn annotated_path(dir: &Path, camera_id: &str, sequence: u64) -> PathBuf {
    let mut safe: String = camera_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    // `.` and `..` (and hidden names) would not be a folder of the camera's own.
    if safe.is_empty() || safe.starts_with('.') {
        safe.insert(0, '_');
    }
    dir.join(safe).join(format!("{sequence:020}.jpg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_becomes_one_json_line_with_its_detections() {
        let response = InspectResponse {
            camera_id: "line-3".into(),
            sequence: 12,
            verdict: proto::Verdict::OverBudget as i32,
            pipeline: "track".into(),
            detections: vec![proto::Detection {
                r#box: Some(proto::Box { x1: 1.0, y1: 2.0, x2: 3.0, y2: 4.0 }),
                class_name: "person".into(),
                score: 0.5,
                track_id: 7,
                ..Default::default()
            }],
            timings: Some(proto::StageTimings { total_us: 41_500, ..Default::default() }),
            ..Default::default()
        };
        let line =
            serde_json::to_value(AnswerLine::of(&response, 1_700_000_000_000, 1_700_000_000_020, 52.5, None)).unwrap();
        assert_eq!(line["verdict"], "over_budget");
        assert_eq!(line["server_ms"], 41.5);
        assert_eq!(line["detections"][0]["box"], serde_json::json!([1.0, 2.0, 3.0, 4.0]));
        assert_eq!(line["detections"][0]["track_id"], 7);
        assert!(line.get("error").is_none() && line["detections"][0].get("polygons").is_none());
    }

    #[test]
    fn a_camera_id_cannot_climb_out_of_the_annotation_folder() {
        let path = annotated_path(Path::new("/out"), "../../etc/cam 1", 5);
        assert_eq!(path, Path::new("/out/_.._.._etc_cam_1/00000000000000000005.jpg"));
        assert_eq!(annotated_path(Path::new("/out"), "..", 1).parent(), Some(Path::new("/out/_..")));
    }
}
