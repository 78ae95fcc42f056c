//! Capture: one thread per source reads frames continuously with OpenCV and leaves only the newest
//! in the camera's [`LatestFrame`] slot, so that a slow server costs dropped frames, never lag or
//! memory. A source that fails is reopened with backoff; a file ends, or starts again when looped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use opencv::core::{Mat, Vector};
use opencv::prelude::*;
use opencv::videoio::{self, VideoCapture};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::config::Source;
use super::stats::CameraStats;

/// A frame as captured: BGR (or gray) pixels and when they arrived.
pub struct CapturedFrame {
    pub image: Mat,
    pub captured_at: Instant,
    /// Milliseconds since the Unix epoch, for the answers' log.
    pub captured_unix_ms: u64,
}

/// The newest frame of one camera, waiting for its sender: a new frame replaces the waiting one,
/// which counts as dropped. Counting happens under the slot's lock, so the counts add up exactly.
pub struct LatestFrame {
    slot: Mutex<Slot>,
    ready: Notify,
    stats: Arc<CameraStats>,
}

#[derive(Default)]
struct Slot {
    frame: Option<CapturedFrame>,
    /// No more frames will come (a file ended, or the bridge is stopping).
    ended: bool,
}

impl LatestFrame {
    pub fn new(stats: Arc<CameraStats>) -> Self {
        Self { slot: Mutex::new(Slot::default()), ready: Notify::new(), stats }
    }

    /// A new frame from the source; `false` once the slot is closed.
    pub fn put(&self, frame: CapturedFrame) -> bool {
        let mut slot = self.slot.lock();
        if slot.ended {
            return false;
        }
        self.stats.captured.inc();
        if slot.frame.replace(frame).is_some() {
            self.stats.dropped.inc();
        }
        drop(slot);
        self.ready.notify_one();
        true
    }

    /// A frame read from the source but skipped to keep the camera's frame-rate cap.
    pub fn skip(&self) {
        let slot = self.slot.lock();
        if !slot.ended {
            self.stats.captured.inc();
            self.stats.rate_capped.inc();
        }
    }

