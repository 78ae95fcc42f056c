//! A model's health as its workers see it: failing after consecutive failed batches, ready again
//! after one that succeeds. Health checks and metrics read it.

use std::sync::atomic::{AtomicU32, Ordering};

/// Failed batches in a row that mark a model as failing: one bad batch is an incident, a run of
/// them means the engine no longer works.
pub const FAILURES_TO_FAIL: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    /// Configured, not yet loaded.
    Loading,
    Ready,
    /// Its last `FAILURES_TO_FAIL` or more batches failed.
    Failing,
}

impl ModelState {
    pub const ALL: [ModelState; 3] = [ModelState::Loading, ModelState::Ready, ModelState::Failing];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Loading => "loading",
            ModelState::Ready => "ready",
            ModelState::Failing => "failing",
        }
    }
}

#[derive(Debug)]
pub struct ModelHealth {
    model: String,
    consecutive_failures: AtomicU32,
}

impl ModelHealth {
    pub fn new(model: &str) -> Self {
        Self { model: model.to_owned(), consecutive_failures: AtomicU32::new(0) }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn state(&self) -> ModelState {
        if self.consecutive_failures.load(Ordering::Relaxed) >= FAILURES_TO_FAIL {
            ModelState::Failing
        } else {
            ModelState::Ready
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_marks_failing_and_one_success_clears_it() {
        let health = ModelHealth::new("m");
        for _ in 1..FAILURES_TO_FAIL {
            health.failed();
            assert_eq!(health.state(), ModelState::Ready);
        }
        health.failed();
        assert_eq!(health.state(), ModelState::Failing);
        health.succeeded();
        assert_eq!(health.state(), ModelState::Ready);
    }
}
