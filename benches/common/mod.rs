//! What several benchmarks share.

use std::path::Path;

use linesight::engine::OrtRuntime;

/// A plain ort session with the builder options the engine uses: the "bare model" a pipeline is
/// measured against.
pub fn bare_session(runtime: &OrtRuntime, onnx: &Path, threads: usize, spinning: bool) -> ort::session::Session {
    ort::session::Session::builder(runtime.environment())
        .expect("builder")
        .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
        .expect("optimisation")
        .with_intra_threads(threads)
        .expect("threads")
        .with_inter_threads(1)
        .expect("threads")
        .with_intra_op_spinning(spinning)
        .expect("spinning")
        .commit_from_file(onnx)
        .expect("session")
}
