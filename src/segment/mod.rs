//! Instance-segmentation outputs: pasting a Mask R-CNN's fixed-size mask into its box in the image.

mod paste;

pub use paste::{PastedMask, paste_mask, paste_region};
