//! Every camera's tracker, in a striped-lock concurrent map.
//!
//! The map (dashmap: shards of `RwLock<HashMap>`) is touched only to find or create a camera's slot,
//! to evict idle ones and to count; each slot is an `Arc<Mutex<…>>`, so a tracker step locks one
//! camera, never a shard. No shard lock is held across an `.await`, an inference or a second map
//! access.
//!
//! Ordering: a frame reserves its `sequence` when admitted; when its detections are ready it is
//! parked until every earlier reserved frame of its camera is applied or abandoned, so frames are
//! tracked strictly in `sequence` order whatever order batches complete in. A frame whose sequence
//! is not above the last applied one is late (or a duplicate) and is never applied.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::analytics::{AnalyticsPlan, CameraAnalytics, FrameAnalytics, LineTotal, ZoneCount};
use super::{Observation, TrackedObject, Tracker, TrackerParams};

/// Where a frame stood in its camera's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameOrder {
    /// Applied to the tracker in sequence order.
    Applied,
    /// Its sequence was below the camera's last applied frame: not applied.
    Late { last_applied: u64 },
    /// The same sequence was already applied or is in flight: not applied.
    Duplicate,
}

/// A frame's tracking outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedFrame {
    pub sequence: u64,
    pub objects: Vec<TrackedObject>,
    /// Lines and zones, when the camera has any.
    pub analytics: Option<FrameAnalytics>,
}

/// One camera's line totals since its first frame and its zones' occupants in its last frame.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraCounts {
    pub camera_id: String,
    pub lines: Vec<LineTotal>,
    pub zones: Vec<ZoneCount>,
}

/// The answer to a frame asking to be tracked.
#[derive(Debug)]
pub enum Placement {
    Accepted(Ticket),
    Refused(FrameOrder),
    /// A camera not yet held, when the registry already holds `max_cameras`: nothing was stored.
    NoRoom {
        max_cameras: usize,
    },
}

enum Pending {
    /// Detections not ready yet.
    Waiting,
    Ready {
        observations: Vec<Observation>,
        reply: oneshot::Sender<TrackedFrame>,
    },
}

struct Camera {
    tracker: Tracker,
    analytics: Option<CameraAnalytics>,
    last_applied: Option<u64>,
    in_flight: BTreeMap<u64, Pending>,
    last_seen: Instant,
    /// Set when eviction removed this slot, so a racing admission retries with a fresh one.
    evicted: bool,
}

impl Camera {
    /// The frame at the head of the order is ready: [`Self::drain`] has a step to take.
    fn head_ready(&self) -> bool {
        self.in_flight.first_key_value().is_some_and(|(_, pending)| matches!(pending, Pending::Ready { .. }))
    }

    /// Applies every ready frame at the head of the order.
    fn drain(&mut self) {
        while let Some(entry) = self.in_flight.first_entry() {
            if matches!(entry.get(), Pending::Waiting) {
                break;
            }
            let sequence = *entry.key();
            if let Pending::Ready { observations, reply } = entry.remove() {
                let objects = self.tracker.step(&observations);
                let analytics = self.analytics.as_mut().map(|a| a.observe(&objects));
                self.last_applied = Some(sequence);
                // The receiver may be gone (client hung up); the step still counts.
                let _ = reply.send(TrackedFrame { sequence, objects, analytics });
            }
        }
    }
}

/// A reserved place in a camera's order. Complete it with the frame's detections, or drop it (the
/// frame failed or was shed) and later frames stop waiting for it.
pub struct Ticket {
    camera: Arc<Mutex<Camera>>,
    sequence: u64,
    done: bool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("sequence", &self.sequence).finish()
    }
}

impl Ticket {
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Which of the frame's boxes need an appearance embedding (`Tracker::needs_embedding`). While
    /// an earlier frame of the camera is still in flight the tracks are not where this frame will
    /// find them, so every box needs one.
    pub fn needs_embedding(&self, boxes: &[crate::detect::BBox]) -> Vec<bool> {
        let camera = self.camera.lock();
        if camera.in_flight.range(..self.sequence).next().is_some() {
            return vec![true; boxes.len()];
        }
        camera.tracker.needs_embedding(boxes)
    }

    /// Hands over the frame's detections; the receiver yields once every earlier frame of the
    /// camera has been applied or abandoned and this one has been tracked.
    pub fn complete(mut self, observations: Vec<Observation>) -> oneshot::Receiver<TrackedFrame> {
        let (reply, receiver) = oneshot::channel();
        self.done = true;
        let mut camera = self.camera.lock();
        camera.in_flight.insert(self.sequence, Pending::Ready { observations, reply });
        camera.drain();
        receiver
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut camera = self.camera.lock();
        camera.in_flight.remove(&self.sequence);
        if !camera.head_ready() {
            return;
        }
        drop(camera);
        // The frames this one held back are tracker steps, CPU work; a ticket is dropped where its
        // call was (shed, failed or cancelled), on an async thread, so they are taken on the
        // blocking pool when there is a runtime.
        let slot = self.camera.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || slot.lock().drain())),
            Err(_) => slot.lock().drain(),
        }
    }
}

