//! Multi-object tracking: DeepSORT (Kalman motion, appearance cascade, IoU fallback) per camera, and
//! the registry that holds every camera's tracker.

pub mod analytics;
mod appearance;
mod assignment;
mod deepsort;
pub mod kalman;
pub mod motchallenge;
mod registry;

use crate::detect::BBox;

pub use analytics::{AnalyticsPlan, AnalyticsSettings, CameraAnalytics, FrameAnalytics};
pub use appearance::{Gallery, cosine_distance, normalized};
pub use assignment::{Assignment, CostMatrix, INFEASIBLE, min_cost_matching};
pub use deepsort::{Track, TrackStatus, Tracker};
pub use registry::{CameraCounts, FrameOrder, Placement, Registry, RegistryStats, Ticket, TrackedFrame};

/// The tracker's parameters. DeepSORT's own are first; the rest add ByteTrack's use of detection
/// scores and let lost tracks be found again by IoU. `TrackerParams::deep_sort()` is the paper's
/// tracker exactly; the defaults were chosen on the tuning part of `eval/mot_grid.py`'s grid
/// (docs/evaluation.md).
/// In a config file these are keys of `[pipelines.<name>.tracker]`; `linesight mot` takes the same
/// names as `--tracker key=value`. Unknown keys are rejected by the table that holds them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct TrackerParams {
    /// A confirmed track is deleted after this many frames in a row without a match.
    pub max_age: u32,
    /// Matches needed in a row before a tentative track is confirmed.
    pub n_init: u32,
    /// IoU matching accepts pairs with 1 − IoU up to this.
    pub max_iou_distance: f64,
    /// The appearance cascade accepts pairs with cosine distance (1 − similarity) up to this.
    pub max_cosine_distance: f64,
    /// Embeddings kept per track for nearest-neighbour matching.
    pub nn_budget: usize,
    /// Which matched detections' embeddings join a track's gallery.
    pub gallery_update: GalleryUpdate,
    /// Detections scoring below this are low-score: they never start a track and are matched, by
    /// IoU only, to the tracks the high-score detections left (ByteTrack's second association), so
    /// an occluded person's weak box keeps their track alive. 0 makes every detection high-score.
    pub high_score: f32,
    /// The second association accepts low-score pairs with 1 − IoU up to this.
    pub low_score_max_iou_distance: f64,
    /// Unmatched high-score detections start a track only when scoring at least this.
    pub new_track_score: f32,
    /// IoU matching also offers confirmed tracks missed for up to this many frames (their Kalman
    /// prediction), not only those missed once, so a track lost without a usable embedding can still
    /// be found where it was going. DeepSORT: 1.
    pub iou_max_age: u32,
    /// Skip the appearance embedding of a detection whose match is plain from motion: one confirmed
    /// track, seen in the previous frame, overlaps it by IoU ≥ `unambiguous_iou` and nothing else is
    /// near either of them (see `Tracker::needs_embedding`). Only callers that embed on demand (the
    /// `track` pipeline, `linesight mot` when simulating it) act on this.
    pub embed_only_ambiguous: bool,
    /// IoU a track's prediction and a detection need for their match to count as plain.
    pub unambiguous_iou: f64,
    /// A track's embedding is refreshed at least every this many frames even while its matches are
    /// plain, so its gallery follows a changing appearance.
    pub embedding_refresh_frames: u32,
    /// Which box a tracked object reports.
    pub reported_box: ReportedBox,
}

/// The box reported for a track updated in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportedBox {
    /// The matched detection's own box (as ByteTrack reports): exact where the detector is.
    Detection,
    /// The Kalman-filtered box after the update (the paper's reference code).
    Filtered,
}

/// Which embeddings join a confirmed track's gallery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GalleryUpdate {
    /// Only embeddings within `max_cosine_distance` of the gallery. A detection matched by IoU
    /// alone whose crop shows someone else (occlusion, a neighbour in the box) still updates the
    /// track's motion but cannot teach the gallery that other person's appearance, which would let
    /// the track later take that person over in the cascade.
    #[default]
    Consistent,
    /// Every matched detection's embedding, as in the paper's reference implementation.
    Every,
}

/// `TrackerParams::deep_sort()` as a `[tracker]` table: paste it into a config file (or pass
/// `linesight mot --deep-sort`) to get the paper's tracker.
pub const DEEP_SORT_SETTINGS: &str = r#"max_age = 30
n_init = 3
max_iou_distance = 0.7
max_cosine_distance = 0.2
nn_budget = 100
gallery_update = "every"
high_score = 0.0
new_track_score = 0.0
iou_max_age = 1
embed_only_ambiguous = false
reported_box = "filtered"
"#;

impl TrackerParams {
    /// The DeepSORT paper's tracker: every detection high-score and able to start a track, IoU
    /// matching only for tracks missed once, every detection embedded.
    pub fn deep_sort() -> Self {
        Self {
            max_age: 30,
            n_init: 3,
            max_iou_distance: 0.7,
            max_cosine_distance: 0.2,
            nn_budget: 100,
            gallery_update: GalleryUpdate::Every,
            high_score: 0.0,
            low_score_max_iou_distance: 0.5,
            new_track_score: 0.0,
            iou_max_age: 1,
            embed_only_ambiguous: false,
            unambiguous_iou: 0.5,
            embedding_refresh_frames: 10,
            reported_box: ReportedBox::Filtered,
        }
    }
}

impl Default for TrackerParams {
    /// The paper's tracker with the choices the tuning part of `eval/mot_grid.py` made: the
    /// consistent gallery policy, IoU matching that reaches tracks missed for up to 3 frames, the
    /// detection's own box reported, and embeddings only where the match is not plain from motion.
    fn default() -> Self {
        Self {
            gallery_update: GalleryUpdate::Consistent,
            iou_max_age: 3,
            reported_box: ReportedBox::Detection,
            embed_only_ambiguous: true,
            ..Self::deep_sort()
        }
    }
}

/// One detection offered to the tracker.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub bbox: BBox,
    pub score: f32,
    pub class_id: u32,
    /// Appearance embedding, any length; empty = none (the cascade then uses motion alone).
    pub feature: Vec<f32>,
}

/// A confirmed track updated in this frame.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedObject {
    /// Unique within its camera; never 0.
    pub track_id: u64,
    /// The Kalman-filtered box or the detection's (`TrackerParams::reported_box`).
    pub bbox: BBox,
    /// Class and score of the detection matched in this frame.
    pub class_id: u32,
    pub score: f32,
    /// Index of that detection among the frame's observations.
    pub observation: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deep_sort_settings_table_is_the_deep_sort_tracker() {
        let parsed: TrackerParams = toml::from_str(DEEP_SORT_SETTINGS).unwrap();
        assert_eq!(parsed, TrackerParams::deep_sort());
    }
}
