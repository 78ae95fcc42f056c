//! Instance segmentation outputs (Mask R-CNN): each instance's mask pasted into the image, its
//! outline polygons, the mask's run-length encoding, and the cell verdict of `el-defect`.

#[cfg(feature = "cuda")]
mod gpu;
mod instances;
mod paste;
mod polygon;
mod rle;
mod verdict;

#[cfg(feature = "cuda")]
pub use gpu::GpuMaskPaste;
pub use instances::{Instance, InstanceShape, SegmentDecoder, SegmentThresholds};
pub use paste::{PastedMask, paste_mask, paste_region};
pub use polygon::{Polygon, outline_polygons};
pub use rle::{decode_runs, encode_runs};
pub use verdict::{CellInspection, CellRule, judge_cell};
