//! The newest frame of each camera, between its capture process and its sender: a new frame
//! replaces the waiting one, so that a slow server costs dropped frames, never lag or memory.

use std::sync::Arc;
use std::time::Instant;

use opencv::core::Mat;
use parking_lot::Mutex;
use tokio::sync::Notify;

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

    /// A frame read from the source but dropped at capture as too old to send.
    pub fn stale(&self) {
        let slot = self.slot.lock();
        if !slot.ended {
            self.stats.captured.inc();
            self.stats.stale.inc();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::stats::BridgeMetrics;
    use std::time::Duration;

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
}
