//! Prometheus metrics: what the service counts and times, and their exposition text. Pipelines and
//! models are labels (both come from the config, so the label sets stay small); cameras are not
//! (any client can invent one).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The Content-Type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub pipeline: String,
    pub model: String,
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub pipeline: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub pipeline: String,
    /// `within_budget`, `over_budget`, `shed` or `error`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub pipeline: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelStateLabels {
    pub model: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `grpc` or `metrics`.
    pub service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// `preface_timeout`, `not_http2`, `not_tls` or `pending_full`.
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 0.25 ms … 8 s: a stage of a few hundred microseconds up to a frame far past any budget.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0])
}

/// Every metric the service exports. Counters and histograms are updated as frames are answered;
/// gauges of state (queue depth, cameras, tracks, model states) are set just before each scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub stage_seconds: HistogramFamily<StageLabels>,
    pub batch_size: HistogramFamily<ModelLabels>,
    pub frames: Family<OutcomeLabels, Counter>,
    pub frames_shed: Family<ReasonLabels, Counter>,
    pub frames_over_budget: Family<PipelineLabels, Counter>,
    pub queue_depth: Family<PipelineLabels, Gauge>,
    pub active_cameras: Family<PipelineLabels, Gauge>,
    pub active_tracks: Family<PipelineLabels, Gauge>,
    pub model_state: Family<ModelStateLabels, Gauge>,
    pub frames_in_flight: Gauge,
    pub connections_open: Gauge,
    pub connections_closed: Family<CloseLabels, Counter>,
    pub unauthenticated: Family<ServiceLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("linesight");
        let stage_seconds = HistogramFamily::<StageLabels>::new_with_constructor(seconds_histogram as fn() -> _);
        registry.register(
            "stage_duration_seconds",
            "Time each answered frame spent in each stage (decode, preprocess, queue_wait, inference, postprocess, embed, track) and in total",
            stage_seconds.clone(),
        );
        let batch_size = HistogramFamily::<ModelLabels>::new_with_constructor(batch_histogram as fn() -> _);
        registry.register(
            "frame_batch_size",
            "Frames in the inference batch each answered frame rode in",
            batch_size.clone(),
        );
        let frames = Family::<OutcomeLabels, Counter>::default();
        registry.register("frames", "Frames answered, by outcome", frames.clone());
        let frames_shed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "frames_shed",
            "Frames refused or dropped unserved, by reason (queue_full, budget, client_deadline, camera_in_flight, server_in_flight)",
            frames_shed.clone(),
        );
        let frames_over_budget = Family::<PipelineLabels, Counter>::default();
        registry.register(
            "frames_over_budget",
            "Frames served, but after their budget had run out",
            frames_over_budget.clone(),
        );
        let queue_depth = Family::<PipelineLabels, Gauge>::default();
        registry.register("queue_depth", "Frames waiting for a model, per pipeline", queue_depth.clone());
        let active_cameras = Family::<PipelineLabels, Gauge>::default();
        registry.register("active_cameras", "Cameras with tracker state, per track pipeline", active_cameras.clone());
        let active_tracks = Family::<PipelineLabels, Gauge>::default();
        registry.register(
            "active_tracks",
            "Tracks (confirmed and tentative), per track pipeline",
            active_tracks.clone(),
        );
        let model_state = Family::<ModelStateLabels, Gauge>::default();
        registry.register(
            "model_state",
            "1 for each model's current state (loading, ready, failing), 0 for the others",
            model_state.clone(),
        );
        let frames_in_flight = Gauge::default();
        registry.register("frames_in_flight", "Frames admitted and not yet answered", frames_in_flight.clone());
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "gRPC connections in use (their HTTP/2 preface or TLS handshake has begun)",
            connections_open.clone(),
        );
        let connections_closed = Family::<CloseLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections the server closed before they were in use, by reason (preface_timeout, not_http2, not_tls, pending_full)",
            connections_closed.clone(),
        );
        let unauthenticated = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "requests_unauthenticated",
            "Requests refused for a missing or wrong bearer token",
            unauthenticated.clone(),
        );
        Self {
            registry,
            stage_seconds,
            batch_size,
            frames,
            frames_shed,
            frames_over_budget,
            queue_depth,
            active_cameras,
            active_tracks,
            model_state,
            frames_in_flight,
            connections_open,
            connections_closed,
            unauthenticated,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_carries_labels_and_buckets() {
        let metrics = Metrics::new();
        metrics
            .stage_seconds
            .get_or_create(&StageLabels { pipeline: "detect".into(), model: "nanodet-g".into(), stage: "inference" })
            .observe(0.02);
        metrics.frames.get_or_create(&OutcomeLabels { pipeline: "detect".into(), outcome: "shed" }).inc();
        let text = metrics.render();
        assert!(
            text.contains(
                r#"linesight_stage_duration_seconds_bucket{pipeline="detect",model="nanodet-g",stage="inference",le="0.032"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"linesight_frames_total{pipeline="detect",outcome="shed"} 1"#), "{text}");
    }
}
