//! Tracking costs: one DeepSORT step at 10 / 50 / 200 tracks (embedder excluded), the embedder on a
//! frame's crops, and per-camera state maps under 1…8 threads.
//! Run: cargo bench --bench tracking
// A benchmark stops at the first broken expectation, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dashmap::DashMap;
use linesight::detect::BBox;
use linesight::engine::{ModelSession, OrtRuntime, SessionOptions};
use linesight::imaging::{self, CropBox, DecodeLimits, ImageEncoding, Preprocessor, TensorSpec};
use linesight::model::ModelManifest;
use linesight::pipeline::tensor_spec;
use linesight::track::{Observation, Placement, Registry, Tracker, TrackerParams};

/// The pipeline's embedding size (MobileNetV2).
const DIM: usize = 1280;

/// xorshift64*, deterministic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `n` people on a 40-px grid, walking right, each with its own appearance (+ noise).
fn scene(n: usize, frame: usize, identities: &[Vec<f32>], rng: &mut Rng) -> Vec<Observation> {
    (0..n)
        .map(|i| {
            let (col, row) = ((i % 20) as f32, (i / 20) as f32);
            let x = col * 60.0 + frame as f32 * 2.0;
            let y = row * 110.0;
            let feature = identities[i].iter().map(|v| v + 0.05 * (rng.unit() - 0.5)).collect();
            Observation { bbox: BBox { x1: x, y1: y, x2: x + 40.0, y2: y + 100.0 }, score: 0.9, class_id: 0, feature }
        })
        .collect()
}

fn tracker_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("tracker_step");
    let mut rng = Rng(7);
    // 128-d: the paper's embedding size; 1280-d: the bundled MobileNetV2 embedder's.
    for dim in [128usize, DIM] {
        for n in [10usize, 50, 200] {
            let identities: Vec<Vec<f32>> = (0..n).map(|_| (0..dim).map(|_| rng.unit() - 0.5).collect()).collect();
            let mut tracker = Tracker::new(TrackerParams::default());
            // 100 frames of history: every track confirmed, every gallery full (nn_budget 100).
            for frame in 0..100 {
                tracker.step(&scene(n, frame, &identities, &mut rng));
            }
            assert_eq!(tracker.confirmed_count(), n);
            assert!(tracker.tracks().iter().all(|t| t.gallery_len() == 100));
            let next = scene(n, 100, &identities, &mut rng);
            group.bench_with_input(BenchmarkId::new(format!("{dim}d_tracks"), n), &n, |b, _| {
                b.iter_batched(|| tracker.clone(), |mut t| t.step(&next), criterion::BatchSize::LargeInput)
            });
        }
    }
    group.finish();
}

fn embedder(c: &mut Criterion) {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let manifest = ModelManifest::load(&root.join("models/mobilenetv2-reid")).expect("manifest");
    let runtime = OrtRuntime::init(None).expect("ONNX Runtime (run scripts/setup)");
    let mut session = ModelSession::load(
        runtime,
        &manifest.name,
        &manifest.onnx_path(),
        &SessionOptions { intra_threads: 2, intra_op_spinning: false, ..SessionOptions::default() },
    )
    .expect("session");
    let jpeg = std::fs::read(root.join("tests/fixtures/vtest/frame_0250.jpg")).expect("frame");
    let limits = DecodeLimits { max_pixels: 40_000_000, max_side: 16_384 };
    let frame = imaging::decode(&jpeg, ImageEncoding::Jpeg, 0, 0, limits).expect("decode");
    let boxes: Vec<CropBox> = (0..10)
        .map(|i| CropBox { x1: 40.0 + 60.0 * i as f32, y1: 150.0, x2: 80.0 + 60.0 * i as f32, y2: 260.0 })
        .collect();
    let mut group = c.benchmark_group("embedder_10_crops");
    group.sample_size(20).measurement_time(Duration::from_secs(8));
    for (w, h) in [(128u32, 256u32), (64, 128), (224, 224)] {
        let spec = TensorSpec { width: w, height: h, ..tensor_spec(&manifest.input) };
        let mut pre = Preprocessor::new();
        let mut tensor = vec![0f32; boxes.len() * spec.len()];
        group.bench_function(BenchmarkId::new("crop", format!("{w}x{h}")), |b| {
            b.iter(|| {
                for (region, out) in boxes.iter().zip(tensor.chunks_exact_mut(spec.len())) {
                    pre.crop_into(&frame, *region, &spec, out).expect("crop");
                }
            })
        });
        group.bench_function(BenchmarkId::new("infer", format!("{w}x{h}")), |b| {
            b.iter(|| session.run([boxes.len(), 3, h as usize, w as usize], &tensor).expect("run"))
        });
    }
    group.finish();
}

/// Per-camera tracker state behind three map designs; the same mixed workload on each.
trait CameraMap: Sync {
    fn update(&self, camera: &str, observations: &[Observation]);
    fn read(&self, camera: &str) -> usize;
}