/// Counts over all cameras at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    pub cameras: usize,
    pub confirmed_tracks: usize,
    pub tentative_tracks: usize,
    pub frames_in_flight: usize,
    pub cameras_evicted: u64,
    pub frames_late: u64,
    pub frames_duplicate: u64,
}

pub struct Registry {
    cameras: DashMap<String, Arc<Mutex<Camera>>>,
    /// Cameras held at most (new ones beyond it are refused; concurrent first frames of new
    /// cameras can pass it by as many as arrive at once).
    max_cameras: usize,
    params: TrackerParams,
    analytics: Arc<AnalyticsPlan>,
    idle_after: Duration,
    evicted: AtomicU64,
    late: AtomicU64,
    duplicate: AtomicU64,
}

impl Registry {
    pub fn new(params: TrackerParams, idle_after: Duration) -> Self {
        Self::with_analytics(params, idle_after, AnalyticsPlan::none())
    }

    /// A registry whose cameras also count crossings of `analytics`' lines and its zones' occupants.
    pub fn with_analytics(params: TrackerParams, idle_after: Duration, analytics: AnalyticsPlan) -> Self {
        Self {
            cameras: DashMap::new(),
            max_cameras: usize::MAX,
            params,
            analytics: Arc::new(analytics),
            idle_after,
            evicted: AtomicU64::new(0),
            late: AtomicU64::new(0),
            duplicate: AtomicU64::new(0),
        }
    }

    /// The same registry, holding at most `max` cameras.
    #[must_use]
    pub fn with_max_cameras(mut self, max: usize) -> Self {
        self.max_cameras = max;
        self
    }

    /// Reserves `sequence` in `camera_id`'s order, or says why the frame cannot be tracked.
    pub fn admit(&self, camera_id: &str, sequence: u64, now: Instant) -> Placement {
        loop {
            let Some(slot) = self.slot(camera_id, now) else {
                return Placement::NoRoom { max_cameras: self.max_cameras };
            };
            let mut camera = slot.lock();
            if camera.evicted {
                continue;
            }
            camera.last_seen = now;
            if let Some(last) = camera.last_applied
                && sequence <= last
            {
                return Placement::Refused(if sequence == last {
                    self.duplicate.fetch_add(1, Ordering::Relaxed);
                    FrameOrder::Duplicate
                } else {
                    self.late.fetch_add(1, Ordering::Relaxed);
                    FrameOrder::Late { last_applied: last }
                });
            }
            if camera.in_flight.contains_key(&sequence) {
                self.duplicate.fetch_add(1, Ordering::Relaxed);
                return Placement::Refused(FrameOrder::Duplicate);
            }
            camera.in_flight.insert(sequence, Pending::Waiting);
            drop(camera);
            return Placement::Accepted(Ticket { camera: slot, sequence, done: false });
        }
    }

