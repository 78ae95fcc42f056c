//! Images: decoding what clients send, letterboxing into model tensors, cropping objects for
//! embedders, drawing annotations.
//! Knows nothing about models or gRPC.

mod annotate;
mod crop;
mod decode;
#[cfg(feature = "cuda")]
pub mod gpu;
mod letterbox;
pub mod linear;
pub mod resample;

pub use annotate::{Annotation, MaskOverlay, annotate, caption, draw_path, encode_jpeg, encode_png, overlay_masks};
pub use crop::{CropBox, RowSource};
pub use decode::{DecodeError, DecodeLimits, DecodedSize, ImageEncoding, decode, decoded_size};
pub use letterbox::{Letterbox, LetterboxError, Preprocessor, TensorSpec};
