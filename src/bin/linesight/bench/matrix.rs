//! `linesight bench --matrix`: admission judged where nobody tuned it. A grid of background load
//! (busy cores in another process) × load shape (one camera at 10 fps, open loop at three times
//! capacity, six closed-loop clients) × pipeline, each cell against the capacity measured under the
//! same background in the same run: one client calling back to back, its served frames per second.
//!
//! A cell's bar is its goodput over what it could attain: the capacity, or the offered rate where
//! that is lower (one camera at 10 fps offers less than a quiet machine's capacity).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::load::{LoadSpec, Mode, Sample};
use super::report::LoadReport;
use super::{BackgroundLoad, BenchError, BenchOptions, Machine, OwnServer, Target};
use crate::remote::Access;

/// What the grid spans.
#[derive(Debug, Clone)]
pub struct MatrixSpec {
    pub pipelines: Vec<String>,
    /// Busy cores in another process, one row of the grid each.
    pub backgrounds: Vec<usize>,
    /// Measured time of each run (the capacity run's too).
    pub duration: Duration,
    pub warmup: Duration,
    /// Service-time traces (one client back to back, per pipeline and background) go here as CSV.
    pub trace_dir: Option<PathBuf>,
}

/// The load shapes of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// One camera streaming at 10 fps.
    OneCamera,
    /// Cameras at 10 fps offering three times the capacity (open loop).
    ThreeTimesCapacity,
    /// Six clients calling `Inspect` back to back.
    SixClosedClients,
}

impl Shape {
    const ALL: [Shape; 3] = [Shape::OneCamera, Shape::ThreeTimesCapacity, Shape::SixClosedClients];

    fn label(self) -> &'static str {
        match self {
            Shape::OneCamera => "1 camera x 10 fps",
            Shape::ThreeTimesCapacity => "3x capacity, open loop",
            Shape::SixClosedClients => "6 closed-loop clients",
        }
    }

    /// Overload shapes must keep 95 % of what they serve within budget.
    fn overload(self) -> bool {
        !matches!(self, Shape::OneCamera)
    }
}

/// One cell of the grid.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub pipeline: String,
    pub background_cores: usize,
    pub shape: Shape,
    /// One client back to back, same pipeline and background: served frames per second.
    pub capacity_fps: f64,
    pub offered_fps: f64,
    pub goodput_fps: f64,
    /// Goodput over min(capacity, offered).
    pub goodput_over_attainable: f64,
    /// Frames within budget among those served (the rest were answered late).
    pub served_within_budget: f64,
    /// Served frames' p99, ms.
    pub p99_ms: f64,
    /// The worst camera's frames within budget over the best one's (several cameras only).
    pub worst_over_best_camera: Option<f64>,
    /// Whether the cell meets its bar: goodput ≥ 0.8 of attainable; for overload shapes also
    /// ≥ 95 % of served frames within budget; worst camera ≥ 0.8 of the best.
    pub meets_bar: bool,
    pub report: LoadReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatrixReport {
    pub machine: Machine,
    pub budget_ms: f64,
    /// The capacity runs, one per pipeline and background.
    pub capacities: Vec<LoadReport>,
    pub cells: Vec<Cell>,
}

impl Cell {
    fn new(pipeline: &str, background_cores: usize, shape: Shape, capacity_fps: f64, report: LoadReport) -> Self {
        let attainable = capacity_fps.min(report.offered_fps);
        let goodput_over_attainable = if attainable > 0.0 { report.goodput_fps / attainable } else { 0.0 };
        let served = report.within_budget + report.over_budget;
        let served_within_budget = if served == 0 { 0.0 } else { report.within_budget as f64 / served as f64 };
        // Frames within budget per camera: with closed-loop clients the frames each sends differ (a
        // client answered sooner sends more), so shares of frames sent would not compare.
        let worst_over_best_camera = report.fairness.as_ref().filter(|f| f.cameras.len() > 1).map(|f| {
            let within: Vec<f64> =
                f.cameras.iter().map(|c| (c.frames as f64 * c.within_budget_fraction).round()).collect();
            let (worst, best) = within.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            if best > 0.0 { worst / best } else { 0.0 }
        });
        let meets_bar = goodput_over_attainable >= 0.8
            && (!shape.overload() || served_within_budget >= 0.95)
            && worst_over_best_camera.is_none_or(|r| r >= 0.8);
        Self {
            pipeline: pipeline.to_owned(),
            background_cores,
            shape,
            capacity_fps,
            offered_fps: report.offered_fps,
            goodput_fps: report.goodput_fps,
            goodput_over_attainable,
            served_within_budget,
            p99_ms: report.latency_ms.p99,
            worst_over_best_camera,
            meets_bar,
            report,
        }
    }
}

impl MatrixReport {
    /// The grid as a Markdown table.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| pipeline | background | load | capacity fps | offered fps | goodput fps | goodput / attainable | served within budget | p99 ms | worst / best camera | bar |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for c in &self.cells {
            out += &format!(
                "| {} | {} busy | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} % | {:.0} | {} | {} |\n",
                c.pipeline,
                c.background_cores,
                c.shape.label(),
                c.capacity_fps,
                c.offered_fps,
                c.goodput_fps,
                c.goodput_over_attainable,
                c.served_within_budget * 100.0,
                c.p99_ms,
                c.worst_over_best_camera.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
                if c.meets_bar { "met" } else { "MISSED" },
            );
        }
        out
    }
}

