//! A camera's capture process (`linesight camera-capture`, started by the bridge, one per camera):
//! reads frames continuously with OpenCV, drops the ones too old to send (see [`super::frame_age`])
//! and writes the rest, with their capture times, to its standard output for the bridge. A source
//! that fails is reopened with backoff; a file ends, or starts again when looped.
//!
//! A process per camera, not a thread: OpenCV's FFmpeg backend holds one process-wide lock through
//! the whole of `VideoCapture::open`, so a camera whose address never answers would hold up every
//! other camera's open for `open_timeout_ms` on each of its attempts; and a decoder that crashes
//! takes down only its own camera.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use opencv::core::{Mat, Vector};
use opencv::prelude::*;
use opencv::videoio::{self, VideoCapture};
use serde::{Deserialize, Serialize};
use serde_with::{DurationMilliSeconds, serde_as};

use super::config::Source;
use super::frame_age::{FrameClock, Judgement, Staleness};
use super::pipe::{self, Event};

/// How a capture process behaves; the bridge hands it over as JSON on the command line.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaptureSettings {
    pub camera_id: String,
    /// As in the cameras file.
    pub source: String,
    pub looped: bool,
    /// At most this many frames per second go to the bridge.
    pub fps_cap: Option<f64>,
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub reconnect_min: Duration,
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub reconnect_max: Duration,
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub open_timeout: Duration,
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub read_timeout: Duration,
    /// Frames of a live source older than this when read are dropped.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub max_frame_age: Duration,
}

/// `linesight camera-capture`: not for people; the bridge starts it.
#[derive(clap::Args)]
pub struct CaptureArgs {
    /// The capture settings, as JSON.
    #[arg(long)]
    settings: String,
}

/// Runs a capture process until its source ends, its output closes, or its input does (the bridge
/// is gone).
pub fn run_process(args: &CaptureArgs) -> anyhow::Result<()> {
    let settings: CaptureSettings = serde_json::from_str(&args.settings)?;
    // The bridge holds this process's standard input open; when the bridge goes, so does this.
    std::thread::Builder::new().name("bridge-watch".into()).spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::Read::read(&mut std::io::stdin(), &mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    })?;
    let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let source = Source::parse(&settings.source);
    let clock = FrameClock::new(settings.max_frame_age);
    Capture { settings, source, out, clock }.run();
    Ok(())
}

struct Capture<W: Write> {
    settings: CaptureSettings,
    source: Source,
    out: W,
    clock: FrameClock,
}

/// Why a source stopped delivering frames.
enum Ended {
    /// A file reached its end.
    EndOfFile,
    /// A read failed or timed out.
    Failed,
    /// The bridge no longer reads this process's output.
    BridgeGone,
}

impl<W: Write> Capture<W> {
    fn run(mut self) {
        let mut backoff = Backoff::new(self.settings.reconnect_min, self.settings.reconnect_max);
        let mut opened_before = false;
        let camera_id = self.settings.camera_id.clone();
        let shown = self.source.display();
        loop {
            let mut capture = match open(&self.source, &self.settings) {
                Ok(capture) => capture,
                Err(message) => {
                    tracing::warn!(message = "Source failed to open.", %camera_id, source = %shown, error = %message);
                    if self.event(Event::Closed).is_err() {
                        return;
                    }
                    std::thread::sleep(backoff.next());
                    continue;
                }
            };
            let reopened = std::mem::replace(&mut opened_before, true);
            tracing::info!(message = "Source opened.", %camera_id, source = %shown, reopened);
            if self.event(Event::Opened { reopened }).is_err() {
                return;
            }
            let ended = self.read_frames(&mut capture, &mut backoff);
            match ended {
                Ended::BridgeGone => return,
                Ended::EndOfFile if !self.settings.looped => {
                    tracing::info!(message = "Source ended.", %camera_id, source = %shown);
                    let _ = self.event(Event::Ended);
                    return;
                }
                Ended::EndOfFile => {}
                Ended::Failed => {
                    tracing::warn!(message = "Source failed; reopening.", %camera_id, source = %shown);
                    if self.event(Event::Closed).is_err() {
                        return;
                    }
                    std::thread::sleep(backoff.next());
                }
            }
        }
    }

