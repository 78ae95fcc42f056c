//! How old a live frame is when it is read, and which frames are too old to send.
//!
//! The read time alone says nothing about age: FFmpeg buffers about a second of a stream while it
//! opens it, and hands those frames out in a burst; a decoder holds a frame back and releases it
//! when a stalled stream times out, seconds later. Two rules catch them:
//!
//! - **Source timestamps.** An RTSP stream's presentation times are the camera's clock. For each
//!   frame, `lag = read time − presentation time` (an unknown constant plus the frame's delay); the
//!   frame's age is its lag above the smallest lag of the last [`LAG_WINDOW`]: how much later than
//!   the freshest recent frame it arrives. The window, not the whole run, so that a camera clock
//!   that drifts from the host's does not build up into a false age. A clock that jumps (back, or
//!   forward by more than [`MAX_PTS_STEP`]) starts the window again.
//! - **Catching up after an open.** Frames already buffered come back from a read at decode speed;
//!   a live one makes the read wait for it. Until a read waits at least half a frame period (or
//!   [`CATCH_UP_LIMIT`] has passed), frames are dropped as buffered.
//!
//! A frame is dropped when either rule says it is older than `max_frame_age_ms`; the age of a kept
//! frame is subtracted from its read time to give its capture time, never earlier than the
//! previous frame's.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Lags are compared with the smallest of this long a window.
pub const LAG_WINDOW: Duration = Duration::from_secs(10);
/// A step in presentation time above this is a new stream, not a late frame.
pub const MAX_PTS_STEP: Duration = Duration::from_secs(10);
/// After an open, frames are dropped as buffered for at most this long.
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(2);
/// The frame period assumed when the source says none.
const DEFAULT_PERIOD: Duration = Duration::from_millis(40);

/// What to do with a frame just read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Judgement {
    /// Send it; it was captured `age` before it was read.
    Fresh { age: Duration },
    /// Drop it: it was buffered before the source opened, or is older than the limit.
    Stale { why: Staleness },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staleness {
    BufferedAtOpen,
    OverAge,
}

/// One live source's frame ages, from one open to the next.
pub struct FrameClock {
    max_age: Duration,
    /// Reference point for lags, in milliseconds.
    origin: Instant,
    /// `(read at, lag ms)`, lags increasing: the front is the window's smallest.
    lags: VecDeque<(Instant, f64)>,
    last_pts_ms: Option<f64>,
    period: Duration,
    catching_up_until: Option<Instant>,
    last_capture: Option<Instant>,
}

impl FrameClock {
    pub fn new(max_age: Duration) -> Self {
        let now = Instant::now();
        Self {
            max_age,
            origin: now,
            lags: VecDeque::new(),
            last_pts_ms: None,
            period: DEFAULT_PERIOD,
            catching_up_until: None,
            last_capture: None,
        }
    }

    /// The source has just opened, at `fps` if it says so: what came before says nothing of its frames.
    pub fn opened(&mut self, now: Instant, fps: Option<f64>) {
        self.lags.clear();
        self.last_pts_ms = None;
        self.period = fps
            .filter(|fps| fps.is_finite() && (1.0..=1000.0).contains(fps))
            .map_or(DEFAULT_PERIOD, |fps| Duration::from_secs_f64(1.0 / fps));
        self.catching_up_until = Some(now + CATCH_UP_LIMIT);
    }

    /// Judges a frame whose read began at `read_began` and returned at `read_at`, with the
    /// source's presentation time `pts_ms` where it has trustworthy ones.
    pub fn judge(&mut self, read_began: Instant, read_at: Instant, pts_ms: Option<f64>) -> Judgement {
        let age = self.age_from_timestamps(read_at, pts_ms);
        if let Some(until) = self.catching_up_until {
            let waited = read_at.saturating_duration_since(read_began);
            if read_at < until && waited < self.period / 2 {
                return Judgement::Stale { why: Staleness::BufferedAtOpen };
            }
            self.catching_up_until = None;
        }
        if age > self.max_age {
            return Judgement::Stale { why: Staleness::OverAge };
        }
        Judgement::Fresh { age }
    }

    /// The capture time of a frame read at `read_at` and judged `age` old: never before the last one's.
    pub fn capture_time(&mut self, read_at: Instant, age: Duration) -> Instant {
        let captured = read_at.checked_sub(age).unwrap_or(read_at);
        let captured = self.last_capture.map_or(captured, |last| captured.max(last));
        self.last_capture = Some(captured);
        captured
    }

