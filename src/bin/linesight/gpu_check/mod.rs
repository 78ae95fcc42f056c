//! `linesight gpu-check` (`cuda` feature): on an NVIDIA GPU, checks the kernels against the CPU
//! path, runs the service end to end through each provider next to the CPU baseline in the same
//! run, and prints one table (the same figures go to a JSON file).

mod bare;
mod kernels;
mod pipeline;

use std::path::PathBuf;

use serde::Serialize;

pub use crate::bench::Frames;
pub use bare::{BareRun, time_bare_runs};
pub use kernels::{KernelCheck, check_kernels};
pub use pipeline::{Variant, VariantResult, agreement, run_variant};

use linesight::config::Config;
use linesight::cuda::GpuDevice;
use linesight::engine::{ConvSearch, Provider};

pub struct GpuCheckOptions {
    pub config: Config,
    pub frame_dirs: Vec<PathBuf>,
    /// Frames timed per batch size and variant.
    pub iterations: usize,
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Agreement {
    pub variant: String,
    pub matched: usize,
    pub detections: usize,
    pub max_score_diff: f32,
    pub max_box_diff_px: f32,
    /// Tracked boxes of the `track` pipeline with the CPU's track id (same box, IoU >= 0.5).
    pub same_track_id: usize,
    pub tracked: usize,
}

#[derive(Debug, Serialize)]
pub struct GpuReport {
    pub device: String,
    pub device_memory_total_mib: f64,
    pub onnxruntime: String,
    pub kernels: Vec<KernelCheck>,
    /// The kernel checks could not run (compile or launch failed): why.
    pub kernel_error: Option<String>,
    /// The detector alone (`Session::run`, host input), per provider setting and batch size.
    pub bare: Vec<BareRun>,
    pub variants: Vec<VariantResult>,
    pub agreement_with_cpu: Vec<Agreement>,
}

impl GpuReport {
    /// Kernels exact; every GPU variant that started finds what the CPU finds (98 % of detections
    /// matched) and tracks as it does (90 % of tracked boxes with the CPU's id: embeddings differ
    /// in the last bits between providers, and a near tie in assignment can go either way).
    pub fn passed(&self) -> bool {
        self.kernel_error.is_none()
            && !self.kernels.is_empty()
            && self.kernels.iter().all(KernelCheck::passed)
            && self.agreement_with_cpu.iter().all(|a| {
                (a.detections == 0 || a.matched * 100 >= a.detections * 98)
                    && (a.tracked == 0 || a.same_track_id * 100 >= a.tracked * 90)
            })
    }
}

pub async fn run(options: GpuCheckOptions) -> Result<GpuReport, String> {
    let device = GpuDevice::open(options.config.engine.device_id).map_err(|e| e.to_string())?;
    let (_, total) = device.memory().map_err(|e| e.to_string())?;
    let runtime = linesight::engine::OrtRuntime::init(options.config.engine.ort_dylib_path.as_deref())
        .map_err(|e| e.to_string())?;
    let onnxruntime = format!("{} ({})", runtime.version, runtime.library.display());
    eprintln!("gpu-check: {} · ONNX Runtime {onnxruntime}", device.name());

    eprintln!("gpu-check: kernels against the CPU …");
    let (kernels, kernel_error) = match tokio::task::block_in_place(|| check_kernels(&device)) {
        Ok(k) => (k, None),
        Err(e) => {
            eprintln!("gpu-check: kernel checks failed to run: {e}");
            (Vec::new(), Some(e))
        }
    };

    eprintln!("gpu-check: the model alone …");
    let bare = tokio::task::block_in_place(|| time_bare_runs(&options.config, runtime));

    let frames = Frames::load(&options.frame_dirs).map_err(|e| e.to_string())?;
    let variant = |label, provider, gpu_preprocess, conv_search, fixed_shapes| Variant {
        label,
        provider,
        gpu_preprocess,
        conv_search,
        fixed_shapes,
    };
    let variants = [
        variant("cpu", Provider::Cpu, false, ConvSearch::Exhaustive, true),
        variant("cuda", Provider::Cuda, true, ConvSearch::Exhaustive, true),
        variant("cuda, CPU preprocess", Provider::Cuda, false, ConvSearch::Exhaustive, true),
        variant("cuda, heuristic", Provider::Cuda, true, ConvSearch::Heuristic, true),
        variant("cuda, dynamic shapes", Provider::Cuda, true, ConvSearch::Exhaustive, false),
        variant("tensorrt", Provider::Tensorrt, true, ConvSearch::Exhaustive, true),
    ];
    let mut results = Vec::new();
    for variant in variants {
        eprintln!("gpu-check: {} over {} frames …", variant.label, frames.jpegs.len());
        results.push(run_variant(variant, options.config.clone(), &frames, options.iterations).await);
    }
    let agreement_with_cpu = match results.first() {
        Some(cpu) if cpu.error.is_none() => results[1..]
            .iter()
            .filter(|r| r.error.is_none())
            .map(|r| {
                let (matched, detections, max_score_diff, max_box_diff_px) = agreement(&cpu.detections, &r.detections);
                let (same_track_id, tracked, _, _) = agreement(&cpu.tracks, &r.tracks);
                Agreement {
                    variant: r.variant.label.to_owned(),
                    matched,
                    detections,
                    max_score_diff,
                    max_box_diff_px,
                    same_track_id,
                    tracked,
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    let report = GpuReport {
        device: device.name(),
        device_memory_total_mib: total as f64 / f64::from(1u32 << 20),
        onnxruntime,
        kernels,
        kernel_error,
        bare,
        variants: results,
        agreement_with_cpu,
    };
    if let Some(out) = &options.out {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(out, json).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(report)
}

/// The report as the table `scripts/gpu-check.sh` prints.
// One text table, written top to bottom.
#[allow(clippy::too_many_lines)]
pub fn table(report: &GpuReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "device: {} ({:.0} MiB) · ONNX Runtime {}",
        report.device, report.device_memory_total_mib, report.onnxruntime
    );
    let _ = writeln!(
        s,
        "\n{:<32} {:>5} {:>10} {:>11} {:>10}",
        "kernel vs CPU", "rows", "elements", "max|diff|", "mismatch"
    );
    if let Some(e) = &report.kernel_error {
        let _ = writeln!(s, "kernel checks did not run: {e}");
    }
    for k in &report.kernels {
        let _ = writeln!(
            s,
            "{:<32} {:>5} {:>10} {:>11.3e} {:>10}",
            k.kernel, k.rows, k.elements, k.max_abs_diff, k.mismatches
        );
    }
    let _ = writeln!(
        s,
        "\n{:<22} Session::run at batch 1 / 2 / 4 / 5 / 8 / cycling 1-8 / cycling 1,2,4,8",
        "model alone (ms, p50)"
    );
    for b in &report.bare {
        match &b.error {
            Some(e) => {
                let short: String = e.chars().take(120).collect();
                let _ = writeln!(s, "{:<22} did not load: {short}", b.label);
            }
            None => {
                let cells: Vec<String> = b.medians_ms.iter().map(|(_, m)| format!("{m:.2}")).collect();
                let _ = writeln!(s, "{:<22} {}", b.label, cells.join(" / "));
            }
        }
    }
    let _ = writeln!(
        s,
        "\n{:<26} {:>5} {:>7} {:>15} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>6}",
        "variant (ms, p50/p99)",
        "batch",
        "formed",
        "end-to-end",
        "decode",
        "prep",
        "queue",
        "infer",
        "post",
        "fps",
        "MiB"
    );
    for v in &report.variants {
        if let Some(error) = &v.error {
            let short: String = error.chars().take(160).collect();
            let _ = writeln!(s, "{:<26} did not start: {short}", v.variant.label);
            continue;
        }
        let mib: f64 = v.device_memory_mib.iter().map(|(_, m)| m).sum::<f64>().abs();
        for l in &v.loads {
            let _ = writeln!(
                s,
                "{:<26} {:>5} {:>7.2} {:>7.2}/{:<7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>8.1} {:>6.0}",
                v.variant.label,
                l.batch,
                l.mean_batch_formed,
                l.end_to_end.p50_ms,
                l.end_to_end.p99_ms,
                l.decode.p50_ms,
                l.preprocess.p50_ms,
                l.queue_wait.p50_ms,
                l.inference.p50_ms,
                l.postprocess.p50_ms,
                l.throughput_fps,
                mib
            );
        }
    }
    let _ = writeln!(s);
    for a in &report.agreement_with_cpu {
        let _ = writeln!(
            s,
            "{} vs cpu: detections {}/{} matched (same class, IoU >= 0.5), max |dscore| {:.4}, max |dbox| {:.2} \
             px; track ids {}/{} the same",
            a.variant, a.matched, a.detections, a.max_score_diff, a.max_box_diff_px, a.same_track_id, a.tracked
        );
    }
    let _ = writeln!(s, "gpu-check: {}", if report.passed() { "PASS" } else { "FAIL" });
    s
}
