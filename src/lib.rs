//! linesight: camera frames over gRPC, batched into ONNX Runtime, answered within a latency budget.
//!
//! One frame's journey: `api` → `imaging::decode` → `imaging` letterbox → `batching::BatchQueue` →
//! `engine` (a model worker's session) → `detect` decode + NMS → `api` response. `pipeline` composes
//! the stages and times each one.

pub mod api;
pub mod batching;
pub mod config;
pub mod cuda;
pub mod detect;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod imaging;
#[cfg(test)]
mod layers;
pub mod model;
pub mod pipeline;
pub mod segment;
pub mod telemetry;
pub mod track;