/// The frames one client sent back to back, as a service-time trace: per served frame, its decode,
/// preprocess and inference times in µs, in the order they were answered.
fn write_trace(dir: &std::path::Path, name: &str, samples: &[Sample]) -> Result<(), BenchError> {
    let io =
        |e: std::io::Error| BenchError::Trace { path: dir.join(name).display().to_string(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join(name)).map_err(io)?);
    writeln!(file, "decode_us,preprocess_us,inference_us").map_err(io)?;
    let mut served: Vec<&Sample> = samples
        .iter()
        .filter(|s| matches!(s.outcome, super::load::Outcome::WithinBudget | super::load::Outcome::OverBudget))
        .collect();
    served.sort_by(|a, b| a.due_s.total_cmp(&b.due_s).then(a.sequence.cmp(&b.sequence)));
    for s in served {
        writeln!(file, "{},{},{}", s.timings.decode, s.timings.preprocess, s.timings.inference).map_err(io)?;
    }
    file.flush().map_err(io)
}

/// Runs the grid on a server of the bench's own (the background load must share its machine).
pub async fn run(options: &BenchOptions, spec: &MatrixSpec) -> Result<MatrixReport, BenchError> {
    let Target::OwnServer(config) = &options.target else {
        return Err(BenchError::NeedsOwnServer("--matrix"));
    };
    let server = OwnServer::start(config).await?;
    let result = run_against(&server.endpoint, options, spec).await;
    server.stop().await;
    result
}

async fn run_against(endpoint: &str, options: &BenchOptions, spec: &MatrixSpec) -> Result<MatrixReport, BenchError> {
    let access = Access::default();
    super::wait_until_serving(endpoint, &access).await?;
    let mut cells = Vec::new();
    let mut capacities = Vec::new();
    let mut provider = String::new();
    let mut budget = 0.0;
    for pipeline in &spec.pipelines {
        let (budget_ms, execution_provider, name) = super::pipeline_facts(endpoint, &access, pipeline).await?;
        (provider, budget) = (execution_provider, budget_ms);
        for &background in &spec.backgrounds {
            let load = BackgroundLoad::start(background)?;
            // Let the busy threads spin up and the server's estimates settle on this machine's state.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let base = LoadSpec {
                pipeline: name.clone(),
                cameras: 1,
                fps: 10.0,
                duration: spec.duration,
                warmup: spec.warmup,
                mode: Mode::Closed,
                budget_ms: 0,
            };
            let label = format!("{name}, {background} busy: one client back to back");
            let (reference, samples) = super::load_run(endpoint, &access, options, &base, &label, budget_ms).await?;
            if let Some(dir) = &spec.trace_dir {
                write_trace(dir, &format!("{name}-busy{background}.csv"), &samples)?;
            }
            let capacity = reference.throughput_fps;
            if options.progress {
                eprint!("{}", reference.summary());
            }
            capacities.push(reference);
            for shape in Shape::ALL {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let load_spec = match shape {
                    Shape::OneCamera => LoadSpec { mode: Mode::Stream, ..base.clone() },
                    Shape::ThreeTimesCapacity => LoadSpec {
                        mode: Mode::Stream,
                        cameras: ((3.0 * capacity / base.fps).ceil() as usize).max(1),
                        ..base.clone()
                    },
                    Shape::SixClosedClients => LoadSpec { cameras: 6, ..base.clone() },
                };
                let label = format!("{name}, {background} busy: {}", shape.label());
                let (report, _) = super::load_run(endpoint, &access, options, &load_spec, &label, budget_ms).await?;
                if options.progress {
                    eprint!("{}", report.summary());
                }
                cells.push(Cell::new(&name, background, shape, capacity, report));
            }
            drop(load);
        }
    }
    Ok(MatrixReport { machine: Machine::here(provider), budget_ms: budget, capacities, cells })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(offered_fps: f64, goodput_fps: f64, within: usize, over: usize) -> LoadReport {
        let spec = LoadSpec {
            pipeline: "detect".into(),
            cameras: 1,
            fps: 10.0,
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
            mode: Mode::Stream,
            budget_ms: 0,
        };
        let mut r = LoadReport::new("t", &spec, 83.0, &[]);
        (r.offered_fps, r.goodput_fps, r.within_budget, r.over_budget) = (offered_fps, goodput_fps, within, over);
        r
    }

    #[test]
    fn a_cell_is_judged_against_what_it_could_attain() {
        // One camera at 10 fps on a machine that serves 30: 9.5 of 10 is 0.95.
        let quiet = Cell::new("detect", 0, Shape::OneCamera, 30.0, report(10.0, 9.5, 95, 5));
        assert!((quiet.goodput_over_attainable - 0.95).abs() < 1e-9);
        assert!(quiet.meets_bar);
        // Overload: 0.85 of capacity, but only 90 % of what it served on time.
        let late = Cell::new("detect", 2, Shape::SixClosedClients, 20.0, report(40.0, 17.0, 90, 10));
        assert!((late.goodput_over_attainable - 0.85).abs() < 1e-9);
        assert!((late.served_within_budget - 0.9).abs() < 1e-9);
        assert!(!late.meets_bar);
        // Every served frame on time, but half the capacity: goodput alone misses the bar.
        let idle = Cell::new("detect", 1, Shape::ThreeTimesCapacity, 30.0, report(90.0, 15.0, 150, 0));
        assert!((idle.served_within_budget - 1.0).abs() < 1e-9);
        assert!(!idle.meets_bar);
        // The busy machine: 0.7 of 14.9 frames/s.
        let collapsed = Cell::new("detect", 2, Shape::SixClosedClients, 14.9, report(20.0, 0.7, 10, 240));
        assert!(!collapsed.meets_bar);
    }
}
