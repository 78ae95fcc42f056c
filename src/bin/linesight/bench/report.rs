//! What one load run measured: latency percentiles against the budget, the server's stage breakdown,
//! throughput, shed and over-budget fractions, per-camera fairness and the batch sizes formed.

use serde::Serialize;

use super::load::{LoadSpec, Mode, Outcome, Sample, ServerTimings};

/// Nearest-rank percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(values: &mut [f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Self { p50: at(0.50), p95: at(0.95), p99: at(0.99), max: values[values.len() - 1] }
    }
}

/// Server stage times of the served frames (ms).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageBreakdown {
    pub decode: Percentiles,
    pub preprocess: Percentiles,
    pub queue_wait: Percentiles,
    pub inference: Percentiles,
    pub postprocess: Percentiles,
    /// `track` pipelines only.
    pub embed: Percentiles,
    pub track: Percentiles,
    pub server_total: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fairness {
    /// The camera whose served frames had the highest p99, and that p99 (ms).
    pub worst_camera: usize,
    pub worst_camera_p99_ms: f64,
    pub best_camera_p99_ms: f64,
    /// The lowest share of a camera's frames answered within budget.
    pub worst_camera_within_budget: f64,
    /// The highest such share.
    pub best_camera_within_budget: f64,
    /// Every camera's figures, in camera order.
    pub cameras: Vec<CameraFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CameraFigures {
    pub camera: usize,
    pub frames: usize,
    pub within_budget_fraction: f64,
    /// p99 of its served frames (ms); `None` when none was served.
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub label: String,
    pub spec: LoadSpec,
    pub budget_ms: f64,
    /// Measured frames: sent after the warm-up.
    pub frames: usize,
    pub offered_fps: f64,
    /// Frames served (within or over budget) per second of the measured window.
    pub throughput_fps: f64,
    /// Frames served within budget per second of the measured window: what a line can count on.
    pub goodput_fps: f64,
    pub within_budget: usize,
    pub over_budget: usize,
    pub shed: usize,
    pub failed: usize,
    /// Failures by gRPC code name.
    pub failed_codes: Vec<(String, usize)>,
    pub within_budget_fraction: f64,
    pub over_budget_fraction: f64,
    pub shed_fraction: f64,
    /// End to end, as the cameras saw it, from sending each frame to its answer: served frames only.
    pub latency_ms: Percentiles,
    /// How late the cameras sent their frames against their schedule: the client's health. Large
    /// values mean the bench machine could not keep up and the load was lighter than asked.
    pub send_lag_ms: Percentiles,
    /// The p99 over every measured frame, a shed or failed frame counting as infinitely late:
    /// `None` when more than 1 % of frames were not served.
    pub p99_all_frames_ms: Option<f64>,
    pub stages_ms: StageBreakdown,
    pub fairness: Option<Fairness>,
    /// (batch size, frames that rode in a batch of that size).
    pub batch_sizes: Vec<(u32, usize)>,
    pub mean_batch: f64,
}

impl LoadReport {
    /// A load fits when 99 % of its frames were served within the budget.
    pub fn fits_budget(&self) -> bool {
        self.frames > 0 && self.within_budget_fraction >= 0.99
    }

    pub fn new(label: &str, spec: &LoadSpec, budget_ms: f64, samples: &[Sample]) -> Self {
        let served: Vec<&Sample> =
            samples.iter().filter(|s| matches!(s.outcome, Outcome::WithinBudget | Outcome::OverBudget)).collect();
        let count = |o: fn(&Outcome) -> bool| samples.iter().filter(|s| o(&s.outcome)).count();
        let within_budget = count(|o| *o == Outcome::WithinBudget);
        let over_budget = count(|o| *o == Outcome::OverBudget);
        let shed = count(|o| *o == Outcome::Shed);
        let failed = count(|o| matches!(o, Outcome::Failed(_)));
        let mut codes = std::collections::BTreeMap::<String, usize>::new();
        for s in samples {
            if let Outcome::Failed(code) = s.outcome {
                *codes.entry(format!("{:?}", tonic::Code::from_i32(code))).or_default() += 1;
            }
        }
        let frames = samples.len();
        let window_s = spec.duration.as_secs_f64().max(1e-9);
        let fraction = |n: usize| if frames == 0 { 0.0 } else { n as f64 / frames as f64 };
        let mut latencies: Vec<f64> = served.iter().map(|s| s.latency_ms).collect();
        let latency_ms = Percentiles::of(&mut latencies);
        let mut lags: Vec<f64> = samples.iter().map(|s| s.send_lag_ms).collect();
        let send_lag_ms = Percentiles::of(&mut lags);
        let p99_all_frames_ms = {
            let mut all: Vec<f64> =
                samples.iter().map(|s| if served_sample(s) { s.latency_ms } else { f64::INFINITY }).collect();
            let p = Percentiles::of(&mut all).p99;
            p.is_finite().then_some(p)
        };
        let stage = |f: fn(&ServerTimings) -> u64| {
            let mut v: Vec<f64> = served.iter().map(|s| f(&s.timings) as f64 / 1e3).collect();
            Percentiles::of(&mut v)
        };
        let stages_ms = StageBreakdown {
            decode: stage(|t| t.decode),
            preprocess: stage(|t| t.preprocess),
            queue_wait: stage(|t| t.queue_wait),
            inference: stage(|t| t.inference),
            postprocess: stage(|t| t.postprocess),
            embed: stage(|t| t.embed),
            track: stage(|t| t.track),
            server_total: stage(|t| t.total),
        };
        let mut batches = std::collections::BTreeMap::<u32, usize>::new();
        for s in &served {
            *batches.entry(s.batch_size).or_default() += 1;
        }
        let batch_sizes: Vec<(u32, usize)> = batches.into_iter().collect();
        let mean_batch = if served.is_empty() {
            0.0
        } else {
            served.iter().map(|s| f64::from(s.batch_size)).sum::<f64>() / served.len() as f64
        };
        Self {
            label: label.to_owned(),
            spec: spec.clone(),
            budget_ms,
            frames,
            offered_fps: match spec.mode {
                Mode::Closed => frames as f64 / window_s,
                Mode::Stream | Mode::Unary => spec.cameras as f64 * spec.fps,
            },
            throughput_fps: served.len() as f64 / window_s,
            goodput_fps: within_budget as f64 / window_s,
            within_budget,
            over_budget,
            shed,
            failed,
            failed_codes: codes.into_iter().collect(),
            within_budget_fraction: fraction(within_budget),
            over_budget_fraction: fraction(over_budget),
            shed_fraction: fraction(shed),
            latency_ms,
            send_lag_ms,
            p99_all_frames_ms,
            stages_ms,
            fairness: fairness(samples, spec.cameras),
            batch_sizes,
            mean_batch,
        }
    }

    /// One line per figure, for the terminal.
    pub fn summary(&self) -> String {
        let l = &self.latency_ms;
        let s = &self.stages_ms;
        let mut out = format!(
            "{label}: {load} ({pipeline}), budget {budget:.0} ms, {frames} frames measured\n\
             \x20 end to end ms   p50 {p50:.1}  p95 {p95:.1}  p99 {p99:.1}  max {max:.1}\n\
             \x20 client send lag ms p50 {lag50:.2}  p99 {lag99:.2}\n\
             \x20 within budget {wb:.1} %  over budget {ob:.1} %  shed {sh:.1} %  failed {fl}\n\
             \x20 goodput {gp:.1} fps within budget, throughput {tp:.1} fps (offered {of:.1}), mean batch {mb:.2}\n\
             \x20 server p50 ms   decode {d:.2}  preprocess {pr:.2}  queue {q:.2}  inference {i:.2}  postprocess {po:.2}",
            label = self.label,
            load = match self.spec.mode {
                Mode::Closed => format!("{} clients back to back", self.spec.cameras),
                mode => format!("{} cameras x {} fps ({mode:?})", self.spec.cameras, self.spec.fps),
            },
            pipeline = self.spec.pipeline,
            budget = self.budget_ms,
            frames = self.frames,
            p50 = l.p50,
            p95 = l.p95,
            p99 = l.p99,
            max = l.max,
            lag50 = self.send_lag_ms.p50,
            lag99 = self.send_lag_ms.p99,
            wb = self.within_budget_fraction * 100.0,
            ob = self.over_budget_fraction * 100.0,
            sh = self.shed_fraction * 100.0,
            fl = self.failed,
            gp = self.goodput_fps,
            tp = self.throughput_fps,
            of = self.offered_fps,
            mb = self.mean_batch,
            d = s.decode.p50,
            pr = s.preprocess.p50,
            q = s.queue_wait.p50,
            i = s.inference.p50,
            po = s.postprocess.p50,
        );
        if s.embed.max > 0.0 || s.track.max > 0.0 {
            out += &format!("  embed {:.2}  track {:.2}", s.embed.p50, s.track.p50);
        }
        out += &format!("  total {:.2}\n", s.server_total.p50);
        if let Some(f) = &self.fairness {
            out += &format!(
                "  fairness       worst camera #{} p99 {:.1} ms, best camera p99 {:.1} ms, within budget worst camera {:.1} % best {:.1} %\n",
                f.worst_camera,
                f.worst_camera_p99_ms,
                f.best_camera_p99_ms,
                f.worst_camera_within_budget * 100.0,
                f.best_camera_within_budget * 100.0
            );
        }
        if !self.failed_codes.is_empty() {
            out += &format!("  failures       {:?}\n", self.failed_codes);
        }
        out
    }
}

fn served_sample(s: &Sample) -> bool {
    matches!(s.outcome, Outcome::WithinBudget | Outcome::OverBudget)
}

fn fairness(samples: &[Sample], cameras: usize) -> Option<Fairness> {
    let mut per_camera: Vec<(Vec<f64>, usize, usize)> = vec![(Vec::new(), 0, 0); cameras];
    for s in samples {
        let Some(entry) = per_camera.get_mut(s.camera) else { continue };
        entry.2 += 1;
        if served_sample(s) {
            entry.0.push(s.latency_ms);
        }
        if s.outcome == Outcome::WithinBudget {
            entry.1 += 1;
        }
    }
    let mut worst: Option<(usize, f64)> = None;
    let mut best = f64::INFINITY;
    let mut worst_within = 1.0f64;
    let mut best_within = 0.0f64;
    let mut cameras = Vec::new();
    for (camera, (latencies, within, total)) in per_camera.iter_mut().enumerate() {
        if *total == 0 {
            continue;
        }
        let within_budget_fraction = *within as f64 / *total as f64;
        worst_within = worst_within.min(within_budget_fraction);
        best_within = best_within.max(within_budget_fraction);
        let p99_ms = (!latencies.is_empty()).then(|| Percentiles::of(latencies).p99);
        cameras.push(CameraFigures { camera, frames: *total, within_budget_fraction, p99_ms });
        let Some(p99) = p99_ms else { continue };
        best = best.min(p99);
        if worst.is_none_or(|(_, w)| p99 > w) {
            worst = Some((camera, p99));
        }
    }
    let (worst_camera, worst_camera_p99_ms) = worst?;
    Some(Fairness {
        worst_camera,
        worst_camera_p99_ms,
        best_camera_p99_ms: best,
        worst_camera_within_budget: worst_within,
        best_camera_within_budget: best_within,
        cameras,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(camera: usize, latency_ms: f64, outcome: Outcome, batch_size: u32) -> Sample {
        Sample {
            camera,
            sequence: 0,
            due_s: 0.0,
            latency_ms,
            send_lag_ms: 0.5,
            outcome,
            timings: ServerTimings { inference: 20_000, total: 25_000, ..ServerTimings::default() },
            batch_size,
        }
    }

    fn spec(cameras: usize) -> LoadSpec {
        LoadSpec {
            pipeline: "detect".into(),
            cameras,
            fps: 10.0,
            duration: Duration::from_secs(2),
            warmup: Duration::ZERO,
            mode: Mode::Stream,
            budget_ms: 0,
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=200).map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (100.0, 190.0, 198.0, 200.0));
        assert_eq!(Percentiles::of(&mut [7.0]), Percentiles { p50: 7.0, p95: 7.0, p99: 7.0, max: 7.0 });
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }

    #[test]
    fn shed_frames_count_against_the_budget_and_fairness_finds_the_slow_camera() {
        // Camera 0: 99 fast frames and one shed; camera 1: 100 frames, slow.
        let mut samples: Vec<Sample> = (0..99).map(|_| sample(0, 20.0, Outcome::WithinBudget, 2)).collect();
        samples.push(sample(0, 5.0, Outcome::Shed, 0));
        samples.extend((0..100).map(|i| sample(1, 60.0 + f64::from(i), Outcome::OverBudget, 4)));
        let report = LoadReport::new("t", &spec(2), 83.0, &samples);
        assert_eq!((report.frames, report.within_budget, report.over_budget, report.shed), (200, 99, 100, 1));
        assert!((report.within_budget_fraction - 0.495).abs() < 1e-12);
        assert!(!report.fits_budget());
        // Served frames only: the shed frame's 5 ms does not flatter the figures.
        assert_eq!(report.latency_ms.max, 159.0);
        // 1 of 200 unserved is within the 1 % the all-frames p99 tolerates.
        assert_eq!(report.p99_all_frames_ms, Some(158.0));
        let fairness = report.fairness.expect("fairness");
        assert_eq!(fairness.worst_camera, 1);
        assert_eq!(fairness.best_camera_p99_ms, 20.0);
        assert_eq!(fairness.worst_camera_within_budget, 0.0);
        assert_eq!(fairness.best_camera_within_budget, 0.99);
        let per_camera: Vec<(usize, usize, f64, Option<f64>)> =
            fairness.cameras.iter().map(|c| (c.camera, c.frames, c.within_budget_fraction, c.p99_ms)).collect();
        assert_eq!(per_camera, vec![(0, 100, 0.99, Some(20.0)), (1, 100, 0.0, Some(158.0))]);
        assert_eq!(report.batch_sizes, vec![(2, 99), (4, 100)]);
        assert!((report.mean_batch - (99.0 * 2.0 + 400.0) / 199.0).abs() < 1e-12);
        // 199 served frames over a 2 s window.
        assert!((report.throughput_fps - 99.5).abs() < 1e-12);
        // 99 of them within budget.
        assert!((report.goodput_fps - 49.5).abs() < 1e-12);
        assert_eq!(report.stages_ms.inference.p50, 20.0);
    }

    #[test]
    fn a_load_fits_when_99_percent_are_within_budget() {
        let mut samples: Vec<Sample> = (0..99).map(|_| sample(0, 20.0, Outcome::WithinBudget, 1)).collect();
        samples.push(sample(0, 100.0, Outcome::Failed(13), 0));
        let report = LoadReport::new("t", &spec(1), 83.0, &samples);
        assert!(report.fits_budget());
        assert_eq!(report.failed_codes, vec![("Internal".to_owned(), 1)]);
        samples.push(sample(0, 100.0, Outcome::Shed, 0));
        assert!(!LoadReport::new("t", &spec(1), 83.0, &samples).fits_budget());
        assert_eq!(LoadReport::new("t", &spec(1), 83.0, &samples).p99_all_frames_ms, None);
    }
}
