//! linesight: camera frames over gRPC, batched into ONNX Runtime, answered within a latency budget.
//!
//! One frame's journey: `api` → `imaging::decode` → `imaging` letterbox → `batching::BatchQueue` →
//! `engine` (a model worker's session) → `detect` decode + NMS → `api` response. `pipeline` composes
//! the stages and times each one.

pub mod api;
pub mod batching;
pub mod bench;
pub mod config;
pub mod detect;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "cuda")]
pub mod gpu_check;
pub mod imaging;
pub mod pipeline;
pub mod segment;
pub mod telemetry;
pub mod track;
