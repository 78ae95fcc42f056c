//! One ONNX Runtime session, owned by one model worker (`Session::run` takes `&mut self`).

use std::path::Path;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::provider::{Provider, ProviderChoice, provider_compiled_in};
use super::{EngineError, OrtRuntime, Output};

#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Threads inside one `run` (ONNX Runtime intra-op pool).
    pub intra_threads: usize,
    /// Let idle intra-op threads spin before sleeping: a little lower latency for a lone session,
    /// but spinning pools of several sessions steal each other's cores.
    pub intra_op_spinning: bool,
    pub provider: ProviderChoice,
}

/// The element type of a model's input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputElement {
    F32,
    F16,
}

pub struct ModelSession {
    name: String,
    session: Session,
    input_name: String,
    input_element: InputElement,
    provider: Provider,
}

impl ModelSession {
    /// Loads the model on the configured provider, or on the next one when fallback is allowed.
    pub fn load(runtime: &OrtRuntime, name: &str, path: &Path, options: &SessionOptions) -> Result<Self, EngineError> {
        let attempts = options.provider.attempts();
        let mut failures = Vec::new();
        for (i, &provider) in attempts.iter().enumerate() {
            match Self::load_on(runtime, name, path, options, provider) {
                Ok(session) => {
                    if i > 0 {
                        tracing::warn!(
                            message = "Execution provider fell back.",
                            model = name,
                            wanted = %options.provider.provider,
                            running_on = %provider,
                            why = failures.join("; "),
                        );
                    }
                    return Ok(session);
                }
                Err(EngineError::Provider { message, .. }) if i + 1 < attempts.len() => {
                    failures.push(format!("{provider}: {message}"));
                }
                Err(other) => return Err(other),
            }
        }
        Err(EngineError::NoProvider { model: name.to_owned() })
    }

    fn load_on(
        runtime: &OrtRuntime,
        name: &str,
        path: &Path,
        options: &SessionOptions,
        provider: Provider,
    ) -> Result<Self, EngineError> {
        let load_err = |message: String| EngineError::Load { path: path.to_owned(), message };
        let provider_err = |message: String| EngineError::Provider {
            model: name.to_owned(),
            provider,
            message: if provider_compiled_in(provider) {
                message
            } else {
                format!(
                    "the ONNX Runtime library at {} has no {} (it is a CPU-only build; use the one from \
                     PyPI `onnxruntime-gpu` or a JetPack build): {message}",
                    runtime.library.display(),
                    provider.ort_name()
                )
            },
            fallback: options.provider.allow_fallback,
        };
        if provider == Provider::Tensorrt {
            // TensorRT writes its engine cache here; a missing folder fails the build late.
            let dir = &options.provider.tensorrt.engine_cache_dir;
            std::fs::create_dir_all(dir)
                .map_err(|e| provider_err(format!("cannot create engine cache {}: {e}", dir.display())))?;
        }
        let builder = Session::builder(runtime.environment())
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
            .map_err(|e| load_err(e.to_string()))?;
        let mut builder = builder
            .with_execution_providers(options.provider.dispatches(provider))
            .map_err(|e| provider_err(e.to_string()))?;
        let session = builder.commit_from_file(path).map_err(|e| {
            // With a GPU provider registered, a failure here is most often the provider's (CUDA
            // libraries, device); it may fall back like a failed registration.
            if provider.on_gpu() { provider_err(e.to_string()) } else { load_err(e.to_string()) }
        })?;
        let (input_name, input_element) = match session.inputs() {
            [only] => {
                let element = match only.dtype().tensor_type() {
                    Some(ort::value::TensorElementType::Float16) => InputElement::F16,
                    _ => InputElement::F32,
                };
                (only.name().to_owned(), element)
            }
            other => {
                return Err(EngineError::Inputs { model: name.to_owned(), found: other.len() });
            }
        };
        tracing::info!(message = "Model loaded.", model = name, provider = %provider);
        Ok(Self { name: name.to_owned(), session, input_name, input_element, provider })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The provider the session actually runs on (after any fallback).
    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn input_element(&self) -> InputElement {
        self.input_element
    }

    /// Runs one batch. `input` is the whole batch, row-major in `shape` (e.g. [n, 3, h, w] f32).
    pub fn run(&mut self, shape: [usize; 4], input: &[f32]) -> Result<Vec<Output>, EngineError> {
        let run_err = |e: ort::Error| EngineError::Run { model: self.name.clone(), message: e.to_string() };
        let outputs = match self.input_element {
            InputElement::F32 => {
                let tensor = TensorRef::from_array_view((shape, input)).map_err(run_err)?;
                self.session.run(ort::inputs![self.input_name.as_str() => tensor]).map_err(run_err)?
            }
            InputElement::F16 => {
                // A half-precision export with f16 inputs (as Ultralytics writes on a GPU).
                let narrowed: Vec<half::f16> = input.iter().map(|&v| half::f16::from_f32(v)).collect();
                let tensor = TensorRef::from_array_view((shape, narrowed.as_slice())).map_err(run_err)?;
                self.session.run(ort::inputs![self.input_name.as_str() => tensor]).map_err(run_err)?
            }
        };
        outputs.into_iter().map(|(name, value)| Output::new(name, value)).collect()
    }

    /// Runs one batch whose input already lies in device memory (`device_ptr`, `shape`, of the
    /// model's input element type) on GPU `device_id`: no host round trip. Outputs come back to
    /// host memory for decoding.
    ///
    /// # Safety
    /// `device_ptr` must point to at least `shape`'s product of elements of the model's input type
    /// on that device, written and synchronised before the call, and stay valid during it.
    #[cfg(feature = "cuda")]
    pub unsafe fn run_on_device(
        &mut self,
        shape: [usize; 4],
        device_ptr: u64,
        device_id: u32,
    ) -> Result<Vec<Output>, EngineError> {
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        let info =
            MemoryInfo::new(AllocationDevice::CUDA, device_id as i32, AllocatorType::Device, MemoryType::Default)
                .map_err(|e| EngineError::Run { model: self.name.clone(), message: e.to_string() })?;
        // SAFETY: as the caller guarantees.
        unsafe { self.run_bound(shape, device_ptr as usize as *mut std::ffi::c_void, info) }
    }

    /// Runs one batch whose input is the memory at `data`, described by `memory` (device or host),
    /// passed to ONNX Runtime as it lies: a CUDA-resident input feeds a CUDA session with no copy.
    /// Outputs come back in host memory. (`ort`'s `IoBinding::bind_input` would copy a borrowed
    /// tensor first, so it is not used.)
    ///
    /// # Safety
    /// `data` must point to `shape`'s product of elements of the model's input type in the memory
    /// `memory` describes, ready before the call and valid during it.
    #[cfg(feature = "cuda")]
    pub unsafe fn run_bound(
        &mut self,
        shape: [usize; 4],
        data: *mut std::ffi::c_void,
        memory: ort::memory::MemoryInfo,
    ) -> Result<Vec<Output>, EngineError> {
        use ort::value::{Shape, TensorRefMut};

        let name = self.name.clone();
        let run_err = move |e: ort::Error| EngineError::Run { model: name.clone(), message: e.to_string() };
        let dims = Shape::new(shape.map(|d| d as i64));
        let outputs = match self.input_element {
            InputElement::F32 => {
                // SAFETY: the caller guarantees the pointer, its size and element type, and its lifetime.
                let tensor = unsafe { TensorRefMut::<f32>::from_raw(memory, data, dims) }.map_err(&run_err)?;
                self.session.run(ort::inputs![self.input_name.as_str() => tensor]).map_err(&run_err)?
            }
            InputElement::F16 => {
                // SAFETY: as above.
                let tensor = unsafe { TensorRefMut::<half::f16>::from_raw(memory, data, dims) }.map_err(&run_err)?;
                self.session.run(ort::inputs![self.input_name.as_str() => tensor]).map_err(&run_err)?
            }
        };
        outputs.into_iter().map(|(name, value)| Output::new(name, value)).collect()
    }
}

/// One tensor of a model's signature: its name, element type (`f32`, `f16`, …) and shape, with
/// `-1` for a dimension the graph leaves open.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorFacts {
    pub name: String,
    pub element: String,
    pub shape: Vec<i64>,
}

