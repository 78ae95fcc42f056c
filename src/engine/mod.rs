//! ONNX Runtime: loading the shared library, sessions, running batches. Tensors in, tensors out;
//! nothing here knows about images or gRPC.

mod provider;
mod runtime;
mod session;

pub use provider::{ConvSearch, Provider, ProviderChoice, TensorRtOptions, provider_compiled_in};
pub use runtime::{OrtRuntime, RuntimeError, default_library_dir, library_candidates};
pub use session::{InputElement, ModelFacts, ModelSession, SessionOptions, TensorFacts, inspect};

use ndarray::ArrayViewD;

/// A named output tensor, still in ONNX Runtime's memory (no copy) when it is f32; an f16 output
/// (a half-precision export) is widened to f32 once. Any thread may read it.
#[derive(Debug)]
pub struct Output {
    pub name: String,
    value: OutputValue,
}

#[derive(Debug)]
enum OutputValue {
    Runtime(ort::value::DynValue),
    Widened(ndarray::ArrayD<f32>),
}

impl Output {
    fn new(name: &str, value: ort::value::DynValue) -> Result<Self, EngineError> {
        let value = if value.dtype().tensor_type() == Some(ort::value::TensorElementType::Float16) {
            let half = value.try_extract_array::<half::f16>().map_err(|e| EngineError::Output {
                name: name.to_owned(),
                message: format!("not an f16 tensor: {e}"),
            })?;
            OutputValue::Widened(half.mapv(half::f16::to_f32))
        } else {
            OutputValue::Runtime(value)
        };
        Ok(Self { name: name.to_owned(), value })
    }

    /// The tensor as f32, e.g. cls_s8: [n, 2704, 80].
    pub fn view(&self) -> Result<ArrayViewD<'_, f32>, EngineError> {
        match &self.value {
            OutputValue::Runtime(value) => value.try_extract_array::<f32>().map_err(|e| EngineError::Output {
                name: self.name.clone(),
                message: format!("not an f32 tensor: {e}"),
            }),
            OutputValue::Widened(array) => Ok(array.view()),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model {path}: {message}")]
    Load { path: std::path::PathBuf, message: String },
    #[error("model {model}: no execution provider to try")]
    NoProvider { model: String },
    #[error("model {model}: expected one input, found {found}")]
    Inputs { model: String, found: usize },
    #[error("a model worker has no session")]
    NoSession,
    #[error("model {model}: cannot start its worker thread: {message}")]
    Thread { model: String, message: String },
    #[error("model {model}: {operation}: {message}")]
    Device { model: String, operation: &'static str, message: String },
    #[error(
        "execution provider `{provider}` cannot run model {model}: {message}{}",
        if *fallback { "" } else { " (set engine.allow_fallback = true to run on the next provider instead: tensorrt → cuda → cpu)" }
    )]
    Provider { model: String, provider: Provider, message: String, fallback: bool },
    #[error(transparent)]
    Memory(#[from] crate::cuda::MemoryError),
    #[error("inference failed on model {model}: {message}")]
    Run { model: String, message: String },
    #[error("model output {name}: {message}")]
    Output { name: String, message: String },
}
