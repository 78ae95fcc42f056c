//! What every service of the server shares: the pipelines (once loaded), the metrics and the
//! shutdown signal.

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

use crate::pipeline::{InspectError, ModelState, Pipelines};
use crate::telemetry::{Metrics, ModelStateLabels, PipelineLabels};

pub struct ServerState {
    pipelines: OnceLock<Arc<Pipelines>>,
    /// Models the config names, reported as loading until the pipelines are up.
    configured_models: Vec<String>,
    pub metrics: Arc<Metrics>,
    shutting_down: watch::Sender<bool>,
}

impl ServerState {
    pub fn new(configured_models: Vec<String>, metrics: Arc<Metrics>) -> Self {
        Self { pipelines: OnceLock::new(), configured_models, metrics, shutting_down: watch::Sender::new(false) }
    }

    pub fn set_pipelines(&self, pipelines: Arc<Pipelines>) {
        let _ = self.pipelines.set(pipelines);
    }

    /// The pipelines, or `Loading` while models load.
    pub fn pipelines(&self) -> Result<&Arc<Pipelines>, InspectError> {
        self.pipelines.get().ok_or(InspectError::Loading)
    }

    pub fn loaded(&self) -> Option<&Arc<Pipelines>> {
        self.pipelines.get()
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutting_down.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutting_down.borrow()
    }

    /// Whether the server should report SERVING: models loaded and working, not shutting down.
    pub fn serving(&self) -> bool {
        !self.is_shutting_down()
            && self.loaded().is_some_and(|p| p.model_states().iter().all(|(_, s)| *s == ModelState::Ready))
    }

    /// Every model's state: `loading` for each configured one until the pipelines are up.
    pub fn model_states(&self) -> Vec<(String, ModelState)> {
        match self.loaded() {
            Some(p) => p.model_states(),
            None => self.configured_models.iter().map(|m| (m.clone(), ModelState::Loading)).collect(),
        }
    }

    /// Sets the gauges of state, then renders every metric.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        for (model, state) in self.model_states() {
            for candidate in ModelState::ALL {
                m.model_state
                    .get_or_create(&ModelStateLabels { model: model.clone(), state: candidate.as_str() })
                    .set(i64::from(candidate == state));
            }
        }
        if let Some(pipelines) = self.loaded() {
            let (in_flight, _) = pipelines.in_flight();
            m.frames_in_flight.set(i64::try_from(in_flight).unwrap_or(i64::MAX));
            for (pipeline, depth) in pipelines.queue_depths() {
                m.queue_depth.get_or_create(&PipelineLabels { pipeline }).set(i64::try_from(depth).unwrap_or(i64::MAX));
            }
            for tracking in pipelines.tracking_stats() {
                let labels = PipelineLabels { pipeline: tracking.pipeline };
                let stats = tracking.stats;
                m.active_cameras.get_or_create(&labels).set(i64::try_from(stats.cameras).unwrap_or(i64::MAX));
                m.active_tracks
                    .get_or_create(&labels)
                    .set(i64::try_from(stats.confirmed_tracks + stats.tentative_tracks).unwrap_or(i64::MAX));
            }
        }
        m.render()
    }
}
