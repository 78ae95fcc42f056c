//! The report as an SVG: per run, the latency distribution with the budget marked, and every frame's
//! latency over time (shed and failed frames in red at the top); for a capacity search, p99 against
//! the number of cameras.

use plotters::prelude::*;

use super::BenchError;
use super::capacity::Probe;
use super::load::{Outcome, Sample};
use super::report::LoadReport;

const ROW_HEIGHT: u32 = 320;
const WIDTH: u32 = 1200;
const SERVED: RGBColor = RGBColor(31, 119, 180);
const OVER: RGBColor = RGBColor(255, 127, 14);
const NOT_SERVED: RGBColor = RGBColor(214, 39, 40);

/// One run to draw: its report and its frames.
pub struct RunPlot<'a> {
    pub report: &'a LoadReport,
    pub samples: &'a [Sample],
}

fn plot_error(e: impl std::fmt::Display) -> BenchError {
    BenchError::Plot(e.to_string())
}

/// Draws `runs` (one row each) and, when given, the capacity search (a last row).
pub fn svg(runs: &[RunPlot<'_>], capacity: Option<(&[Probe], f64)>) -> Result<String, BenchError> {
    let rows = runs.len() + usize::from(capacity.is_some());
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, ROW_HEIGHT * rows.max(1) as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let areas = root.split_evenly((rows.max(1), 1));
        for (run, area) in runs.iter().zip(&areas) {
            let (left, right) = area.split_horizontally(WIDTH / 2);
            distribution(&left, run)?;
            timeline(&right, run)?;
        }
        if let (Some((probes, budget_ms)), Some(area)) = (capacity, areas.get(runs.len())) {
            capacity_curve(area, probes, budget_ms)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(out)
}

/// The axis top for latencies: past the budget and the slowest served frame, with room above.
fn latency_axis_ms(report: &LoadReport) -> f64 {
    (report.latency_ms.max.max(report.budget_ms) * 1.1).max(1.0)
}

fn distribution<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    run: &RunPlot<'_>,
) -> Result<(), BenchError> {
    let report = run.report;
    let x_max = latency_axis_ms(report);
    let bins = 60usize;
    let width = x_max / bins as f64;
    let mut counts = vec![0usize; bins];
    for s in run.samples.iter().filter(|s| matches!(s.outcome, Outcome::WithinBudget | Outcome::OverBudget)) {
        counts[((s.latency_ms / width) as usize).min(bins - 1)] += 1;
    }
    let y_max = counts.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.1;
    let caption = format!(
        "{}: {} cameras x {} fps, end to end (p50 {:.1}, p99 {:.1} ms)",
        report.label, report.spec.cameras, report.spec.fps, report.latency_ms.p50, report.latency_ms.p99
    );
    let mut chart = new_chart(area, caption, (x_max, "latency (ms)"), (y_max, "frames"))?;
    chart
        .draw_series(counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, &c)| {
            let x0 = i as f64 * width;
            let colour = if x0 + width > report.budget_ms { OVER } else { SERVED };
            Rectangle::new([(x0, 0.0), (x0 + width, c as f64)], colour.filled())
        }))
        .map_err(plot_error)?;
    budget_line(&mut chart, report.budget_ms, y_max, true)?;
    for (q, value) in [("p50", report.latency_ms.p50), ("p99", report.latency_ms.p99)] {
        chart
            .draw_series(LineSeries::new([(value, 0.0), (value, y_max * 0.92)], BLACK.stroke_width(1)))
            .map_err(plot_error)?;
        chart
            .draw_series(std::iter::once(Text::new(q.to_owned(), (value, y_max * 0.97), ("sans-serif", 12))))
            .map_err(plot_error)?;
    }
    Ok(())
}

type Coord = Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>;

/// A chart with the house style: caption, margins, axes from 0 to `x_max` / `y_max`, mesh drawn.
fn new_chart<'a, DB: DrawingBackend + 'a>(
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    caption: String,
    (x_max, x_desc): (f64, &str),
    (y_max, y_desc): (f64, &str),
) -> Result<ChartContext<'a, DB, Coord>, BenchError> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(plot_error)?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw().map_err(plot_error)?;
    Ok(chart)
}

/// The budget as a red line, vertical (a latency axis along x) or horizontal (along y), with its legend.
fn budget_line<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Coord>,
    budget_ms: f64,
    across: f64,
    vertical: bool,
) -> Result<(), BenchError> {
    let ends = if vertical { [(budget_ms, 0.0), (budget_ms, across)] } else { [(0.0, budget_ms), (across, budget_ms)] };
    chart
        .draw_series(LineSeries::new(ends, NOT_SERVED.stroke_width(2)))
        .map_err(plot_error)?
        .label(format!("budget {budget_ms:.0} ms"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], NOT_SERVED.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_error)
}

fn timeline<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    run: &RunPlot<'_>,
) -> Result<(), BenchError> {
    let report = run.report;
    let y_max = latency_axis_ms(report);
    let x_max = report.spec.duration.as_secs_f64().max(1e-3);
    let unserved = report.shed + report.failed;
    let caption = format!(
        "latency over time: {:.1} % within budget, {} shed or failed",
        report.within_budget_fraction * 100.0,
        unserved
    );
    let mut chart = new_chart(area, caption, (x_max, "time (s)"), (y_max, "latency (ms)"))?;
    chart
        .draw_series(run.samples.iter().map(|s| {
            let (y, colour) = match s.outcome {
                Outcome::WithinBudget => (s.latency_ms, SERVED),
                Outcome::OverBudget => (s.latency_ms.min(y_max), OVER),
                Outcome::Shed | Outcome::Failed(_) => (y_max * 0.98, NOT_SERVED),
            };
            Circle::new((s.due_s, y), 2, colour.filled())
        }))
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new([(0.0, report.budget_ms), (x_max, report.budget_ms)], NOT_SERVED.stroke_width(2)))
        .map_err(plot_error)?;
    Ok(())
}

fn capacity_curve<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    probes: &[Probe],
    budget_ms: f64,
) -> Result<(), BenchError> {
    let mut sorted: Vec<&Probe> = probes.iter().collect();
    sorted.sort_by_key(|p| p.cameras);
    let x_max = sorted.last().map_or(1, |p| p.cameras) as f64 + 1.0;
    let p99 = |p: &Probe| p.report.p99_all_frames_ms.unwrap_or(f64::INFINITY);
    let y_max = sorted.iter().map(|p| p99(p)).filter(|v| v.is_finite()).fold(budget_ms, f64::max) * 1.2;
    let fps = sorted.first().map_or(0.0, |p| p.report.spec.fps);
    let caption = format!("capacity at {fps} fps: p99 over all frames (unserved = off the chart) by cameras");
    let mut chart = new_chart(area, caption, (x_max, "cameras"), (y_max, "p99 (ms)"))?;
    chart
        .draw_series(LineSeries::new(
            sorted.iter().map(|p| (p.cameras as f64, p99(p).min(y_max))),
            SERVED.stroke_width(2),
        ))
        .map_err(plot_error)?;
    chart
        .draw_series(sorted.iter().map(|p| {
            let colour = if p.report.fits_budget() { SERVED } else { NOT_SERVED };
            Circle::new((p.cameras as f64, p99(p).min(y_max)), 4, colour.filled())
        }))
        .map_err(plot_error)?;
    budget_line(&mut chart, budget_ms, x_max, false)
}
