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
        let run_err = |message: String| EngineError::Run { model: self.name.clone(), message };
        if self.input_element != InputElement::F32 {
            return Err(run_err("the model takes f16 input, which only the `cuda` preprocessing writes".into()));
        }
        let tensor = TensorRef::from_array_view((shape, input)).map_err(|e| run_err(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => tensor])
            .map_err(|e| EngineError::Run { model: self.name.clone(), message: e.to_string() })?;
        let result = outputs.into_iter().map(|(name, value)| Output { name: name.to_owned(), value }).collect();
        Ok(result)
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
        let result = outputs.into_iter().map(|(name, value)| Output { name: name.to_owned(), value }).collect();
        Ok(result)
    }
}
