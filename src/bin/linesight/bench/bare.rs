//! The model alone: `Session::run` on a real preprocessed frame with the server's own session
//! settings, no service around it. Next to the service's end-to-end latency it gives the overhead.

use std::time::Instant;

use serde::Serialize;

use super::BenchError;
use linesight::config::Config;
use linesight::engine::{ModelSession, OrtRuntime, SessionOptions};
use linesight::imaging::{self, DecodeLimits, ImageEncoding, Preprocessor};
use linesight::pipeline::tensor_spec;

#[derive(Debug, Clone, Serialize)]
pub struct BareTiming {
    pub model: String,
    pub batch: usize,
    pub runs: usize,
    /// Runs started this far apart (the load's frame interval), or back to back when `None`. An
    /// idle gap matters: on the 2-core development VM a run after 75 ms idle takes ~30 % longer than
    /// back to back, in Python onnxruntime as well, so the overhead ratio compares like with like.
    pub paced_ms: Option<f64>,
    pub median_ms: f64,
}

/// Median of `runs` calls of `model`'s `Session::run` at `batch`, each batch made of `jpeg`
/// letterboxed as the service does it; with `pace`, each call starts `pace` after the previous one.
pub fn time_model(
    config: &Config,
    model: &str,
    jpeg: &[u8],
    batch: usize,
    runs: usize,
    pace: Option<std::time::Duration>,
) -> Result<BareTiming, BenchError> {
    let bare_error = |message: String| BenchError::Bare { model: model.to_owned(), message };
    let runtime = OrtRuntime::init(config.engine.ort_dylib_path.as_deref()).map_err(|e| bare_error(e.to_string()))?;
    let manifest = linesight::pipeline::resolve_manifest(runtime, &config.resolved_model_dir(), model)
        .map_err(|e| bare_error(e.to_string()))?;
    let options = SessionOptions {
        intra_threads: config.engine.intra_threads,
        intra_op_spinning: config.engine.intra_op_spinning,
        provider: config.engine.provider_choice(),
    };
    let mut session =
        ModelSession::load(runtime, model, &manifest.onnx_path(), &options).map_err(|e| bare_error(e.to_string()))?;
    let limits = DecodeLimits { max_pixels: 40_000_000, max_side: 16_384 };
    let image = imaging::decode(jpeg, ImageEncoding::Sniff, 0, 0, limits).map_err(|e| bare_error(e.to_string()))?;
    let spec = tensor_spec(&manifest.input);
    let mut one = vec![0f32; spec.len()];
    Preprocessor::new().letterbox_into(&image, &spec, &mut one).map_err(|e| bare_error(e.to_string()))?;
    let input: Vec<f32> = one.iter().copied().cycle().take(one.len() * batch).collect();
    let shape = [batch, 3, spec.height as usize, spec.width as usize];
    // Warm-up: first runs allocate and plan.
    for _ in 0..3 {
        session.run(shape, &input).map_err(|e| bare_error(e.to_string()))?;
    }
    let mut times = Vec::with_capacity(runs);
    let mut next = Instant::now();
    for _ in 0..runs.max(1) {
        if let Some(pace) = pace {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += pace;
        }
        let started = Instant::now();
        session.run(shape, &input).map_err(|e| bare_error(e.to_string()))?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(BareTiming {
        model: model.to_owned(),
        batch,
        runs: times.len(),
        paced_ms: pace.map(|p| p.as_secs_f64() * 1e3),
        median_ms: times[times.len() / 2],
    })
}
