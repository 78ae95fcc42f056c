//! ONNX Runtime: loading the shared library, sessions, running batches. Tensors in, tensors out;
//! nothing here knows about images or gRPC.

mod runtime;
mod session;

pub use runtime::{OrtRuntime, RuntimeError, default_library_dir, library_candidates};
pub use session::{ModelSession, SessionOptions};

use ndarray::ArrayD;

/// A named output tensor, copied out of ONNX Runtime.
#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    pub data: ArrayD<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model {path}: {message}")]
    Load { path: std::path::PathBuf, message: String },
    #[error("model {model}: {message}")]
    Model { model: String, message: String },
    #[error("inference failed on model {model}: {message}")]
    Run { model: String, message: String },
}