    /// The newest frame, waiting for one; `None` once the slot is closed and empty.
    pub async fn next(&self) -> Option<CapturedFrame> {
        loop {
            {
                let mut slot = self.slot.lock();
                if let Some(frame) = slot.frame.take() {
                    return Some(frame);
                }
                if slot.ended {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    /// No more frames: the sender finishes what is in flight. `discard` drops the waiting frame
    /// (the bridge is stopping) instead of leaving it to be sent (a file ended).
    pub fn close(&self, discard: bool) {
        let mut slot = self.slot.lock();
        slot.ended = true;
        if discard && slot.frame.take().is_some() {
            self.stats.dropped.inc();
        }
        drop(slot);
        self.ready.notify_one();
    }
}

/// How a capture thread behaves.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    pub source: Source,
    pub looped: bool,
    /// At most this many frames per second go to the slot.
    pub fps_cap: Option<f64>,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub open_timeout: Duration,
    pub read_timeout: Duration,
}

/// Starts the capture thread of one camera.
pub fn spawn(
    camera_id: &str,
    settings: CaptureSettings,
    latest: Arc<LatestFrame>,
    stats: Arc<CameraStats>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let camera_id = camera_id.to_owned();
    std::thread::Builder::new()
        .name(format!("capture-{camera_id}"))
        .spawn(move || Capture { camera_id, settings, latest, stats, stop }.run())
}

struct Capture {
    camera_id: String,
    settings: CaptureSettings,
    latest: Arc<LatestFrame>,
    stats: Arc<CameraStats>,
    stop: Arc<AtomicBool>,
}

/// Why a source stopped delivering frames.
enum Ended {
    /// A file reached its end.
    EndOfFile,
    /// A read failed or timed out.
    Failed,
    Stopping,
}

impl Capture {
    fn run(self) {
        let mut backoff = Backoff::new(self.settings.reconnect_min, self.settings.reconnect_max);
        // When the source last failed, while it has not yet delivered a frame since.
        let mut failed_at: Option<Instant> = None;
        let mut opened_before = false;
        let source = self.settings.source.display();
        while !self.stop.load(Ordering::Relaxed) {
            let mut capture = match open(&self.settings) {
                Ok(capture) => capture,
                Err(message) => {
                    tracing::warn!(message = "Source failed to open.", camera_id = %self.camera_id, %source, error = %message);
                    failed_at.get_or_insert_with(Instant::now);
                    self.sleep(backoff.next());
                    continue;
                }
            };
            self.stats.source_up.set(1);
            let reopened = std::mem::replace(&mut opened_before, true);
            if reopened && self.settings.source.is_live() {
                self.stats.source_reconnects.inc();
            }
            tracing::info!(message = "Source opened.", camera_id = %self.camera_id, %source, reopened);
            let ended = self.read_frames(&mut capture, &mut failed_at, &mut backoff);
            self.stats.source_up.set(0);
            match ended {
                Ended::Stopping => break,
                Ended::EndOfFile if !self.settings.looped => {
                    tracing::info!(message = "Source ended.", camera_id = %self.camera_id, %source);
                    self.latest.close(false);
                    return;
                }
                Ended::EndOfFile => {}
                Ended::Failed => {
                    tracing::warn!(message = "Source failed; reopening.", camera_id = %self.camera_id, %source);
                    failed_at.get_or_insert_with(Instant::now);
                    self.sleep(backoff.next());
                }
            }
        }
        self.latest.close(true);
    }

    fn read_frames(&self, capture: &mut VideoCapture, failed_at: &mut Option<Instant>, backoff: &mut Backoff) -> Ended {
        // A file is played at its own rate, as a camera would deliver it; a live source sets its own pace.
        let file_period = match &self.settings.source {
            Source::File(_) => capture
                .get(videoio::CAP_PROP_FPS)
                .ok()
                .filter(|fps| *fps > 0.0 && *fps < 1000.0)
                .map(|fps| Duration::from_secs_f64(1.0 / fps)),
            _ => None,
        };
        let mut pace = file_period.map(Pacer::new);
        let mut cap = self.settings.fps_cap.map(|fps| RateCap::new(Duration::from_secs_f64(1.0 / fps)));
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ended::Stopping;
            }
            let mut image = Mat::default();
            match capture.read(&mut image) {
                Ok(true) if !image.empty() => {}
                Ok(_) if !self.settings.source.is_live() => return Ended::EndOfFile,
                Ok(_) => return Ended::Failed,
                Err(error) => {
                    tracing::warn!(message = "Source read failed.", camera_id = %self.camera_id, %error);
                    return Ended::Failed;
                }
            }
            if let Some(pace) = &mut pace {
                std::thread::sleep(pace.wait());
            }
            let now = Instant::now();
            if let Some(since) = failed_at.take() {
                let outage = u64::try_from(now.duration_since(since).as_millis()).unwrap_or(u64::MAX);
                self.stats.last_outage_ms.store(outage, Ordering::Relaxed);
                tracing::info!(message = "Source delivering again.", camera_id = %self.camera_id, outage_ms = outage);
            }
            backoff.reset();
            if let Some(cap) = &mut cap
                && !cap.admit(now)
            {
                self.latest.skip();
                continue;
            }
            let captured_unix_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
            if !self.latest.put(CapturedFrame { image, captured_at: now, captured_unix_ms }) {
                return Ended::Stopping;
            }
        }
    }

    /// Sleeps `duration`, waking early when the bridge stops.
    fn sleep(&self, duration: Duration) {
        let until = Instant::now() + duration;
        while !self.stop.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

/// Opens a source with the backend its form calls for, with timeouts on network sources.
fn open(settings: &CaptureSettings) -> Result<VideoCapture, String> {
    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    let timeouts = Vector::from_slice(&[
        videoio::CAP_PROP_OPEN_TIMEOUT_MSEC,
        ms(settings.open_timeout),
        videoio::CAP_PROP_READ_TIMEOUT_MSEC,
        ms(settings.read_timeout),
    ]);
    let opened = match &settings.source {
        Source::Url(url) => VideoCapture::from_file_with_params(url, videoio::CAP_FFMPEG, &timeouts),
        Source::File(path) => VideoCapture::from_file(path, videoio::CAP_ANY),
        Source::Device(device) => VideoCapture::from_file(device, videoio::CAP_V4L2),
        Source::GStreamer(pipeline) => VideoCapture::from_file(pipeline, videoio::CAP_GSTREAMER),
    };
    let capture = opened.map_err(|e| e.message)?;
    match capture.is_opened() {
        Ok(true) => Ok(capture),
        Ok(false) => Err(match settings.source {
            Source::Url(_) => "the stream did not open (unreachable, refused, or not a video stream)",
            Source::File(_) => "the file did not open as a video",
            Source::Device(_) => "the device did not open (missing, busy, or not a V4L2 capture device)",
            Source::GStreamer(_) => "the pipeline did not start (see GStreamer's message above)",
        }
        .to_owned()),
        Err(e) => Err(e.message),
    }
}

/// Waits between attempts: doubling from `min` up to `max`, back to `min` after a success.
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next: min }
    }