/// What an ONNX file says of itself: its metadata properties and its inputs and outputs.
#[derive(Debug, Clone, Default)]
pub struct ModelFacts {
    pub metadata: std::collections::BTreeMap<String, String>,
    pub inputs: Vec<TensorFacts>,
    pub outputs: Vec<TensorFacts>,
}

/// Reads an ONNX file's metadata and signature through a throwaway CPU session (no graph
/// optimisation, so it costs little more than parsing the file).
pub fn inspect(runtime: &OrtRuntime, path: &Path) -> Result<ModelFacts, EngineError> {
    let load_err = |message: String| EngineError::Load { path: path.to_owned(), message };
    let session = Session::builder(runtime.environment())
        .map_err(|e| load_err(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(|e| load_err(e.to_string()))?
        .with_log_level(ort::logging::LogLevel::Error)
        .map_err(|e| load_err(e.to_string()))?
        .with_intra_threads(1)
        .map_err(|e| load_err(e.to_string()))?
        .commit_from_file(path)
        .map_err(|e| load_err(e.to_string()))?;
    let metadata = session.metadata().map_err(|e| load_err(e.to_string()))?;
    let mut facts = ModelFacts::default();
    for key in metadata.custom_keys().map_err(|e| load_err(e.to_string()))? {
        if let Some(value) = metadata.custom(&key) {
            facts.metadata.insert(key, value);
        }
    }
    let tensor = |outlet: &ort::value::Outlet| TensorFacts {
        name: outlet.name().to_owned(),
        element: outlet.dtype().tensor_type().map_or_else(|| "not a tensor".to_owned(), |t| element_name(t).to_owned()),
        shape: outlet.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default(),
    };
    facts.inputs = session.inputs().iter().map(tensor).collect();
    facts.outputs = session.outputs().iter().map(tensor).collect();
    Ok(facts)
}

fn element_name(element: ort::value::TensorElementType) -> &'static str {
    use ort::value::TensorElementType as T;
    match element {
        T::Float32 => "f32",
        T::Float16 => "f16",
        T::Float64 => "f64",
        T::Bfloat16 => "bf16",
        T::Uint8 => "u8",
        T::Int8 => "i8",
        T::Int32 => "i32",
        T::Int64 => "i64",
        _ => "another type",
    }
}
