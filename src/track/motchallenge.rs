//! MOTChallenge text formats, for offline evaluation (`linesight mot`).
//!
//! Detections in: `frame,-1,x,y,w,h,conf,-1,-1,-1[,e1,…,eK]`, one per line, with an optional appearance
//! embedding of any length K appended. Tracks out: `frame,id,x,y,w,h,conf,-1,-1,-1`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use super::{Observation, TrackedObject, Tracker};
use crate::detect::BBox;

#[derive(Debug, thiserror::Error)]
pub enum MotError {
    #[error("line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("reading detections: {0}")]
    Read(std::io::Error),
    #[error("writing tracks: {0}")]
    Write(std::io::Error),
}

/// Detections grouped by frame number.
pub type FrameDetections = BTreeMap<u64, Vec<Observation>>;

/// Reads detection rows; blank lines and lines starting with `#` are skipped.
pub fn read_detections(input: impl BufRead, min_confidence: f32) -> Result<FrameDetections, MotError> {
    let mut frames = FrameDetections::new();
    let mut embedding_len: Option<usize> = None;
    for (index, line) in input.lines().enumerate() {
        let line_no = index + 1;
        let line = line.map_err(MotError::Read)?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |message: String| MotError::Parse { line: line_no, message };
        if fields.len() < 7 {
            return Err(bad(format!("expected at least 7 comma-separated fields, found {}", fields.len())));
        }
        let number = |i: usize, name: &str| -> Result<f32, MotError> {
            fields[i]
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(format!("{name} `{}` is not a finite number", fields[i])))
        };
        let frame = fields[0]
            .parse::<u64>()
            .map_err(|_| bad(format!("frame `{}` is not a non-negative integer", fields[0])))?;
        let (x, y, w, h) = (number(2, "x")?, number(3, "y")?, number(4, "w")?, number(5, "h")?);
        let score = number(6, "conf")?;
        let feature = fields
            .get(10..)
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .map(|(k, v)| {
                v.parse::<f32>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| bad(format!("embedding value {} `{v}` is not a finite number", k + 1)))
            })
            .collect::<Result<Vec<f32>, _>>()?;
        match embedding_len {
            None => embedding_len = Some(feature.len()),
            Some(k) if k != feature.len() => {
                return Err(bad(format!("embedding has {} values; earlier rows had {k}", feature.len())));
            }
            Some(_) => {}
        }
        let entry = frames.entry(frame).or_default();
        if score >= min_confidence && w > 0.0 && h > 0.0 {
            entry.push(Observation { bbox: BBox { x1: x, y1: y, x2: x + w, y2: y + h }, score, class_id: 0, feature });
        }
    }
    Ok(frames)
}

/// Runs the tracker over every frame from the first to the last (frames with no rows included, as
/// steps without detections) and writes the confirmed tracks updated in each frame. With
/// `embed_only_ambiguous` set, the embeddings the `track` pipeline would not compute are dropped
/// before each step, so the evaluation sees what the service's tracker sees.
pub fn track_sequence(
    tracker: &mut Tracker,
    frames: &FrameDetections,
    mut out: impl Write,
) -> Result<TrackSummary, MotError> {
    let mut summary = TrackSummary::default();
    let (Some(&first), Some(&last)) = (frames.keys().next(), frames.keys().next_back()) else {
        return Ok(summary);
    };
    let empty = Vec::new();
    for frame in first..=last {
        let observations = frames.get(&frame).unwrap_or(&empty);
        let objects = if tracker.params().embed_only_ambiguous {
            let boxes: Vec<BBox> = observations.iter().map(|o| o.bbox).collect();
            let needed = tracker.needs_embedding(&boxes);
            summary.embeddings_skipped += needed.iter().filter(|&&n| !n).count();
            let seen: Vec<Observation> = observations
                .iter()
                .zip(needed)
                .map(|(o, needed)| Observation {
                    feature: if needed { o.feature.clone() } else { Vec::new() },
                    ..o.clone()
                })
                .collect();
            tracker.step(&seen)
        } else {
            tracker.step(observations)
        };
        summary.frames += 1;
        summary.observations += observations.len();
        summary.rows += objects.len();
        for TrackedObject { track_id, bbox, score, .. } in &objects {
            summary.max_track_id = summary.max_track_id.max(*track_id);
            writeln!(
                out,
                "{frame},{track_id},{:.2},{:.2},{:.2},{:.2},{score:.4},-1,-1,-1",
                bbox.x1,
                bbox.y1,
                bbox.x2 - bbox.x1,
                bbox.y2 - bbox.y1
            )
            .map_err(MotError::Write)?;
        }
    }
    out.flush().map_err(MotError::Write)?;
    Ok(summary)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackSummary {
    pub frames: u64,
    pub rows: usize,
    pub max_track_id: u64,
    pub observations: usize,
    /// Detections whose embedding was dropped as not needed (`embed_only_ambiguous`).
    pub embeddings_skipped: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::TrackerParams;

    #[test]
    fn reads_rows_with_and_without_embeddings_and_rejects_bad_ones() {
        let text = "# comment\n1,-1,10,20,30,60,0.9,-1,-1,-1,0.5,0.5\n3,-1,12,20,30,60,0.2,-1,-1,-1,1,0\n";
        let frames = read_detections(text.as_bytes(), 0.3).unwrap();
        assert_eq!(frames.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(frames[&1][0].bbox, BBox { x1: 10.0, y1: 20.0, x2: 40.0, y2: 80.0 });
        assert_eq!(frames[&1][0].feature, vec![0.5, 0.5]);
        assert!(frames[&3].is_empty(), "below min confidence");
        let err = read_detections("1,-1,10,20,30,60,0.9,-1,-1,-1,0.5\n2,-1,1,1,1,1,1,-1,-1,-1\n".as_bytes(), 0.0)
            .unwrap_err();
        assert_eq!(err.to_string(), "line 2: embedding has 0 values; earlier rows had 1");
        let err = read_detections("1,-1,x,20,30,60,0.9\n".as_bytes(), 0.0).unwrap_err();
        assert_eq!(err.to_string(), "line 1: x `x` is not a finite number");
    }

    #[test]
    fn writes_one_row_per_confirmed_track_update_with_input_frame_numbers() {
        let mut text = String::new();
        for frame in 5..=8 {
            text.push_str(&format!("{frame},-1,{},50,20,40,0.9,-1,-1,-1\n", 100 + frame));
        }
        let frames = read_detections(text.as_bytes(), 0.0).unwrap();
        let mut out = Vec::new();
        let summary = track_sequence(&mut Tracker::new(TrackerParams::default()), &frames, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        let frames_out: Vec<&str> = out.lines().map(|l| l.split(',').next().unwrap()).collect();
        assert_eq!(frames_out, vec!["7", "8"], "{out}");
        assert!(out.lines().all(|l| l.split(',').nth(1) == Some("1")));
        assert_eq!(
            summary,
            TrackSummary { frames: 4, rows: 2, max_track_id: 1, observations: 4, embeddings_skipped: 0 }
        );
    }
}
