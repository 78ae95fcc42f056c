//! InFlightCaps: caps on frames in flight, per camera and in the whole server. A frame holds its
//! [`Admitted`] ticket until it is answered; the counts are the only state, and a camera's entry
//! goes away with its last frame, so memory is bounded by the frames in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::InspectError;

#[derive(Debug)]
pub struct InFlightCaps {
    per_camera: DashMap<String, usize>,
    in_flight: AtomicUsize,
    max_per_camera: usize,
    max_in_flight: usize,
}

/// A frame's place in flight; released on drop.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<InFlightCaps>,
    camera_id: String,
}

/// What a frame holds while any of its work exists: its place in flight and, once its size is
/// known, its decoded memory. The call and every piece of work done for the frame (on the CPU pool,
/// in a model queue) hold a clone, so a call that is cancelled holds both until its last piece of
/// work ends, and the caps bound what clients that walk away leave running.
#[derive(Debug, Clone)]
pub struct FrameHold(Arc<Held>);

#[derive(Debug)]
struct Held {
    _place: Admitted,
    memory: OnceLock<super::memory::MemoryLease>,
}

impl FrameHold {
    pub fn new(place: Admitted) -> Self {
        Self(Arc::new(Held { _place: place, memory: OnceLock::new() }))
    }

    /// Keeps the frame's memory lease with its place (a frame leases once; a second lease is
    /// given back at once).
    pub(super) fn keep(&self, lease: super::memory::MemoryLease) {
        let _ = self.0.memory.set(lease);
    }
}

impl InFlightCaps {
    pub fn new(max_per_camera: usize, max_in_flight: usize) -> Self {
        Self { per_camera: DashMap::new(), in_flight: AtomicUsize::new(0), max_per_camera, max_in_flight }
    }

    /// Frames in flight in the whole server.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Cameras with at least one frame in flight.
    pub fn cameras_in_flight(&self) -> usize {
        self.per_camera.len()
    }

    /// A ticket for one more frame of `camera_id`, or why there is none.
    pub fn admit(self: &Arc<Self>, camera_id: &str) -> Result<Admitted, InspectError> {
        let taken = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if taken >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(InspectError::ServerBusy { max: self.max_in_flight });
        }
        // The shard lock is held only for this count: nothing else is touched meanwhile.
        let admitted = match self.per_camera.entry(camera_id.to_owned()) {
            Entry::Occupied(entry) if *entry.get() >= self.max_per_camera => Err(*entry.get()),
            Entry::Occupied(mut entry) => {
                *entry.get_mut() += 1;
                Ok(())
            }
            Entry::Vacant(entry) => {
                entry.insert(1);
                Ok(())
            }
        };
        match admitted {
            Ok(()) => Ok(Admitted { admission: self.clone(), camera_id: camera_id.to_owned() }),
            Err(_) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                Err(InspectError::CameraBusy { camera_id: camera_id.to_owned(), max: self.max_per_camera })
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Entry::Occupied(mut entry) = self.admission.per_camera.entry(std::mem::take(&mut self.camera_id)) {
            if *entry.get() <= 1 {
                entry.remove();
            } else {
                *entry.get_mut() -= 1;
            }
        }
        self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_camera_gets_its_cap_and_no_more_until_a_frame_is_answered() {
        let admission = Arc::new(InFlightCaps::new(2, 100));
        let first = admission.admit("cam-1").expect("first");
        let _second = admission.admit("cam-1").expect("second");
        let refused = admission.admit("cam-1").expect_err("third is over the cap");
        assert!(matches!(refused, InspectError::CameraBusy { max: 2, .. }), "{refused}");
        assert!(refused.to_string().contains("cam-1"), "{refused}");
        // Other cameras are not affected.
        let _other = admission.admit("cam-2").expect("other camera");
        drop(first);
        let _third = admission.admit("cam-1").expect("room again after an answer");
        assert_eq!(admission.in_flight(), 3);
    }

    #[test]
    fn a_frames_place_is_given_back_with_the_last_clone_of_its_hold() {
        let admission = Arc::new(InFlightCaps::new(2, 100));
        let hold = FrameHold::new(admission.admit("cam-1").expect("admitted"));
        let held_by_work = hold.clone();
        drop(hold);
        assert_eq!(admission.in_flight(), 1, "the work still holds the frame's place");
        drop(held_by_work);
        assert_eq!(admission.in_flight(), 0);
    }

    #[test]
    fn the_server_cap_holds_across_cameras_and_refusals_leak_nothing() {
        let admission = Arc::new(InFlightCaps::new(5, 3));
        let tickets: Vec<_> = (0..3).map(|i| admission.admit(&format!("cam-{i}")).expect("admitted")).collect();
        for _ in 0..10 {
            let refused = admission.admit("cam-9").expect_err("server full");
            assert!(matches!(refused, InspectError::ServerBusy { max: 3 }), "{refused}");
        }
        assert_eq!(admission.in_flight(), 3);
        drop(tickets);
        assert_eq!(admission.in_flight(), 0);
        assert_eq!(admission.cameras_in_flight(), 0, "entries go with their last frame");
    }
}
