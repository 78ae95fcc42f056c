//! The bridge's side of a camera's capture process: starts it, reads its frames and events into
//! the camera's slot and counts, and starts it again (with backoff) when it exits before its
//! source has ended: a crash, a kill, or a decoder that went wrong take down only that camera.

use std::io::BufReader;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::capture::{Backoff, CaptureSettings, unix_us_at};
use super::config::Source;
use super::latest::{CapturedFrame, LatestFrame};
use super::pipe::{self, Event, Message};
use super::stats::CameraStats;

/// Stops a camera's capture: its process is killed and not started again.
pub struct CaptureHandle {
    child: Arc<Mutex<Option<Child>>>,
    stop: Arc<AtomicBool>,
}

impl CaptureHandle {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(child) = self.child.lock().as_mut() {
            let _ = child.kill();
        }
    }
}

/// Starts the thread that runs (and reruns) a camera's capture process.
pub fn spawn(
    settings: CaptureSettings,
    latest: Arc<LatestFrame>,
    stats: Arc<CameraStats>,
) -> std::io::Result<CaptureHandle> {
    let program = std::env::current_exe()?;
    let child = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let supervisor = Supervisor {
        program,
        live: Source::parse(&settings.source).is_live(),
        settings,
        latest,
        stats,
        child: child.clone(),
        stop: stop.clone(),
        last_frame_at: None,
        down: false,
        opened_before: false,
    };
    std::thread::Builder::new()
        .name(format!("capture-{}", supervisor.settings.camera_id))
        .spawn(move || supervisor.run())?;
    Ok(CaptureHandle { child, stop })
}

struct Supervisor {
    program: std::path::PathBuf,
    settings: CaptureSettings,
    live: bool,
    latest: Arc<LatestFrame>,
    stats: Arc<CameraStats>,
    child: Arc<Mutex<Option<Child>>>,
    stop: Arc<AtomicBool>,
    /// When the last frame came, and whether the source has failed since.
    last_frame_at: Option<Instant>,
    down: bool,
    opened_before: bool,
}

/// How one capture process ended.
enum ProcessEnd {
    /// Its source ended (a file without `loop`).
    SourceEnded,
    /// It exited, or its output broke, while its source was still wanted.
    Exited { delivered: bool },
}

impl Supervisor {
    fn run(mut self) {
        let mut backoff = Backoff::new(self.settings.reconnect_min, self.settings.reconnect_max);
        let camera_id = self.settings.camera_id.clone();
        let mut started_before = false;
        while !self.stop.load(Ordering::Relaxed) {
            let end = match self.start_process() {
                Ok(process) => {
                    if std::mem::replace(&mut started_before, true) {
                        self.stats.capture_restarts.inc();
                    }
                    self.follow(process)
                }
                Err(error) => {
                    tracing::warn!(message = "Capture process did not start.", %camera_id, %error);
                    ProcessEnd::Exited { delivered: false }
                }
            };
            self.stats.source_up.set(0);
            match end {
                ProcessEnd::SourceEnded => {
                    self.latest.close(false);
                    return;
                }
                ProcessEnd::Exited { delivered } => {
                    if self.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    self.down = true;
                    if delivered {
                        backoff.reset();
                    }
                    let wait = backoff.next();
                    tracing::warn!(message = "Capture process exited; starting it again.", %camera_id, retry_in_ms = wait.as_millis());
                    self.sleep(wait);
                }
            }
        }
        self.latest.close(true);
    }

    fn start_process(&self) -> std::io::Result<std::process::ChildStdout> {
        let settings = serde_json::to_string(&self.settings).map_err(std::io::Error::other)?;
        let mut child = Command::new(&self.program)
            .args(["camera-capture", "--settings", &settings])
            // FFmpeg's frame-threaded decoding holds back a frame per extra thread (200 ms at 10 fps
            // with two): one thread decodes a camera's stream as it comes.
            .env("OPENCV_FFMPEG_THREADS", "1")
            // Its standard input stays open while the bridge lives: the process ends when it closes.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no standard output"))?;
        tracing::debug!(message = "Capture process started.", camera_id = %self.settings.camera_id, pid = child.id());
        *self.child.lock() = Some(child);
        // A stop that came while the process was starting has not killed it.
        if self.stop.load(Ordering::Relaxed)
            && let Some(child) = self.child.lock().as_mut()
        {
            let _ = child.kill();
        }
        Ok(stdout)
    }

    /// Reads a capture process's output until it ends, then reaps the process.
    fn follow(&mut self, stdout: std::process::ChildStdout) -> ProcessEnd {
        let mut reader = BufReader::with_capacity(1 << 20, stdout);
        let mut delivered = false;
        let mut source_ended = false;
        loop {
            match pipe::read_message(&mut reader) {
                Ok(Some(Message::Frame { image, captured_unix_us })) => {
                    delivered = true;
                    if !self.frame(image, captured_unix_us) {
                        break;
                    }
                }
                Ok(Some(Message::Event(event))) => source_ended |= self.event(event),
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(message = "Capture process output unreadable.", camera_id = %self.settings.camera_id, %error);
                    break;
                }
            }
        }
        if let Some(mut child) = self.child.lock().take() {
            let _ = child.kill();
            match child.wait() {
                Ok(status) if !source_ended && !self.stop.load(Ordering::Relaxed) => {
                    tracing::warn!(message = "Capture process ended.", camera_id = %self.settings.camera_id, %status);
                }
                _ => {}
            }
        }
        if source_ended { ProcessEnd::SourceEnded } else { ProcessEnd::Exited { delivered } }
    }

    /// A frame into the camera's slot; `false` once the slot is closed.
    fn frame(&mut self, image: opencv::core::Mat, captured_unix_us: u64) -> bool {
        let now = Instant::now();
        if std::mem::replace(&mut self.down, false)
            && let Some(last) = self.last_frame_at
        {
            let outage = u64::try_from(now.duration_since(last).as_millis()).unwrap_or(u64::MAX);
            self.stats.last_outage_ms.store(outage, Ordering::Relaxed);
            tracing::info!(message = "Source delivering again.", camera_id = %self.settings.camera_id, outage_ms = outage);
        }
        self.last_frame_at = Some(now);
        let age = unix_us_at(now).saturating_sub(captured_unix_us);
        let captured_at = now.checked_sub(Duration::from_micros(age)).unwrap_or(now);
        self.latest.put(CapturedFrame { image, captured_at, captured_unix_ms: captured_unix_us / 1000 })
    }

    /// Counts an event; `true` when the source has ended.
    fn event(&mut self, event: Event) -> bool {
        match event {
            Event::Opened { .. } => {
                self.stats.source_up.set(1);
                if std::mem::replace(&mut self.opened_before, true) && self.live {
                    self.stats.source_reconnects.inc();
                }
            }
            Event::Closed => {
                self.stats.source_up.set(0);
                self.down = true;
            }
            Event::RateCapped => self.latest.skip(),
            Event::Stale => self.latest.stale(),
            Event::Ended => return true,
        }
        false
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
