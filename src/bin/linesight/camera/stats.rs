//! What each camera's bridge counts: frames at every step from capture to answer, reconnects and
//! capture-to-answer latency; for the logs, the run's summary and `GET /metrics`. Cameras are labels
//! here (unlike in the server's metrics): they come from the bridge's own config.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrameLabels {
    camera_id: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkLabels {
    camera_id: String,
    link: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CameraLabels {
    camera_id: String,
}

type HistogramFamily = Family<CameraLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// The bridge's Prometheus registry.
pub struct BridgeMetrics {
    registry: Registry,
    frames: Family<FrameLabels, Counter>,
    reconnects: Family<LinkLabels, Counter>,
    capture_restarts: Family<CameraLabels, Counter>,
    up: Family<LinkLabels, Gauge>,
    latency: HistogramFamily,
}

impl BridgeMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("linesight_camera");
        let frames = Family::<FrameLabels, Counter>::default();
        registry.register(
            "frames",
            "Frames per camera by step: captured, rate_capped (over the camera's fps), stale (older than max_frame_age_ms when read or when its turn to be sent came), dropped (replaced by a newer frame before it could be sent), sent, answered, within_budget, over_budget, shed, failed (answered with an error), lost (sent but unanswered when the connection broke)",
            frames.clone(),
        );
        let reconnects = Family::<LinkLabels, Counter>::default();
        registry.register(
            "reconnects",
            "Times a source (link=source) or the server (link=server) was reached again after it failed",
            reconnects.clone(),
        );
        let capture_restarts = Family::<CameraLabels, Counter>::default();
        registry.register(
            "capture_restarts",
            "Times a camera's capture process exited (crashed, or was killed) and was started again",
            capture_restarts.clone(),
        );
        let up = Family::<LinkLabels, Gauge>::default();
        registry.register(
            "up",
            "1 while the camera's source is open (link=source) or its stream to the server is open (link=server)",
            up.clone(),
        );
        let latency = HistogramFamily::new_with_constructor(latency_histogram as fn() -> _);
        registry.register("latency_seconds", "From a frame's capture to its answer", latency.clone());
        Self { registry, frames, reconnects, capture_restarts, up, latency }
    }

    /// A camera's counters, registered under its id.
    pub fn camera(&self, camera_id: &str) -> Arc<CameraStats> {
        // Each handle is cloned out in a statement of its own: a family's lock guard lives to the end
        // of the statement that takes it, and a second `get_or_create` in the same one would deadlock.
        let frame =
            |outcome| self.frames.get_or_create(&FrameLabels { camera_id: camera_id.to_owned(), outcome }).clone();
        let link = |link| LinkLabels { camera_id: camera_id.to_owned(), link };
        let reconnects = |name| self.reconnects.get_or_create(&link(name)).clone();
        let up = |name| self.up.get_or_create(&link(name)).clone();
        let latency = self.latency.get_or_create(&CameraLabels { camera_id: camera_id.to_owned() }).clone();
        let capture_restarts =
            self.capture_restarts.get_or_create(&CameraLabels { camera_id: camera_id.to_owned() }).clone();
        Arc::new(CameraStats {
            camera_id: camera_id.to_owned(),
            captured: frame("captured"),
            rate_capped: frame("rate_capped"),
            stale: frame("stale"),
            dropped: frame("dropped"),
            sent: frame("sent"),
            answered: frame("answered"),
            within_budget: frame("within_budget"),
            over_budget: frame("over_budget"),
            shed: frame("shed"),
            failed: frame("failed"),
            lost: frame("lost"),
            source_reconnects: reconnects("source"),
            server_reconnects: reconnects("server"),
            capture_restarts,
            source_up: up("source"),
            server_up: up("server"),
            latency,
            run_latency: Mutex::new(LatencyRecord::new()),
            interval_latency: Mutex::new(LatencyRecord::new()),
            last_outage_ms: AtomicU64::new(0),
            first_sequence: AtomicU64::new(0),
            last_sequence: AtomicU64::new(0),
        })
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// Capture-to-answer latencies, in bounded memory (a histogram at 0.1 % precision up to 10 min).
struct LatencyRecord(Option<hdrhistogram::Histogram<u64>>);

impl LatencyRecord {
    fn new() -> Self {
        Self(hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).ok())
    }

    fn record(&mut self, latency: Duration) {
        if let Some(histogram) = &mut self.0 {
            histogram.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1));
        }
    }

    fn percentiles(&self) -> LatencyMs {
        let ms = |us: u64| us as f64 / 1000.0;
        match &self.0 {
            Some(h) if !h.is_empty() => {
                LatencyMs { p50: ms(h.value_at_quantile(0.50)), p99: ms(h.value_at_quantile(0.99)), max: ms(h.max()) }
            }
            _ => LatencyMs::default(),
        }
    }

    fn reset(&mut self) {
        if let Some(histogram) = &mut self.0 {
            histogram.reset();
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencyMs {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// One camera's counts. Frames are counted once at each step they reach, so that
/// `captured = rate_capped + stale + dropped + sent (+ the one waiting)` and
/// `sent = answered + lost (+ those in flight)`, and
/// `answered = within_budget + over_budget + shed + failed`.
pub struct CameraStats {
    pub camera_id: String,
    pub captured: Counter,
    pub rate_capped: Counter,
    pub stale: Counter,
    pub dropped: Counter,
    pub sent: Counter,
    pub answered: Counter,
    pub within_budget: Counter,
    pub over_budget: Counter,
    pub shed: Counter,
    pub failed: Counter,
    pub lost: Counter,
    pub source_reconnects: Counter,
    pub server_reconnects: Counter,
    pub capture_restarts: Counter,
    pub source_up: Gauge,
    pub server_up: Gauge,
    latency: Histogram,
    run_latency: Mutex<LatencyRecord>,
    interval_latency: Mutex<LatencyRecord>,
    /// From the last good frame before a source failed to the first one after it came back.
    pub last_outage_ms: AtomicU64,
    first_sequence: AtomicU64,
    last_sequence: AtomicU64,
}

impl CameraStats {
    pub fn record_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
        self.run_latency.lock().record(latency);
        self.interval_latency.lock().record(latency);
    }

    pub fn record_sequence(&self, sequence: u64) {
        let _ = self.first_sequence.compare_exchange(0, sequence, Ordering::Relaxed, Ordering::Relaxed);
        self.last_sequence.store(sequence, Ordering::Relaxed);
    }

    /// The counts so far, with latency over the whole run.
    pub fn snapshot(&self) -> CameraSnapshot {
        self.snapshot_with(self.run_latency.lock().percentiles())
    }

    /// The counts so far, with latency since the last call (then starts a new interval).
    pub fn interval_snapshot(&self) -> CameraSnapshot {
        let mut interval = self.interval_latency.lock();
        let latency = interval.percentiles();
        interval.reset();
        self.snapshot_with(latency)
    }

    fn snapshot_with(&self, latency_ms: LatencyMs) -> CameraSnapshot {
        CameraSnapshot {
            camera_id: self.camera_id.clone(),
            captured: self.captured.get(),
            rate_capped: self.rate_capped.get(),
            stale: self.stale.get(),
            dropped: self.dropped.get(),
            sent: self.sent.get(),
            answered: self.answered.get(),
            within_budget: self.within_budget.get(),
            over_budget: self.over_budget.get(),
            shed: self.shed.get(),
            failed: self.failed.get(),
            lost: self.lost.get(),
            latency_ms,
            source_reconnects: self.source_reconnects.get(),
            server_reconnects: self.server_reconnects.get(),
            capture_restarts: self.capture_restarts.get(),
            last_outage_ms: self.last_outage_ms.load(Ordering::Relaxed),
            first_sequence: self.first_sequence.load(Ordering::Relaxed),
            last_sequence: self.last_sequence.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CameraSnapshot {
    pub camera_id: String,
    pub captured: u64,
    pub rate_capped: u64,
    pub stale: u64,
    pub dropped: u64,
    pub sent: u64,
    pub answered: u64,
    pub within_budget: u64,
    pub over_budget: u64,
    pub shed: u64,
    pub failed: u64,
    pub lost: u64,
    /// Capture to answer.
    pub latency_ms: LatencyMs,
    pub source_reconnects: u64,
    pub server_reconnects: u64,
    pub capture_restarts: u64,
    pub last_outage_ms: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
}

impl CameraSnapshot {
    pub fn log(&self, message: &'static str) {
        tracing::info!(
            message,
            camera_id = %self.camera_id,
            captured = self.captured,
            sent = self.sent,
            dropped = self.dropped,
            rate_capped = self.rate_capped,
            stale = self.stale,
            answered = self.answered,
            within_budget = self.within_budget,
            over_budget = self.over_budget,
            shed = self.shed,
            failed = self.failed,
            lost = self.lost,
            latency_p50_ms = self.latency_ms.p50,
            latency_p99_ms = self.latency_ms.p99,
            source_reconnects = self.source_reconnects,
            server_reconnects = self.server_reconnects,
            capture_restarts = self.capture_restarts,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_latency_reach_the_snapshot_and_the_exposition() {
        let metrics = BridgeMetrics::new();
        let stats = metrics.camera("line-3");
        stats.captured.inc_by(3);
        stats.sent.inc();
        for ms in [10, 20, 30, 40, 1000] {
            stats.record_latency(Duration::from_millis(ms));
        }
        stats.record_sequence(7);
        stats.record_sequence(8);
        let run = stats.snapshot();
        assert_eq!((run.captured, run.sent, run.first_sequence, run.last_sequence), (3, 1, 7, 8));
        assert!((run.latency_ms.p50 - 30.0).abs() < 0.1, "{:?}", run.latency_ms);
        assert!((run.latency_ms.max - 1000.0).abs() < 1.0, "{:?}", run.latency_ms);
        let interval = stats.interval_snapshot();
        assert_eq!(interval.latency_ms, run.latency_ms);
        assert_eq!(stats.interval_snapshot().latency_ms, LatencyMs::default(), "a new interval starts empty");
        let text = metrics.render();
        assert!(text.contains(r#"linesight_camera_frames_total{camera_id="line-3",outcome="captured"} 3"#), "{text}");
        assert!(text.contains(r#"linesight_camera_latency_seconds_count{camera_id="line-3"} 5"#), "{text}");
    }
}
