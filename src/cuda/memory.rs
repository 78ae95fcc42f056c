//! The device-memory ledger: what each model took on the GPU, against the configured budget. Built
//! in every build, so that a CPU-only build can refuse a budget it cannot measure.

#[derive(Debug, Clone, thiserror::Error)]
pub enum MemoryError {
    #[error(
        "model {model} would exceed the GPU memory budget: the models take {total_mib} MiB ({by_model}), \
         engine.gpu_memory_budget_mib is {budget_mib}"
    )]
    OverBudget { model: String, total_mib: u64, budget_mib: u64, by_model: String },
    #[error(
        "model {model}: engine.gpu_memory_budget_mib needs a build with the `cuda` feature, which measures device memory"
    )]
    BudgetNeedsCuda { model: String },
    #[error(
        "model {model} runs on the GPU but its device memory cannot be measured, so engine.gpu_memory_budget_mib \
         cannot be enforced"
    )]
    Unmeasured { model: String },
    #[error("model {model}: measuring device memory: {message}")]
    Measure { model: String, message: String },
}

/// Device memory the models take, measured around each model's load, against the configured
/// budget. The measure is the device's used memory before and after (any other process's
/// allocations in between count too), so models are loaded one at a time.
pub struct DeviceMemory {
    budget: Option<u64>,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    device_id: u32,
    #[cfg(feature = "cuda")]
    device: std::sync::OnceLock<Result<super::GpuDevice, String>>,
    taken: std::sync::Mutex<Vec<(String, u64)>>,
}

/// A measurement in progress: the device's used bytes before a model loaded.
pub struct Measuring {
    before: Option<u64>,
}

impl DeviceMemory {
    pub fn new(budget_bytes: Option<u64>, device_id: u32) -> Self {
        Self {
            budget: budget_bytes,
            device_id,
            #[cfg(feature = "cuda")]
            device: std::sync::OnceLock::new(),
            taken: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Every measured model and the bytes it took.
    pub fn taken(&self) -> Vec<(String, u64)> {
        self.taken.lock().map(|t| t.clone()).unwrap_or_default()
    }

    #[cfg(feature = "cuda")]
    fn used_bytes(&self, model: &str) -> Result<u64, MemoryError> {
        let device = self.device.get_or_init(|| super::GpuDevice::open(self.device_id).map_err(|e| e.to_string()));
        let device_err = |message: String| MemoryError::Measure { model: model.to_owned(), message };
        let device = device.as_ref().map_err(|e| device_err(e.clone()))?;
        device.used_bytes().map_err(|e| device_err(e.to_string()))
    }

    /// Takes the device's used memory before a model loads, if it loads on the GPU.
    pub fn start_measuring(&self, model: &str, on_gpu: bool) -> Result<Measuring, MemoryError> {
        if !on_gpu {
            return Ok(Measuring { before: None });
        }
        #[cfg(feature = "cuda")]
        {
            // No device (the provider may yet fall back to the CPU): nothing to measure.
            Ok(Measuring { before: self.used_bytes(model).ok() })
        }
        #[cfg(not(feature = "cuda"))]
        {
            if self.budget.is_some() {
                return Err(MemoryError::BudgetNeedsCuda { model: model.to_owned() });
            }
            Ok(Measuring { before: None })
        }
    }

    /// Records what the model took, if its sessions ended up on the GPU, and
    /// refuses it if the models together exceed the budget.
    pub fn finish_measuring(
        &self,
        model: &str,
        measuring: Measuring,
        running_on_gpu: bool,
    ) -> Result<Option<u64>, MemoryError> {
        if !running_on_gpu {
            return Ok(None);
        }
        let Some(_before) = measuring.before else {
            if self.budget.is_some() {
                return Err(MemoryError::Unmeasured { model: model.to_owned() });
            }
            return Ok(None);
        };
        #[cfg(feature = "cuda")]
        {
            let took = self.used_bytes(model)?.saturating_sub(_before);
            self.record(model, took).map(Some)
        }
        #[cfg(not(feature = "cuda"))]
        {
            Ok(None)
        }
    }

    /// Adds what `model` took to the ledger; an error when the models together exceed the budget.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn record(&self, model: &str, took: u64) -> Result<u64, MemoryError> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        taken.push((model.to_owned(), took));
        let total: u64 = taken.iter().map(|(_, b)| b).sum();
        tracing::info!(
            message = "Model loaded on the GPU.",
            model,
            device_memory_mib = took >> 20,
            all_models_mib = total >> 20
        );
        match self.budget {
            Some(budget) if total > budget => {
                let by_model = taken.iter().map(|(m, b)| format!("{m} {} MiB", b >> 20)).collect::<Vec<_>>().join(", ");
                Err(MemoryError::OverBudget {
                    model: model.to_owned(),
                    total_mib: total >> 20,
                    budget_mib: budget >> 20,
                    by_model,
                })
            }
            _ => Ok(took),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_past_the_memory_budget_are_refused_with_every_models_share() {
        let ledger = DeviceMemory::new(Some(1000 << 20), 0);
        assert_eq!(ledger.record("nanodet-g", 432 << 20).ok(), Some(432 << 20));
        let err = ledger.record("mobilenetv2-reid", 1906 << 20).expect_err("over budget");
        let text = err.to_string();
        assert!(text.contains("would exceed the GPU memory budget"), "{text}");
        assert!(text.contains("2338 MiB") && text.contains("nanodet-g 432 MiB"), "{text}");
        assert!(text.contains("mobilenetv2-reid 1906 MiB") && text.contains("is 1000"), "{text}");
        // No budget: recorded, never refused.
        let unbounded = DeviceMemory::new(None, 0);
        assert!(unbounded.record("big", 1 << 40).is_ok());
        assert_eq!(unbounded.taken(), vec![("big".to_owned(), 1u64 << 40)]);
    }
}
