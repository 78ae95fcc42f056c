//! Execution providers: which hardware a session runs on. A provider that cannot load is an error
//! unless the configuration allows falling back (`ort` itself would fall back to the CPU silently).

use std::path::PathBuf;

use ort::ep::{self, ExecutionProvider, ExecutionProviderDispatch};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA provider (cuDNN, cuBLAS).
    Cuda,
    /// ONNX Runtime's TensorRT provider, with CUDA for the nodes TensorRT does not take.
    Tensorrt,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        }
    }

    /// Where inference runs on an NVIDIA GPU.
    pub fn on_gpu(self) -> bool {
        self != Provider::Cpu
    }

    /// The next provider to try when fallback is allowed: TensorRT → CUDA → CPU.
    pub fn fallback(self) -> Option<Provider> {
        match self {
            Provider::Tensorrt => Some(Provider::Cuda),
            Provider::Cuda => Some(Provider::Cpu),
            Provider::Cpu => None,
        }
    }

    /// ONNX Runtime's own name of the provider, as `GetAvailableProviders` lists it.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda => ep::CUDA::NAME,
            Provider::Tensorrt => ep::TensorRT::NAME,
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How cuDNN picks each convolution's algorithm on the CUDA provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvSearch {
    /// Benchmark every algorithm when a session's input shape changes (ONNX Runtime's default).
    /// With fixed batch shapes (`engine.gpu_batch_shapes`) that happens once, at warm-up, and
    /// picks the fastest kernels.
    #[default]
    Exhaustive,
    /// cuDNN's heuristics, no benchmarking: for `gpu_batch_shapes = "dynamic"`, where exhaustive
    /// search would re-benchmark at every change of batch size (over 300 ms for nanodet on an H200).
    Heuristic,
    /// cuDNN's default algorithm.
    Default,
}

/// TensorRT build settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRtOptions {
    pub fp16: bool,
    /// Built engines are cached here (keyed by model and GPU), so only the first start builds them.
    pub engine_cache_dir: PathBuf,
    pub workspace_bytes: usize,
}

/// The provider a deployment asked for and how strictly.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderChoice {
    pub provider: Provider,
    /// Try the next provider (TensorRT → CUDA → CPU) when one cannot load, with a warning.
    pub allow_fallback: bool,
    pub device_id: u32,
    pub conv_search: ConvSearch,
    pub tensorrt: TensorRtOptions,
}

impl Default for ProviderChoice {
    fn default() -> Self {
        Self {
            provider: Provider::Cpu,
            allow_fallback: false,
            device_id: 0,
            conv_search: ConvSearch::default(),
            tensorrt: TensorRtOptions {
                fp16: true,
                engine_cache_dir: PathBuf::from("tensorrt-cache"),
                workspace_bytes: 2 << 30,
            },
        }
    }
}

impl ProviderChoice {
    /// The providers to try, in order: the chosen one, then (with fallback) the ones after it.
    pub fn attempts(&self) -> Vec<Provider> {
        let mut out = vec![self.provider];
        if self.allow_fallback {
            while let Some(next) = out.last().and_then(|p| p.fallback()) {
                out.push(next);
            }
        }
        out
    }

    /// The `ort` registrations for `provider`, each an error if it fails (never silently the CPU).
    pub(super) fn dispatches(&self, provider: Provider) -> Vec<ExecutionProviderDispatch> {
        let device = self.device_id as i32;
        let search = match self.conv_search {
            ConvSearch::Heuristic => ep::cuda::ConvAlgorithmSearch::Heuristic,
            ConvSearch::Exhaustive => ep::cuda::ConvAlgorithmSearch::Exhaustive,
            ConvSearch::Default => ep::cuda::ConvAlgorithmSearch::Default,
        };
        let cuda =
            || ep::CUDA::default().with_device_id(device).with_conv_algorithm_search(search).build().error_on_failure();
        match provider {
            Provider::Cpu => Vec::new(),
            Provider::Cuda => vec![cuda()],
            Provider::Tensorrt => {
                let t = &self.tensorrt;
                vec![
                    ep::TensorRT::default()
                        .with_device_id(device)
                        .with_fp16(t.fp16)
                        .with_engine_cache(true)
                        .with_engine_cache_path(t.engine_cache_dir.display())
                        .with_timing_cache(true)
                        .with_timing_cache_path(t.engine_cache_dir.display())
                        .with_max_workspace_size(t.workspace_bytes)
                        .build()
                        .error_on_failure(),
                    cuda(),
                ]
            }
        }
    }
}

/// Whether the loaded ONNX Runtime library was built with `provider` at all (the PyPI `onnxruntime`
/// wheel has only the CPU provider; `onnxruntime-gpu` has CUDA and TensorRT).
pub fn provider_compiled_in(provider: Provider) -> bool {
    match provider {
        Provider::Cpu => true,
        Provider::Cuda => ep::CUDA::is_available().unwrap_or(false),
        Provider::Tensorrt => ep::TensorRT::is_available().unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_runs_tensorrt_then_cuda_then_cpu_only_when_allowed() {
        let strict = ProviderChoice { provider: Provider::Tensorrt, ..ProviderChoice::default() };
        assert_eq!(strict.attempts(), vec![Provider::Tensorrt]);
        let lenient = ProviderChoice { allow_fallback: true, ..strict };
        assert_eq!(lenient.attempts(), vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu]);
        let cuda = ProviderChoice { provider: Provider::Cuda, allow_fallback: true, ..ProviderChoice::default() };
        assert_eq!(cuda.attempts(), vec![Provider::Cuda, Provider::Cpu]);
    }

    #[test]
    fn tensorrt_registers_cuda_for_the_nodes_it_leaves() {
        let choice = ProviderChoice::default();
        let names: Vec<&str> = choice.dispatches(Provider::Tensorrt).iter().map(|d| d.name()).collect();
        assert_eq!(names, ["TensorrtExecutionProvider", "CUDAExecutionProvider"]);
        assert!(choice.dispatches(Provider::Cpu).is_empty());
    }
}
