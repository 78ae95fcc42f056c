//! One ONNX Runtime session, owned by one model worker (`Session::run` takes `&mut self`).

use std::path::Path;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::{EngineError, OrtRuntime, Output};

#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Threads inside one `run` (ONNX Runtime intra-op pool).
    pub intra_threads: usize,
    /// Let idle intra-op threads spin before sleeping: a little lower latency for a lone session,
    /// but spinning pools of several sessions steal each other's cores.
    pub intra_op_spinning: bool,
}

pub struct ModelSession {
    name: String,
    session: Session,
    input_name: String,
}

impl ModelSession {
    pub fn load(runtime: &OrtRuntime, name: &str, path: &Path, options: SessionOptions) -> Result<Self, EngineError> {
        let load_err = |message: String| EngineError::Load { path: path.to_owned(), message };
        let session = Session::builder(runtime.environment())
            .map_err(|e| load_err(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| load_err(e.to_string()))?
            .with_log_level(ort::logging::LogLevel::Error)
            .map_err(|e| load_err(e.to_string()))?
            .with_intra_threads(options.intra_threads)
            .map_err(|e| load_err(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| load_err(e.to_string()))?
            .with_intra_op_spinning(options.intra_op_spinning)
            .map_err(|e| load_err(e.to_string()))?
            .commit_from_file(path)
            .map_err(|e| load_err(e.to_string()))?;
        let input_name = match session.inputs() {
            [only] => only.name().to_owned(),
            other => {
                return Err(EngineError::Model {
                    model: name.to_owned(),
                    message: format!("expected one input, found {}", other.len()),
                });
            }
        };
        Ok(Self { name: name.to_owned(), session, input_name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs one batch. `input` is the whole batch, row-major in `shape` (e.g. [n, 3, h, w] f32).
    pub fn run(&mut self, shape: [usize; 4], input: &[f32]) -> Result<Vec<Output>, EngineError> {
        let run_err = |message: String| EngineError::Run { model: self.name.clone(), message };
        let tensor = TensorRef::from_array_view((shape, input)).map_err(|e| run_err(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => tensor])
            .map_err(|e| EngineError::Run { model: self.name.clone(), message: e.to_string() })?;
        let result = outputs.into_iter().map(|(name, value)| Output { name: name.to_owned(), value }).collect();
        Ok(result)
    }
}
