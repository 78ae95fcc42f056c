//! What every service of the server shares: the pipelines (once loaded), the metrics and the
//! shutdown signal.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;

use crate::pipeline::{InspectError, ModelState, Pipelines};
use crate::telemetry::{LineLabels, Metrics, ModelStateLabels, PipelineLabels, ZoneLabels};

pub struct ServerState {
    pipelines: OnceLock<Arc<Pipelines>>,
    /// Models the config names, reported as loading until the pipelines are up.
    configured_models: Vec<String>,
    pub metrics: Arc<Metrics>,
    shutting_down: watch::Sender<bool>,
    /// Zone gauges set by the last scrape (to be zeroed when their zone empties); held while the
    /// line counters catch up with the registries, so two scrapes cannot both add the same delta.
    zone_labels: Mutex<HashSet<ZoneLabels>>,
}

impl ServerState {
    pub fn new(configured_models: Vec<String>, metrics: Arc<Metrics>) -> Self {
        Self {
            pipelines: OnceLock::new(),
            configured_models,
            metrics,
            shutting_down: watch::Sender::new(false),
            zone_labels: Mutex::new(HashSet::new()),
        }
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
            self.refresh_line_metrics(pipelines);
        }
        m.render()
    }

    /// Line counters catch up with the registries' totals; zone gauges are the sums over cameras.
    fn refresh_line_metrics(&self, pipelines: &Pipelines) {
        let m = &self.metrics;
        let mut zone_labels = self.zone_labels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (pipeline, totals) in pipelines.crossing_totals() {
            for total in totals {
                for (direction, count) in [("forward", total.forward), ("backward", total.backward)] {
                    let labels = LineLabels {
                        pipeline: pipeline.clone(),
                        line: total.line.clone(),
                        class: total.class_name.clone(),
                        direction,
                    };
                    let counter = m.line_crossings.get_or_create(&labels);
                    counter.inc_by(count.saturating_sub(counter.get()));
                }
            }
        }
        let mut occupied: HashMap<ZoneLabels, u64> = HashMap::new();
        for counts in pipelines.line_counts("", None).unwrap_or_default() {
            for camera in counts.cameras {
                for zone in camera.zones {
                    let labels =
                        ZoneLabels { pipeline: counts.pipeline.clone(), zone: zone.zone, class: zone.class_name };
                    *occupied.entry(labels).or_default() += u64::from(zone.objects);
                }
            }
        }
        for labels in zone_labels.iter() {
            if !occupied.contains_key(labels) {
                m.zone_objects.get_or_create(labels).set(0);
            }
        }
        for (labels, objects) in &occupied {
            m.zone_objects.get_or_create(labels).set(i64::try_from(*objects).unwrap_or(i64::MAX));
        }
        zone_labels.extend(occupied.into_keys());
    }
}
