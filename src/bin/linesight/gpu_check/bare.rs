//! The model alone: `Session::run` on a host tensor at each batch size, per provider setting, with
//! no service around it. Next to the service's figures it gives the service's overhead.

use std::time::Instant;

use serde::Serialize;

use linesight::config::Config;
use linesight::engine::{ConvSearch, ModelSession, OrtRuntime, Provider, SessionOptions};

#[derive(Debug, Clone, Serialize)]
pub struct BareRun {
    pub label: String,
    /// (batch size, median ms per `run`) at each fixed size, then (0, median) cycling through
    /// every size 1–8, then (0, median) cycling through 1, 2, 4, 8; or why the session did not load.
    pub medians_ms: Vec<(usize, f64)>,
    pub error: Option<String>,
}

const BATCHES: [usize; 5] = [1, 2, 4, 5, 8];
const REPEATS: usize = 40;

/// Times the `detect` pipeline's model on each (label, provider, conv search).
pub fn time_bare_runs(config: &Config, runtime: &OrtRuntime) -> Vec<BareRun> {
    let model = config.pipelines.get("detect").map(|p| p.model().to_owned()).unwrap_or_default();
    let settings = [
        ("cpu", Provider::Cpu, ConvSearch::Heuristic),
        ("cuda, heuristic", Provider::Cuda, ConvSearch::Heuristic),
        ("cuda, exhaustive", Provider::Cuda, ConvSearch::Exhaustive),
        ("cuda, default", Provider::Cuda, ConvSearch::Default),
    ];
    settings
        .iter()
        .map(|&(label, provider, conv_search)| {
            let mut options = SessionOptions {
                intra_threads: config.engine.intra_threads,
                intra_op_spinning: false,
                provider: config.engine.provider_choice(),
            };
            options.provider.provider = provider;
            options.provider.allow_fallback = false;
            options.provider.conv_search = conv_search;
            match time_one(config, runtime, &model, &options) {
                Ok(medians_ms) => BareRun { label: label.into(), medians_ms, error: None },
                Err(e) => BareRun { label: label.into(), medians_ms: Vec::new(), error: Some(e) },
            }
        })
        .collect()
}

fn time_one(
    config: &Config,
    runtime: &OrtRuntime,
    model: &str,
    options: &SessionOptions,
) -> Result<Vec<(usize, f64)>, String> {
    let manifest = linesight::pipeline::resolve_manifest(runtime, &config.resolved_model_dir(), model)
        .map_err(|e| e.to_string())?;
    let mut session = ModelSession::load(runtime, model, &manifest.onnx_path(), options).map_err(|e| e.to_string())?;
    let (h, w) = (manifest.input.height as usize, manifest.input.width as usize);
    // Not zeros: a smooth pattern in the normalised range.
    let input: Vec<f32> = (0..8 * 3 * h * w).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect();
    let mut median_of = |sizes: &[usize]| -> Result<f64, String> {
        for &n in sizes.iter().take(3) {
            session.run([n, 3, h, w], &input[..n * 3 * h * w]).map_err(|e| e.to_string())?;
        }
        let mut times: Vec<f64> = (0..REPEATS)
            .map(|i| {
                let n = sizes[i % sizes.len()];
                let t = Instant::now();
                session.run([n, 3, h, w], &input[..n * 3 * h * w]).map(|_| t.elapsed().as_secs_f64() * 1000.0)
            })
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    };
    let mut out = Vec::new();
    for n in BATCHES {
        out.push((n, median_of(&[n])?));
    }
    // Batch sizes as a busy service forms them: one after another, all different.
    out.push((0, median_of(&[3, 8, 1, 6, 2, 5, 7, 4])?));
    // Only power-of-two sizes.
    out.push((0, median_of(&[4, 8, 1, 2, 8, 1, 4, 2])?));
    Ok(out)
}
