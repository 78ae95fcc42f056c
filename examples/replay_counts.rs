//! Replays recorded tracks through counting lines: tries line and zone settings on the tracks a
//! `track` pipeline returned, without running the models again. Tracking does not depend on the
//! analytics settings, so one recorded run serves a whole grid of them (`eval/line_grid.py`).
//!
//! ```text
//! eval/line_demo.py ... --dump /tmp/tracks.jsonl        # the tracks each answer carried
//! cargo run --release --example replay_counts -- --tracks /tmp/tracks.jsonl \
//!     --analytics analytics.toml --classes bolt,nut,washer,bracket,cap
//! ```
//! `--analytics` is a TOML file holding what `[pipelines.<track>.analytics]` holds. Prints one JSON
//! line per crossing (`frame`, `id`, `class`, `line`, `direction`).
// An example stops at the first broken expectation, by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use linesight::detect::BBox;
use linesight::track::analytics::AnalyticsSettings;
use linesight::track::{AnalyticsPlan, TrackedObject};
use serde::Deserialize;

#[derive(Parser)]
struct Args {
    /// JSON lines of `{"frame": n, "tracks": [{"id", "class", "score", "box": [x1, y1, x2, y2]}]}`.
    #[arg(long)]
    tracks: PathBuf,
    #[arg(long)]
    analytics: PathBuf,
    /// The detector's classes, in order (comma-separated).
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
    /// The tracker's `max_age` (frames a lost track is kept).
    #[arg(long, default_value_t = 30)]
    max_age: u32,
    /// The camera the tracks came from (lines may be drawn on some cameras only).
    #[arg(long, default_value = "camera")]
    camera: String,
}

#[derive(Deserialize)]
struct Frame {
    frame: u64,
    tracks: Vec<Track>,
}

#[derive(Deserialize)]
struct Track {
    id: u64,
    class: String,
    score: f32,
    #[serde(rename = "box")]
    bbox: [f32; 4],
}

fn main() -> Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.analytics).with_context(|| format!("{}", args.analytics.display()))?;
    let settings: AnalyticsSettings = toml::from_str(&text).context("analytics settings")?;
    let problems = settings.problems();
    anyhow::ensure!(problems.is_empty(), "analytics settings: {problems:?}");
    let plan = Arc::new(settings.plan(&args.classes, args.max_age)?);
    let mut camera = AnalyticsPlan::for_camera(&plan, &args.camera).context("no line or zone on this camera")?;
    let reader =
        BufReader::new(std::fs::File::open(&args.tracks).with_context(|| format!("{}", args.tracks.display()))?);
    let mut out = std::io::stdout().lock();
    for line in reader.lines() {
        let frame: Frame = serde_json::from_str(&line?)?;
        let objects: Vec<TrackedObject> = frame
            .tracks
            .iter()
            .enumerate()
            .map(|(observation, t)| TrackedObject {
                track_id: t.id,
                bbox: BBox { x1: t.bbox[0], y1: t.bbox[1], x2: t.bbox[2], y2: t.bbox[3] },
                class_id: args.classes.iter().position(|c| *c == t.class).unwrap_or(0) as u32,
                score: t.score,
                observation,
            })
            .collect();
        for c in camera.observe(&objects).crossings {
            let row = serde_json::json!({
                "frame": frame.frame, "id": c.track_id, "class": c.class_name, "line": c.line,
                "direction": c.direction.name(),
            });
            writeln!(out, "{row}")?;
        }
    }
    Ok(())
}