    /// The camera's slot, created on first use. The shard lock is released before returning.
    /// `camera_id`'s state, made if there is room (`None`: a new camera and `max_cameras` held).
    fn slot(&self, camera_id: &str, now: Instant) -> Option<Arc<Mutex<Camera>>> {
        if let Some(slot) = self.cameras.get(camera_id) {
            return Some(slot.value().clone());
        }
        if self.cameras.len() >= self.max_cameras {
            return None;
        }
        let made = self
            .cameras
            .entry(camera_id.to_owned())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Camera {
                    tracker: Tracker::new(self.params),
                    analytics: self.analytics.for_camera(camera_id),
                    last_applied: None,
                    in_flight: BTreeMap::new(),
                    last_seen: now,
                    evicted: false,
                }))
            })
            .value()
            .clone();
        Some(made)
    }

    /// Every camera's slot at one moment, copied out so that no shard lock is held while a
    /// camera is locked (a camera is locked through a tracker step).
    fn slots(&self) -> Vec<(String, Arc<Mutex<Camera>>)> {
        self.cameras.iter().map(|e| (e.key().clone(), e.value().clone())).collect()
    }

    /// Drops cameras with no frame admitted for `idle_after` and none in flight; returns how many.
    pub fn evict_idle(&self, now: Instant) -> usize {
        let mut evicted = 0;
        for (camera_id, slot) in self.slots() {
            let mut camera = slot.lock();
            let idle =
                camera.in_flight.is_empty() && now.saturating_duration_since(camera.last_seen) >= self.idle_after;
            // Under the camera's lock, so no frame is admitted to it meanwhile; an admission that
            // found the slot before sees `evicted` and retries with a fresh one. The shard lock is
            // taken inside the camera's, never the other way round.
            if idle && self.cameras.remove_if(&camera_id, |_, held| Arc::ptr_eq(held, &slot)).is_some() {
                camera.evicted = true;
                evicted += 1;
            }
        }
        self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
        evicted
    }

    /// The lines and zones, and crossing totals over every camera since start (evicted ones too).
    pub fn analytics(&self) -> &AnalyticsPlan {
        &self.analytics
    }

    /// Line totals and zone occupants of `camera_id`, or of every camera with lines or zones.
    pub fn counts(&self, camera_id: Option<&str>) -> Vec<CameraCounts> {
        let counts = |camera_id: &str, slot: &Arc<Mutex<Camera>>| {
            let camera = slot.lock();
            camera.analytics.as_ref().map(|a| CameraCounts {
                camera_id: camera_id.to_owned(),
                lines: a.totals(),
                zones: a.last_occupancy().to_vec(),
            })
        };
        let mut all: Vec<CameraCounts> = match camera_id {
            Some(id) => {
                // Clone the slot so no shard lock is held while the camera is locked.
                let slot = self.cameras.get(id).map(|s| s.value().clone());
                slot.and_then(|s| counts(id, &s)).into_iter().collect()
            }
            None => self.slots().iter().filter_map(|(id, s)| counts(id, s)).collect(),
        };
        all.sort_by(|a, b| a.camera_id.cmp(&b.camera_id));
        all
    }

    pub fn stats(&self) -> RegistryStats {
        let mut stats = RegistryStats {
            cameras_evicted: self.evicted.load(Ordering::Relaxed),
            frames_late: self.late.load(Ordering::Relaxed),
            frames_duplicate: self.duplicate.load(Ordering::Relaxed),
            ..RegistryStats::default()
        };
        for (_, slot) in self.slots() {
            let camera = slot.lock();
            stats.cameras += 1;
            let confirmed = camera.tracker.confirmed_count();
            stats.confirmed_tracks += confirmed;
            stats.tentative_tracks += camera.tracker.tracks().len() - confirmed;
            stats.frames_in_flight += camera.in_flight.len();
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::BBox;

    fn person(x: f32) -> Observation {
        Observation {
            bbox: BBox { x1: x, y1: 100.0, x2: x + 40.0, y2: 180.0 },
            score: 0.9,
            class_id: 0,
            feature: vec![],
        }
    }

    fn accepted(a: Placement) -> Ticket {
        match a {
            Placement::Accepted(t) => t,
            Placement::Refused(why) => panic!("refused: {why:?}"),
            Placement::NoRoom { max_cameras } => panic!("no room past {max_cameras} cameras"),
        }
    }

    #[test]
    fn out_of_order_completion_is_applied_in_sequence_order() {
        let registry = Registry::new(TrackerParams { n_init: 1, ..TrackerParams::default() }, Duration::from_secs(60));
        let now = Instant::now();
        let t1 = accepted(registry.admit("cam", 1, now));
        let t2 = accepted(registry.admit("cam", 2, now));
        let t3 = accepted(registry.admit("cam", 3, now));
        // 3 and 2 finish first: they must wait for 1.
        let mut r3 = t3.complete(vec![person(20.0)]);
        let mut r2 = t2.complete(vec![person(10.0)]);
        assert!(r3.try_recv().is_err() && r2.try_recv().is_err());
        let mut r1 = t1.complete(vec![person(0.0)]);
        let (f1, f2, f3) = (r1.try_recv().unwrap(), r2.try_recv().unwrap(), r3.try_recv().unwrap());
        // One track, followed 0 → 10 → 20: only possible if applied as 1, 2, 3.
        assert_eq!([f1.objects[0].track_id, f2.objects[0].track_id, f3.objects[0].track_id], [1, 1, 1]);
        assert!(f3.objects[0].bbox.x1 > f2.objects[0].bbox.x1 && f2.objects[0].bbox.x1 > f1.objects[0].bbox.x1);
    }

    #[test]
    fn an_abandoned_frame_stops_blocking_its_successors() {
        let registry = Registry::new(TrackerParams::default(), Duration::from_secs(60));
        let now = Instant::now();
        let t1 = accepted(registry.admit("cam", 1, now));
        let t2 = accepted(registry.admit("cam", 2, now));
        let mut r2 = t2.complete(vec![person(0.0)]);
        assert!(r2.try_recv().is_err());
        drop(t1); // shed
        assert_eq!(r2.try_recv().unwrap().sequence, 2);
        assert_eq!(registry.stats().frames_in_flight, 0);
    }

    #[test]
    fn frames_held_back_by_a_dropped_ticket_are_stepped_on_the_blocking_pool() {
        // One blocking thread, kept busy: a step handed to the pool cannot have run yet.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let registry = Registry::new(TrackerParams::default(), Duration::from_secs(60));
            let now = Instant::now();
            let t1 = accepted(registry.admit("cam", 1, now));
            let t2 = accepted(registry.admit("cam", 2, now));
            let mut r2 = t2.complete(vec![person(0.0)]);
            let (release, released) = std::sync::mpsc::channel::<()>();
            let busy = tokio::task::spawn_blocking(move || released.recv());
            drop(t1); // its call was cancelled, here on the async thread
            assert!(r2.try_recv().is_err(), "frame 2 was stepped on the async thread that dropped frame 1");
            let _ = release.send(());
            let _ = busy.await;
            let tracked = tokio::time::timeout(Duration::from_secs(30), r2).await;
            assert_eq!(tracked.expect("stepped on the pool").expect("reply").sequence, 2);
        });
    }

    #[test]
    fn a_camera_locked_through_a_step_holds_up_no_other_camera() {
        let registry = Arc::new(Registry::new(TrackerParams::default(), Duration::ZERO));
        let now = Instant::now();
        drop(accepted(registry.admit("stepping", 1, now)).complete(vec![]));
        let slot = registry.cameras.get("stepping").map(|s| s.value().clone()).expect("slot");
        let stepping = slot.lock(); // as a tracker step holds it
        let housekeeping = {
            let registry = registry.clone();
            std::thread::spawn(move || {
                let _ = registry.stats();
                registry.evict_idle(now + Duration::from_secs(1))
            })
        };
        // Let housekeeping reach the locked camera (were it holding the shard, the admission
        // below would wait for the step).
        std::thread::sleep(Duration::from_millis(200));
        let (placed, placed_rx) = std::sync::mpsc::channel();
        let admitting = {
            let registry = registry.clone();
            std::thread::spawn(move || {
                // Enough new cameras that some share the stepping camera's shard (a map has a
                // few shards per core).
                let all =
                    (0..256).all(|i| matches!(registry.admit(&format!("cam-{i}"), 1, now), Placement::Accepted(_)));
                let _ = placed.send(all);
            })
        };
        let admitted = placed_rx.recv_timeout(Duration::from_secs(30));
        drop(stepping);
        let _ = (housekeeping.join(), admitting.join());
        assert_eq!(admitted, Ok(true), "new cameras in the stepping camera's shard waited for its step");
    }

    #[test]
    fn late_and_duplicate_frames_are_refused_and_counted() {
        let registry = Registry::new(TrackerParams::default(), Duration::from_secs(60));
        let now = Instant::now();
        let t5 = accepted(registry.admit("cam", 5, now));
        assert!(matches!(registry.admit("cam", 5, now), Placement::Refused(FrameOrder::Duplicate)));
        drop(t5.complete(vec![]));
        assert!(matches!(registry.admit("cam", 5, now), Placement::Refused(FrameOrder::Duplicate)));
        assert!(matches!(registry.admit("cam", 3, now), Placement::Refused(FrameOrder::Late { last_applied: 5 })));
        // Other cameras have their own order.
        assert!(matches!(registry.admit("other", 3, now), Placement::Accepted(_)));
        let stats = registry.stats();
        assert_eq!((stats.frames_duplicate, stats.frames_late, stats.cameras), (2, 1, 2));
    }

    #[test]
    fn idle_cameras_are_evicted_but_busy_ones_stay() {
        let registry = Registry::new(TrackerParams::default(), Duration::from_secs(10));
        let t0 = Instant::now();
        drop(accepted(registry.admit("idle", 1, t0)).complete(vec![person(0.0)]));
        let busy = accepted(registry.admit("busy", 1, t0));
        drop(accepted(registry.admit("recent", 1, t0 + Duration::from_secs(8))).complete(vec![]));
        assert_eq!(registry.evict_idle(t0 + Duration::from_secs(11)), 1);
        let stats = registry.stats();
        assert_eq!((stats.cameras, stats.cameras_evicted), (2, 1));
        drop(busy);
        assert_eq!(registry.evict_idle(t0 + Duration::from_secs(19)), 2);
        // An evicted camera starts again from scratch: its old order no longer applies.
        assert!(matches!(registry.admit("idle", 1, t0 + Duration::from_secs(20)), Placement::Accepted(_)));
    }

    #[test]
    fn each_camera_numbers_its_own_tracks() {
        let registry = Registry::new(TrackerParams { n_init: 1, ..TrackerParams::default() }, Duration::from_secs(60));
        let now = Instant::now();
        for cam in ["a", "b"] {
            let mut r = accepted(registry.admit(cam, 0, now)).complete(vec![person(0.0), person(100.0)]);
            let ids: Vec<u64> = r.try_recv().unwrap().objects.iter().map(|o| o.track_id).collect();
            assert_eq!(ids, vec![1, 2]);
        }
    }
}
