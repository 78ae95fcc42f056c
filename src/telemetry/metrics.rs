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

/// Lines and zones are named in the config, so these stay bounded; cameras are summed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LineLabels {
    pub pipeline: String,
    pub line: String,
    pub class: String,
    /// `forward` or `backward`.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabels {
    pub pipeline: String,
    pub zone: String,
    pub class: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 0.25 ms … 8 s: a stage of a few hundred microseconds up to a frame far past any budget.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0])
}

/// `metric`, registered under `name`.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
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
    pub line_crossings: Family<LineLabels, Counter>,
    pub zone_objects: Family<ZoneLabels, Gauge>,
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
    // One registration per metric: long, not complex.
    #[allow(clippy::too_many_lines)]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("linesight");
        let stage_seconds = registered(
            &mut registry,
            "stage_duration_seconds",
            "Time each answered frame spent in each stage (decode, preprocess, queue_wait, inference, postprocess, embed, track) and in total",
            HistogramFamily::<StageLabels>::new_with_constructor(seconds_histogram as fn() -> _),
        );
        let batch_size = registered(
            &mut registry,
            "frame_batch_size",
            "Frames in the inference batch each answered frame rode in",
            HistogramFamily::<ModelLabels>::new_with_constructor(batch_histogram as fn() -> _),
        );
        let frames = registered(
            &mut registry,
            "frames",
            "Frames answered, by outcome",
            Family::<OutcomeLabels, Counter>::default(),
        );
        let frames_shed = registered(
            &mut registry,
            "frames_shed",
            "Frames refused or dropped unserved, by reason (queue_full, budget, client_deadline, camera_in_flight, server_in_flight)",
            Family::<ReasonLabels, Counter>::default(),
        );
        let frames_over_budget = registered(
            &mut registry,
            "frames_over_budget",
            "Frames served, but after their budget had run out",
            Family::<PipelineLabels, Counter>::default(),
        );
        let queue_depth = registered(
            &mut registry,
            "queue_depth",
            "Frames waiting for a model, per pipeline",
            Family::<PipelineLabels, Gauge>::default(),
        );
        let active_cameras = registered(
            &mut registry,
            "active_cameras",
            "Cameras with tracker state, per track pipeline",
            Family::<PipelineLabels, Gauge>::default(),
        );
        let active_tracks = registered(
            &mut registry,
            "active_tracks",
            "Tracks (confirmed and tentative), per track pipeline",
            Family::<PipelineLabels, Gauge>::default(),
        );
        let model_state = registered(
            &mut registry,
            "model_state",
            "1 for each model's current state (loading, ready, failing), 0 for the others",
            Family::<ModelStateLabels, Gauge>::default(),
        );
        let line_crossings = registered(
            &mut registry,
            "line_crossings",
            "Tracks that crossed each counting line, by class and direction, over every camera since start",
            Family::<LineLabels, Counter>::default(),
        );
        let zone_objects = registered(
            &mut registry,
            "zone_objects",
            "Tracks inside each zone in its cameras' last frames, by class, summed over cameras",
            Family::<ZoneLabels, Gauge>::default(),
        );
        let frames_in_flight =
            registered(&mut registry, "frames_in_flight", "Frames admitted and not yet answered", Gauge::default());
        let connections_open = registered(
            &mut registry,
            "connections_open",
            "gRPC connections in use (their HTTP/2 preface or TLS handshake has begun)",
            Gauge::default(),
        );
        let connections_closed = registered(
            &mut registry,
            "connections_closed",
            "Connections the server closed before they were in use, by reason (preface_timeout, not_http2, not_tls, pending_full)",
            Family::<CloseLabels, Counter>::default(),
        );
        let unauthenticated = registered(
            &mut registry,
            "requests_unauthenticated",
            "Requests refused for a missing or wrong bearer token",
            Family::<ServiceLabels, Counter>::default(),
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
            line_crossings,
            zone_objects,
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