    fn event(&mut self, event: Event) -> std::io::Result<()> {
        pipe::write_event(&mut self.out, event)
    }

    fn read_frames(&mut self, capture: &mut VideoCapture, backoff: &mut Backoff) -> Ended {
        let fps = capture.get(videoio::CAP_PROP_FPS).ok().filter(|fps| *fps > 0.0 && *fps < 1000.0);
        // A file is played at its own rate, as a camera would deliver it; a live source sets its own pace.
        let live = self.source.is_live();
        let mut pace = if live { None } else { fps.map(|fps| Pacer::new(Duration::from_secs_f64(1.0 / fps))) };
        let mut cap = self.settings.fps_cap.map(|fps| RateCap::new(Duration::from_secs_f64(1.0 / fps)));
        // An RTSP stream's presentation times are its camera's clock; other sources' may be made up.
        let trusted_timestamps = self.source.has_source_timestamps();
        self.clock.opened(Instant::now(), fps);
        loop {
            let mut image = Mat::default();
            let read_began = Instant::now();
            match capture.read(&mut image) {
                Ok(true) if !image.empty() => {}
                Ok(_) if !live => return Ended::EndOfFile,
                Ok(_) => return Ended::Failed,
                Err(error) => {
                    tracing::warn!(message = "Source read failed.", camera_id = %self.settings.camera_id, %error);
                    return Ended::Failed;
                }
            }
            let read_at = Instant::now();
            let age = if live {
                let pts_ms = trusted_timestamps.then(|| capture.get(videoio::CAP_PROP_POS_MSEC).ok()).flatten();
                match self.clock.judge(read_began, read_at, pts_ms) {
                    Judgement::Fresh { age } => age,
                    Judgement::Stale { why } => {
                        if why == Staleness::OverAge {
                            tracing::debug!(message = "Frame too old; dropped.", camera_id = %self.settings.camera_id);
                        }
                        if self.event(Event::Stale).is_err() {
                            return Ended::BridgeGone;
                        }
                        continue;
                    }
                }
            } else {
                Duration::ZERO
            };
            if let Some(pace) = &mut pace {
                std::thread::sleep(pace.wait());
            }
            backoff.reset();
            let now = Instant::now();
            if let Some(cap) = &mut cap
                && !cap.admit(now)
            {
                if self.event(Event::RateCapped).is_err() {
                    return Ended::BridgeGone;
                }
                continue;
            }
            let captured_at = if live { self.clock.capture_time(read_at, age) } else { now };
            let captured_unix_us = unix_us_at(captured_at);
            if pipe::write_frame(&mut self.out, &image, captured_unix_us).is_err() {
                return Ended::BridgeGone;
            }
        }
    }
}

/// Microseconds since the Unix epoch at `instant` (a moment just past).
pub fn unix_us_at(instant: Instant) -> u64 {
    let since = Instant::now().saturating_duration_since(instant);
    SystemTime::now()
        .checked_sub(since)
        .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |since_epoch| u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX))
}

/// Opens a source with the backend its form calls for, with timeouts on network sources.
fn open(source: &Source, settings: &CaptureSettings) -> Result<VideoCapture, String> {
    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    let timeouts = Vector::from_slice(&[
        videoio::CAP_PROP_OPEN_TIMEOUT_MSEC,
        ms(settings.open_timeout),
        videoio::CAP_PROP_READ_TIMEOUT_MSEC,
        ms(settings.read_timeout),
    ]);
    let opened = match source {
        Source::Url(url) => VideoCapture::from_file_with_params(url, videoio::CAP_FFMPEG, &timeouts),
        Source::File(path) => VideoCapture::from_file(path, videoio::CAP_ANY),
        Source::Device(device) => VideoCapture::from_file(device, videoio::CAP_V4L2),
        Source::GStreamer(pipeline) => VideoCapture::from_file(pipeline, videoio::CAP_GSTREAMER),
    };
    let capture = opened.map_err(|e| e.message)?;
    match capture.is_opened() {
        Ok(true) => Ok(capture),
        Ok(false) => Err(match source {
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