    fn age_from_timestamps(&mut self, read_at: Instant, pts_ms: Option<f64>) -> Duration {
        let Some(pts_ms) = pts_ms.filter(|pts| pts.is_finite()) else { return Duration::ZERO };
        let step_ms = self.last_pts_ms.map(|last| pts_ms - last);
        self.last_pts_ms = Some(pts_ms);
        match step_ms {
            Some(step) if step > 0.0 && step <= MAX_PTS_STEP.as_secs_f64() * 1e3 => {
                // A steady stream's steps are its frame period (at most a second, for the catch-up rule).
                if step <= 1000.0 {
                    self.period = Duration::from_secs_f64(step / 1e3);
                }
            }
            // The first frame, or a clock that went back or leapt: a new window.
            _ => self.lags.clear(),
        }
        let lag = read_at.saturating_duration_since(self.origin).as_secs_f64() * 1e3 - pts_ms;
        while self.lags.front().is_some_and(|(at, _)| read_at.saturating_duration_since(*at) > LAG_WINDOW) {
            self.lags.pop_front();
        }
        while self.lags.back().is_some_and(|(_, back)| *back >= lag) {
            self.lags.pop_back();
        }
        self.lags.push_back((read_at, lag));
        let smallest = self.lags.front().map_or(lag, |(_, smallest)| *smallest);
        Duration::from_secs_f64(((lag - smallest) / 1e3).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_AGE: Duration = Duration::from_millis(80);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A live 25 fps stream read as it comes: each read waits ~35 ms for its frame.
    fn live(clock: &mut FrameClock, start: Instant, from: u64, to: u64, pts_offset: f64) -> Vec<Judgement> {
        (from..to)
            .map(|i| {
                let read_at = start + ms(i * 40 + 3);
                clock.judge(read_at - ms(35), read_at, Some(i as f64 * 40.0 + pts_offset))
            })
            .collect()
    }

    #[test]
    fn a_steady_live_stream_is_fresh_throughout() {
        let start = Instant::now();
        let mut clock = FrameClock::new(MAX_AGE);
        clock.opened(start, Some(25.0));
        let judged = live(&mut clock, start, 0, 500, 0.0);
        assert!(judged.iter().all(|j| *j == Judgement::Fresh { age: Duration::ZERO }), "{judged:?}");
    }

    #[test]
    fn frames_buffered_while_the_source_opened_are_dropped_until_a_read_waits() {
        let start = Instant::now();
        let mut clock = FrameClock::new(MAX_AGE);
        clock.opened(start, Some(25.0));
        // 28 frames (1.1 s) come back at decode speed, 4 ms apart, then the stream is live.
        let mut judged: Vec<Judgement> =
            (0..28u64).map(|i| clock.judge(start + ms(i * 4), start + ms(i * 4 + 4), Some(i as f64 * 40.0))).collect();
        let burst_end = start + ms(28 * 4);
        for i in 28..40u64 {
            let read_at = burst_end + ms((i - 27) * 40);
            judged.push(clock.judge(read_at - ms(35), read_at, Some(i as f64 * 40.0)));
        }
        let buffered = judged.iter().filter(|j| **j == Judgement::Stale { why: Staleness::BufferedAtOpen }).count();
        assert_eq!(buffered, 28, "{judged:?}");
        assert!(judged[28..].iter().all(|j| matches!(j, Judgement::Fresh { .. })), "{judged:?}");
    }

    #[test]
    fn catching_up_ends_by_its_limit_even_if_no_read_waits() {
        let start = Instant::now();
        let mut clock = FrameClock::new(Duration::from_secs(60));
        clock.opened(start, Some(25.0));
        let at = start + CATCH_UP_LIMIT + ms(1);
        assert!(matches!(clock.judge(at - ms(1), at, None), Judgement::Fresh { .. }));
    }

    #[test]
    fn the_frame_a_stall_releases_at_the_read_timeout_is_over_age() {
        let start = Instant::now();
        let mut clock = FrameClock::new(MAX_AGE);
        clock.opened(start, Some(25.0));
        live(&mut clock, start, 0, 100, 0.0);
        // The camera stalls after frame 99; the decoder's held frame 100 comes out 3 s later.
        let released_at = start + ms(99 * 40 + 3 + 3_000);
        let judged = clock.judge(released_at - ms(3_000), released_at, Some(100.0 * 40.0));
        assert_eq!(judged, Judgement::Stale { why: Staleness::OverAge });
        // The camera resumes 8 s after it stalled, its clock 8 s on: fresh again.
        let resumed = live(&mut clock, start, 300, 310, 0.0);
        assert!(resumed.iter().all(|j| matches!(j, Judgement::Fresh { .. })), "{resumed:?}");
    }

    #[test]
    fn a_camera_clock_slower_than_the_host_does_not_age_its_frames() {
        let start = Instant::now();
        let mut clock = FrameClock::new(MAX_AGE);
        clock.opened(start, Some(25.0));
        // 1,000 ppm slow: 3.6 s behind after an hour.
        let judged: Vec<Judgement> = (0..90_000u64)
            .map(|i| {
                let read_at = start + ms(i * 40 + 3);
                clock.judge(read_at - ms(35), read_at, Some(i as f64 * 40.0 * 0.999))
            })
            .collect();
        let worst = judged
            .iter()
            .map(|j| match j {
                Judgement::Fresh { age } => *age,
                Judgement::Stale { .. } => Duration::MAX,
            })
            .max()
            .unwrap();
        assert!(worst <= ms(11), "the worst age in an hour: {worst:?}");
    }

    #[test]
    fn a_stream_that_starts_again_from_zero_is_not_old() {
        let start = Instant::now();
        let mut clock = FrameClock::new(MAX_AGE);
        clock.opened(start, Some(25.0));
        live(&mut clock, start, 0, 50, 0.0);
        let judged = live(&mut clock, start, 50, 60, -2_000.0);
        assert!(judged.iter().all(|j| matches!(j, Judgement::Fresh { .. })), "{judged:?}");
    }

    #[test]
    fn capture_times_never_go_back() {
        let start = Instant::now();
        let mut clock = FrameClock::new(MAX_AGE);
        let first = clock.capture_time(start + ms(100), ms(10));
        let second = clock.capture_time(start + ms(105), ms(50));
        assert_eq!(first, start + ms(90));
        assert_eq!(second, first, "a frame read later but judged older is not stamped before the last one");
    }
}
