//! Multi-object tracking: DeepSORT (Kalman motion, appearance cascade, IoU fallback) per camera, and
//! the registry that holds every camera's tracker.

mod appearance;
mod assignment;
mod deepsort;
pub mod kalman;
pub mod motchallenge;
mod registry;

use crate::detect::BBox;

pub use appearance::{Gallery, cosine_distance, normalized};
pub use assignment::{Assignment, CostMatrix, INFEASIBLE, min_cost_matching};
pub use deepsort::{Track, TrackStatus, Tracker};
pub use registry::{FrameOrder, Placement, Registry, RegistryStats, Ticket, TrackedFrame};

/// DeepSORT's parameters; defaults are the paper's.
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

impl Default for TrackerParams {
    fn default() -> Self {
        Self {
            max_age: 30,
            n_init: 3,
            max_iou_distance: 0.7,
            max_cosine_distance: 0.2,
            nn_budget: 100,
            gallery_update: GalleryUpdate::Consistent,
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
    /// The Kalman-filtered box.
    pub bbox: BBox,
    /// Class and score of the detection matched in this frame.
    pub class_id: u32,
    pub score: f32,
    /// Index of that detection among the frame's observations.
    pub observation: usize,
}