    pub fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Plays a file at its frame rate: how long to wait before handing on the next frame.
struct Pacer {
    period: Duration,
    due: Option<Instant>,
}

impl Pacer {
    fn new(period: Duration) -> Self {
        Self { period, due: None }
    }

    fn wait(&mut self) -> Duration {
        let now = Instant::now();
        let due = self.due.unwrap_or(now);
        // Behind by more than a frame (a slow decode): start the schedule again rather than burst.
        let due = if now > due + self.period { now } else { due };
        self.due = Some(due + self.period);
        due.saturating_duration_since(now)
    }
}

/// Keeps at most one frame per `period`, on average, from a faster source.
struct RateCap {
    period: Duration,
    next: Option<Instant>,
}

impl RateCap {
    fn new(period: Duration) -> Self {
        Self { period, next: None }
    }

    fn admit(&mut self, now: Instant) -> bool {
        // A quarter period of slack, so that a frame arriving a little early is not skipped
        // (which would halve the rate of a source at an exact multiple of the cap).
        let slack = self.period / 4;
        match self.next {
            Some(next) if now + slack < next => false,
            Some(next) if now < next + self.period => {
                self.next = Some(next + self.period);
                true
            }
            _ => {
                self.next = Some(now + self.period);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::stats::BridgeMetrics;

    fn frame() -> CapturedFrame {
        CapturedFrame { image: Mat::default(), captured_at: Instant::now(), captured_unix_ms: 0 }
    }

    #[tokio::test]
    async fn the_newest_frame_wins_and_every_replaced_one_is_counted() {
        let stats = BridgeMetrics::new().camera("c");
        let latest = LatestFrame::new(stats.clone());
        for _ in 0..5 {
            assert!(latest.put(frame()));
        }
        latest.skip();
        assert!(latest.next().await.is_some());
        assert_eq!((stats.captured.get(), stats.dropped.get(), stats.rate_capped.get()), (6, 4, 1));
        latest.put(frame());
        latest.close(true);
        assert!(latest.next().await.is_none(), "a closed slot hands out nothing");
        assert!(!latest.put(frame()), "a closed slot takes nothing");
        assert_eq!((stats.captured.get(), stats.dropped.get()), (7, 5), "the discarded frame counts as dropped");
    }

    #[tokio::test]
    async fn a_file_that_ends_still_hands_out_its_last_frame() {
        let latest = LatestFrame::new(BridgeMetrics::new().camera("c"));
        latest.put(frame());
        latest.close(false);
        assert!(latest.next().await.is_some());
        assert!(latest.next().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_sender_wakes_for_a_new_frame() {
        let latest = Arc::new(LatestFrame::new(BridgeMetrics::new().camera("c")));
        let waiting = tokio::spawn({
            let latest = latest.clone();
            async move { latest.next().await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        latest.put(frame());
        assert!(tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap());
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_and_starts_over_after_a_success() {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let waits: Vec<u128> = (0..5).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(200));
    }

    #[test]
    fn a_30_fps_source_capped_at_10_keeps_every_third_frame_despite_jitter() {
        let start = Instant::now();
        let mut cap = RateCap::new(Duration::from_millis(100));
        let jitter = [0i64, 3, -4, 2, -1, 4, -3, 1, 0, -2];
        let kept = (0..300u64)
            .filter(|i| {
                let ms = (i * 1000 / 30) as i64 + jitter[(*i % 10) as usize];
                cap.admit(start + Duration::from_millis(ms.max(0) as u64))
            })
            .count();
        assert!((99..=101).contains(&kept), "kept {kept} of 300 frames at 30 fps over 10 s");
    }

    #[test]
    fn a_slower_source_than_the_cap_keeps_every_frame() {
        let start = Instant::now();
        let mut cap = RateCap::new(Duration::from_millis(100));
        assert!((0..50u64).all(|i| cap.admit(start + Duration::from_millis(i * 200))));
    }

    #[test]
    fn a_file_is_paced_at_its_frame_rate() {
        let mut pacer = Pacer::new(Duration::from_millis(100));
        assert_eq!(pacer.wait(), Duration::ZERO);
        let second = pacer.wait();
        assert!(second > Duration::from_millis(90) && second <= Duration::from_millis(100), "{second:?}");
    }
}
