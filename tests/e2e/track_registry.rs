//! The tracker registry under real concurrency: many cameras, many threads, frames completing in
//! random order, evictions and stats calls running alongside.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use linesight::detect::BBox;
use linesight::track::{Observation, Placement, Registry, Ticket, TrackerParams};

const CAMERAS: usize = 32;
const FRAMES: u64 = 60;
const THREADS: usize = 8;

/// xorshift64*: a fixed, dependency-free shuffle.
fn shuffle<T>(items: &mut [T], state: &mut u64) {
    for i in (1..items.len()).rev() {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let j = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// One object per frame moving right by 10 px per sequence number.
fn observation(sequence: u64) -> Observation {
    let x = 10.0 * sequence as f32;
    Observation { bbox: BBox { x1: x, y1: 100.0, x2: x + 40.0, y2: 180.0 }, score: 0.9, class_id: 0, feature: vec![] }
}

#[test]
fn many_cameras_with_out_of_order_completion_are_tracked_in_sequence_order() {
    let _machine = crate::common::machine_shared();
    let registry =
        Arc::new(Registry::new(TrackerParams { n_init: 1, ..TrackerParams::default() }, Duration::from_secs(3600)));
    let stop = Arc::new(AtomicBool::new(false));
    // Stats and eviction sweeps run the whole time (nothing is idle long enough to go).
    let sweeper = {
        let (registry, stop) = (registry.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sweeps = 0;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(registry.evict_idle(Instant::now()), 0);
                let _ = registry.stats();
                sweeps += 1;
            }
            sweeps
        })
    };

    // Every camera admits its frames in order, in windows of 6; each window's tickets are
    // completed by THREADS threads in a random order.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut receivers = Vec::new();
    for window in (0..FRAMES).step_by(6) {
        let mut tickets: Vec<(usize, Ticket)> = Vec::new();
        for camera in 0..CAMERAS {
            for sequence in window..(window + 6).min(FRAMES) {
                match registry.admit(&format!("cam-{camera}"), sequence, Instant::now()) {
                    Placement::Accepted(t) => tickets.push((camera, t)),
                    Placement::Refused(why) => panic!("camera {camera} frame {sequence} refused: {why:?}"),
                    Placement::NoRoom { max_cameras } => panic!("camera {camera}: no room past {max_cameras} cameras"),
                }
            }
        }
        shuffle(&mut tickets, &mut rng);
        let chunks: Vec<Vec<(usize, Ticket)>> = {
            let mut chunks: Vec<Vec<_>> = (0..THREADS).map(|_| Vec::new()).collect();
            for (i, t) in tickets.into_iter().enumerate() {
                chunks[i % THREADS].push(t);
            }
            chunks
        };
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                std::thread::spawn(move || {
                    chunk
                        .into_iter()
                        .map(|(camera, t)| {
                            let sequence = t.sequence();
                            (camera, sequence, t.complete(vec![observation(sequence)]))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            receivers.extend(h.join().expect("worker"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(sweeper.join().expect("sweeper") > 0);

    // Every frame was tracked, and each camera's filtered x grows with sequence: the steps were
    // applied in order (out of order, the filter would be pulled back and forth).
    let mut per_camera: Vec<Vec<(u64, f32, u64)>> = vec![Vec::new(); CAMERAS];
    for (camera, sequence, mut rx) in receivers {
        let tracked = rx.try_recv().expect("every frame is tracked once all are complete");
        assert_eq!(tracked.sequence, sequence);
        assert_eq!(tracked.objects.len(), 1, "camera {camera} frame {sequence}");
        per_camera[camera].push((sequence, tracked.objects[0].bbox.x1, tracked.objects[0].track_id));
    }
    for (camera, mut frames) in per_camera.into_iter().enumerate() {
        frames.sort_by_key(|f| f.0);
        assert_eq!(frames.len() as u64, FRAMES);
        assert!(frames.iter().all(|f| f.2 == 1), "camera {camera} changed track id");
        for w in frames.windows(2) {
            assert!(w[1].1 > w[0].1, "camera {camera}: x {} at {} then {} at {}", w[0].1, w[0].0, w[1].1, w[1].0);
        }
    }
    let stats = registry.stats();
    assert_eq!((stats.cameras, stats.confirmed_tracks, stats.frames_in_flight), (CAMERAS, CAMERAS, 0));
}

#[test]
fn a_camera_evicted_while_frames_race_in_starts_over_cleanly() {
    let _machine = crate::common::machine_shared();
    let registry = Arc::new(Registry::new(TrackerParams::default(), Duration::ZERO));
    let handles: Vec<_> = (0..4)
        .map(|thread| {
            let registry = registry.clone();
            std::thread::spawn(move || {
                for sequence in 0..500u64 {
                    if thread == 0 {
                        registry.evict_idle(Instant::now());
                    } else if let Placement::Accepted(t) =
                        registry.admit("shared", sequence * 4 + thread, Instant::now())
                    {
                        drop(t.complete(vec![observation(sequence)]));
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("no deadlock, no panic");
    }
    assert_eq!(registry.stats().frames_in_flight, 0);
    // Idle now, the camera is evicted and starts over: sequence 0 is new again, not late.
    registry.evict_idle(Instant::now());
    assert_eq!(registry.stats().cameras, 0);
    let again = registry.admit("shared", 0, Instant::now());
    assert!(matches!(again, Placement::Accepted(_)), "the old order outlived eviction: {again:?}");
}

#[test]
fn a_client_cycling_camera_ids_is_refused_past_max_cameras_and_memory_stays_bounded() {
    let registry = Registry::new(TrackerParams::default(), Duration::from_secs(60)).with_max_cameras(100);
    let start = Instant::now();
    let (mut accepted, mut no_room) = (0usize, 0usize);
    for id in 0..100_000u64 {
        match registry.admit(&format!("cycling-{id}"), 1, start) {
            // A frame whose work is abandoned: the camera stays held, as its state would.
            Placement::Accepted(_) => accepted += 1,
            Placement::NoRoom { max_cameras } => {
                assert_eq!(max_cameras, 100);
                no_room += 1;
            }
            Placement::Refused(why) => panic!("camera {id} refused for order: {why:?}"),
        }
    }
    assert_eq!((accepted, no_room), (100, 99_900));
    assert_eq!(registry.stats().cameras, 100, "cameras held");
    // A camera already held is still served; once the held ones go idle, new ones get room.
    assert!(matches!(registry.admit("cycling-7", 2, start), Placement::Accepted(_)));
    assert_eq!(registry.evict_idle(start + Duration::from_secs(61)), 100);
    assert!(matches!(registry.admit("a new camera", 1, start + Duration::from_secs(61)), Placement::Accepted(_)));
}
