//! ONNX Runtime: loading the shared library, sessions, running batches. Tensors in, tensors out;
//! nothing here knows about images or gRPC.

mod runtime;
mod session;

pub use runtime::{OrtRuntime, RuntimeError, default_library_dir, library_candidates};
pub use session::{ModelSession, SessionOptions};

use ndarray::ArrayViewD;

/// A named output tensor, still in ONNX Runtime's memory (no copy); any thread may read it.
#[derive(Debug)]
pub struct Output {
    pub name: String,
    value: ort::value::DynValue,
}

impl Output {
    /// The tensor as f32, e.g. cls_s8: [n, 2704, 80].
    pub fn view(&self) -> Result<ArrayViewD<'_, f32>, EngineError> {
        self.value
            .try_extract_array::<f32>()
            .map_err(|e| EngineError::Output { name: self.name.clone(), message: format!("not an f32 tensor: {e}") })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model {path}: {message}")]
    Load { path: std::path::PathBuf, message: String },
    #[error("model {model}: {message}")]
    Model { model: String, message: String },
    #[error("inference failed on model {model}: {message}")]
    Run { model: String, message: String },
    #[error("model output {name}: {message}")]
    Output { name: String, message: String },
}
