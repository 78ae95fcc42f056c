//! Object detection post-processing: decoders for each output layout, class-aware NMS, and mapping
//! boxes back to the original image through the frame's own letterbox.

mod nanodet;
mod nms;
mod yolo;

use ndarray::ArrayViewD;

pub use nanodet::NanoDetDecoder;
pub use nms::{iou, nms, nms_class_aware};
pub use yolo::{Layout, YoloVersion};

use crate::imaging::Letterbox;

/// Axis-aligned box, (x1, y1) top-left, (x2, y2) bottom-right.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BBox {
    pub fn area(&self) -> f32 {
        (self.x2 - self.x1).max(0.0) * (self.y2 - self.y1).max(0.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub bbox: BBox,
    pub class_id: u32,
    pub score: f32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// A candidate needs a best-class score strictly above this.
    pub score: f32,
    /// Same-class boxes overlapping a kept box by more than this IoU are dropped.
    pub iou: f32,
    pub max_detections: usize,
    /// Boxes of any class overlapping a kept box by more than `iou` are dropped too.
    pub class_agnostic: bool,
}

/// One model output of a whole batch: [n, …].
pub type NamedOutput<'a> = (&'a str, ArrayViewD<'a, f32>);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DetectError {
    #[error("model output `{0}` is missing")]
    MissingOutput(String),
    #[error("model output `{name}` has shape {shape:?}, expected {expected}")]
    BadShape { name: String, shape: Vec<usize>, expected: String },
    #[error("frame {index} is outside a batch of {batch}")]
    FrameIndex { index: usize, batch: usize },
}

/// Decodes one family's raw outputs into candidates in model-input pixels.
#[derive(Debug, Clone)]
pub enum Decoder {
    NanoDet(NanoDetDecoder),
    Yolo(Layout),
}

impl Decoder {
    /// Candidates of frame `index` of the batch whose best-class score is above `score_threshold`.
    pub fn candidates(
        &self,
        outputs: &[NamedOutput<'_>],
        index: usize,
        score_threshold: f32,
    ) -> Result<Vec<Detection>, DetectError> {
        match self {
            Decoder::NanoDet(d) => d.candidates(outputs, index, score_threshold),
            Decoder::Yolo(layout) => layout.candidates(outputs, index, score_threshold),
        }
    }

    /// The model's output is the final boxes (an end-to-end head): no NMS after it, as in
    /// Ultralytics' own prediction.
    pub fn chooses_boxes(&self) -> bool {
        matches!(self, Decoder::Yolo(layout) if layout.end2end)
    }

    /// Candidates → NMS (unless the model chose its boxes) → boxes in original-image pixels, best first.
    pub fn detect(
        &self,
        outputs: &[NamedOutput<'_>],
        index: usize,
        thresholds: &Thresholds,
        letterbox: &Letterbox,
    ) -> Result<Vec<Detection>, DetectError> {
        let mut candidates = self.candidates(outputs, index, thresholds.score)?;
        let mut kept = if self.chooses_boxes() {
            candidates.truncate(thresholds.max_detections);
            candidates
        } else {
            nms(candidates, thresholds.iou, thresholds.max_detections, thresholds.class_agnostic)
        };
        for d in &mut kept {
            let (x1, y1) = letterbox.to_source(d.bbox.x1, d.bbox.y1);
            let (x2, y2) = letterbox.to_source(d.bbox.x2, d.bbox.y2);
            d.bbox = BBox { x1, y1, x2, y2 };
        }
        Ok(kept)
    }
}

/// The output named `name` of a batch.
pub fn find_output<'o, 'a>(outputs: &'o [NamedOutput<'a>], name: &str) -> Result<&'o ArrayViewD<'a, f32>, DetectError> {
    outputs.iter().find(|(n, _)| *n == name).map(|(_, a)| a).ok_or_else(|| DetectError::MissingOutput(name.to_owned()))
}

/// Frame `index` of a batched output as a 2-d view, checking its shape.
fn frame_2d<'o>(
    name: &str,
    array: &'o ArrayViewD<'_, f32>,
    index: usize,
    expect: (Option<usize>, Option<usize>),
    expected_text: impl FnOnce() -> String,
) -> Result<ndarray::ArrayView2<'o, f32>, DetectError> {
    let shape = array.shape().to_vec();
    let bad = || DetectError::BadShape { name: name.to_owned(), shape: shape.clone(), expected: expected_text() };
    if shape.len() != 3 {
        return Err(bad());
    }
    if expect.0.is_some_and(|d| d != shape[1]) || expect.1.is_some_and(|d| d != shape[2]) {
        return Err(bad());
    }
    if index >= shape[0] {
        return Err(DetectError::FrameIndex { index, batch: shape[0] });
    }
    array.index_axis(ndarray::Axis(0), index).into_dimensionality::<ndarray::Ix2>().map_err(|_| bad())
}