/// The registry's layout: a striped-lock map of per-camera mutexes; shard locks are held only to
/// find the slot.
struct Striped(DashMap<String, Arc<parking_lot::Mutex<Tracker>>>);
impl CameraMap for Striped {
    fn update(&self, camera: &str, observations: &[Observation]) {
        let slot = match self.0.get(camera) {
            Some(s) => s.value().clone(),
            None => self.0.entry(camera.to_owned()).or_default().value().clone(),
        };
        slot.lock().step(observations);
    }
    fn read(&self, camera: &str) -> usize {
        let slot = self.0.get(camera).map(|s| s.value().clone());
        slot.map_or(0, |s| s.lock().confirmed_count())
    }
}

struct Locked(Mutex<HashMap<String, Tracker>>);
impl CameraMap for Locked {
    fn update(&self, camera: &str, observations: &[Observation]) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(camera.to_owned()).or_insert_with(|| Tracker::new(TrackerParams::default())).step(observations);
    }
    fn read(&self, camera: &str) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(camera).map_or(0, Tracker::confirmed_count)
    }
}

struct ReadWrite(RwLock<HashMap<String, Tracker>>);
impl CameraMap for ReadWrite {
    fn update(&self, camera: &str, observations: &[Observation]) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.entry(camera.to_owned()).or_insert_with(|| Tracker::new(TrackerParams::default())).step(observations);
    }
    fn read(&self, camera: &str) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(camera).map_or(0, Tracker::confirmed_count)
    }
}

const CAMERAS: usize = 256;
const OPS_PER_THREAD: usize = 2_000;

/// Each thread: OPS_PER_THREAD operations on random cameras, 1 in 4 a tracker step with 4 people
/// (128-d appearance), the rest reads.
fn run_mixed(map: &dyn CameraMap, threads: usize, names: &[String], frames: &[Vec<Observation>]) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9 + t as u64);
                let mut sink = 0usize;
                for op in 0..OPS_PER_THREAD {
                    let camera = &names[(rng.next() % CAMERAS as u64) as usize];
                    if rng.next().is_multiple_of(4) {
                        map.update(camera, &frames[op % frames.len()]);
                    } else {
                        sink = sink.wrapping_add(map.read(camera));
                    }
                }
                std::hint::black_box(sink);
            });
        }
    });
}

fn camera_maps(c: &mut Criterion) {
    let names: Vec<String> = (0..CAMERAS).map(|i| format!("line-{}/cam-{i}", i % 8)).collect();
    let mut rng = Rng(11);
    let identities: Vec<Vec<f32>> = (0..4).map(|_| (0..128).map(|_| rng.unit() - 0.5).collect()).collect();
    let frames: Vec<Vec<Observation>> = (0..64).map(|f| scene(4, f, &identities, &mut rng)).collect();
    let mut group = c.benchmark_group("camera_map_mixed_25pct_updates");
    group.sample_size(10).measurement_time(Duration::from_secs(4));
    for threads in [1usize, 2, 4, 8] {
        group.throughput(criterion::Throughput::Elements((threads * OPS_PER_THREAD) as u64));
        let maps: [(&str, Box<dyn CameraMap>); 3] = [
            ("dashmap_per_camera_mutex", Box::new(Striped(DashMap::new()))),
            ("mutex_hashmap", Box::new(Locked(Mutex::new(HashMap::new())))),
            ("rwlock_hashmap", Box::new(ReadWrite(RwLock::new(HashMap::new())))),
        ];
        for (name, map) in &maps {
            group.bench_function(BenchmarkId::new(*name, threads), |b| {
                b.iter(|| run_mixed(map.as_ref(), threads, &names, &frames))
            });
        }
    }
    group.finish();

    // The real registry: admit + complete (ordering bookkeeping included). The same 8,192 frames
    // over 256 cameras each iteration, on a fresh registry, split across 1…8 threads; each thread
    // owns its cameras, so their frames arrive in order.
    let mut group = c.benchmark_group("registry_admit_complete_8192_frames");
    group.sample_size(10).measurement_time(Duration::from_secs(4));
    const TOTAL: usize = 8192;
    group.throughput(criterion::Throughput::Elements(TOTAL as u64));
    for threads in [1usize, 2, 4, 8] {
        group.bench_function(BenchmarkId::from_parameter(threads), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let registry = Registry::new(TrackerParams::default(), Duration::from_secs(3600));
                    let started = Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            let (registry, names, frames) = (&registry, &names, &frames);
                            s.spawn(move || {
                                let own: Vec<&String> = names.iter().skip(t).step_by(threads).collect();
                                for op in 0..TOTAL / threads {
                                    let camera = own[op % own.len()];
                                    let seq = (op / own.len()) as u64;
                                    if let Placement::Accepted(ticket) = registry.admit(camera, seq, Instant::now()) {
                                        drop(ticket.complete(frames[seq as usize % frames.len()].clone()));
                                    }
                                }
                            });
                        }
                    });
                    elapsed += started.elapsed();
                }
                elapsed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, tracker_step, embedder, camera_maps);
criterion_main!(benches);
