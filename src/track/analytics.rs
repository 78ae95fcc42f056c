//! Line and zone analytics over one camera's tracks (what DeepStream's nvdsanalytics does):
//! counting lines, crossed at most once per track and direction and counted per class, and zone
//! occupancy.
//!
//! A track's point (its box's centre or bottom centre) is on a line's *ahead* side when its signed
//! distance along the line's forward normal is at least the hysteresis, *behind* when at most minus
//! it, and keeps its last side in between, so a box jittering on the line does not count. A track
//! crosses when its side changes and the path between the two points passes through the segment
//! (not beside it). The first side of a new track is where it is first seen, so a track that
//! appears past the line (a part already counted, found again under a new id) never counts. A new
//! track that appears where a lost one was going takes over the lost one's sides and counts
//! (`handover_frames`), so an identity switch next to the line neither counts twice nor drops the
//! crossing. A track that crosses while its box and the box of another track that has already
//! crossed the line the same way cover each other (`duplicate_overlap`, intersection over the
//! smaller box) is the same object seen twice — the detector boxed part of it apart — and does not
//! count again. A track's class is the class it was matched with most often.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

use super::TrackedObject;
use crate::detect::BBox;

/// `[pipelines.<track>.analytics]`: the counting lines and zones of a `track` pipeline's cameras.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsSettings {
    /// Which point of a track's box is tested against lines and zones.
    pub anchor: Anchor,
    /// Distance from a line, in pixels, within which a point keeps the side it had.
    pub hysteresis_px: f32,
    /// A track first seen within this many frames of another's loss, where the lost one was going
    /// (within half its box size), continues the lost one's crossings. 0 turns handover off.
    pub handover_frames: u32,
    /// A crossing does not count when the track's box and the box of a track (seen in this frame or
    /// the one before) that already crossed the line the same way overlap by at least this share
    /// of the smaller box: one object boxed twice. 0 turns it off.
    pub duplicate_overlap: f32,
    pub lines: Vec<LineSettings>,
    pub zones: Vec<ZoneSettings>,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        Self {
            anchor: Anchor::Center,
            hysteresis_px: DEFAULT_HYSTERESIS_PX,
            handover_frames: 10,
            duplicate_overlap: DEFAULT_DUPLICATE_OVERLAP,
            lines: Vec::new(),
            zones: Vec::new(),
        }
    }
}

/// Chosen on the tune videos (docs/line-demo/README.md#how-the-defaults-were-chosen), as is
/// [`DEFAULT_HYSTERESIS_PX`].
pub const DEFAULT_DUPLICATE_OVERLAP: f32 = 0.6;
pub const DEFAULT_HYSTERESIS_PX: f32 = 4.0;

/// The point of a box that stands for the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    /// The box's centre: a camera looking down on a belt.
    #[default]
    Center,
    /// The middle of the box's bottom edge: where a person or vehicle stands on the ground.
    BottomCenter,
}

impl Anchor {
    fn point(self, b: &BBox) -> [f32; 2] {
        let x = (b.x1 + b.x2) / 2.0;
        match self {
            Anchor::Center => [x, (b.y1 + b.y2) / 2.0],
            Anchor::BottomCenter => [x, b.y2],
        }
    }
}

/// `[[pipelines.<track>.analytics.lines]]`: a counting line, in pixels of the camera's frames.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineSettings {
    pub name: String,
    /// Cameras the line is drawn on; empty = every camera of the pipeline.
    #[serde(default)]
    pub cameras: Vec<String>,
    pub from: [f32; 2],
    pub to: [f32; 2],
    /// The direction of travel counted as forward (e.g. `[1, 0]`: parts moving right); crossings
    /// the other way are backward. Must not run along the line.
    pub forward: [f32; 2],
    /// Classes counted, by name; empty = every tracked class.
    #[serde(default)]
    pub classes: Vec<String>,
}

/// `[[pipelines.<track>.analytics.zones]]`: a polygon whose occupants are counted every frame.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSettings {
    pub name: String,
    #[serde(default)]
    pub cameras: Vec<String>,
    /// Vertices in pixels, in order (either winding); at least 3.
    pub polygon: Vec<[f32; 2]>,
    #[serde(default)]
    pub classes: Vec<String>,
}

impl AnalyticsSettings {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.zones.is_empty()
    }

    /// Every problem of the section, as (key under the section, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut say = |key: String, message: &str| problems.push((key, message.to_owned()));
        if !(self.hysteresis_px.is_finite() && self.hysteresis_px >= 0.0) {
            say("hysteresis_px".into(), "must be a finite number ≥ 0");
        }
        if !(0.0..=1.0).contains(&self.duplicate_overlap) {
            say("duplicate_overlap".into(), "must be between 0 and 1 (0 = off)");
        }
        let finite = |p: &[f32; 2]| p.iter().all(|v| v.is_finite());
        let mut names = std::collections::BTreeSet::new();
        for (i, line) in self.lines.iter().enumerate() {
            let at = format!("lines[{i}]");
            if let Some(problem) = name_problem(&mut names, &line.name, "line") {
                say(format!("{at}.name"), &problem);
            }
            if ![line.from, line.to, line.forward].iter().all(finite) {
                say(at.clone(), "from, to and forward must be finite numbers");
                continue;
            }
            let along = sub(line.to, line.from);
            if norm(along) < 1e-3 {
                say(format!("{at}.to"), "must differ from `from`");
            } else if norm(line.forward) < 1e-6 {
                say(format!("{at}.forward"), "must not be [0, 0]");
            } else if (cross(along, line.forward) / (norm(along) * norm(line.forward))).abs() < 0.1 {
                say(format!("{at}.forward"), "runs along the line; it must point across it");
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, zone) in self.zones.iter().enumerate() {
            let at = format!("zones[{i}]");
            if let Some(problem) = name_problem(&mut names, &zone.name, "zone") {
                say(format!("{at}.name"), &problem);
            }
            if zone.polygon.len() < 3 {
                say(format!("{at}.polygon"), "needs at least 3 vertices");
            } else if !zone.polygon.iter().all(finite) {
                say(format!("{at}.polygon"), "vertices must be finite numbers");
            } else if polygon_area(&zone.polygon).abs() < 1e-3 {
                say(format!("{at}.polygon"), "encloses no area");
            }
        }
        problems
    }

    /// The section with class names resolved against the detector's `classes`; `Err` names the
    /// key and the class that is not one of them.
    pub fn plan(&self, classes: &[String], max_age: u32) -> Result<AnalyticsPlan, UnknownAnalyticsClass> {
        let resolve = |key: String, names: &[String]| -> Result<Option<Vec<u32>>, UnknownAnalyticsClass> {
            if names.is_empty() {
                return Ok(None);
            }
            names
                .iter()
                .map(|name| {
                    classes
                        .iter()
                        .position(|c| c == name)
                        .map(|i| i as u32)
                        .ok_or_else(|| UnknownAnalyticsClass { key: key.clone(), class: name.clone() })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        };
        let lines = self
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let along = sub(l.to, l.from);
                let length = norm(along);
                // The normal on the side `forward` points to.
                let mut normal = [-along[1] / length, along[0] / length];
                if dot(normal, l.forward) < 0.0 {
                    normal = [-normal[0], -normal[1]];
                }
                Ok(Line {
                    name: l.name.clone(),
                    cameras: l.cameras.clone(),
                    from: l.from,
                    to: l.to,
                    normal,
                    classes: resolve(format!("analytics.lines[{i}].classes"), &l.classes)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let zones = self
            .zones
            .iter()
            .enumerate()
            .map(|(i, z)| {
                Ok(Zone {
                    name: z.name.clone(),
                    cameras: z.cameras.clone(),
                    polygon: z.polygon.clone(),
                    classes: resolve(format!("analytics.zones[{i}].classes"), &z.classes)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let class_count = classes.len().max(1);
        Ok(AnalyticsPlan {
            anchor: self.anchor,
            hysteresis: self.hysteresis_px,
            handover_frames: self.handover_frames,
            duplicate_overlap: self.duplicate_overlap,
            // A track missed for longer than the tracker keeps it is gone.
            forget_after: u64::from(max_age.max(self.handover_frames)) + 1,
            crossings: (0..lines.len() * class_count * 2).map(|_| AtomicU64::new(0)).collect(),
            class_count,
            classes: classes.to_vec(),
            lines,
            zones,
        })
    }
}

/// A class named in the analytics section that the detector does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: `{class}` is not one of the detector's classes")]
pub struct UnknownAnalyticsClass {
    pub key: String,
    pub class: String,
}

/// A counting line as served.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    cameras: Vec<String>,
    pub from: [f32; 2],
    pub to: [f32; 2],
    /// Unit normal on the forward side.
    pub normal: [f32; 2],
    classes: Option<Vec<u32>>,
}

impl Line {
    fn counts(&self, class_id: u32) -> bool {
        self.classes.as_ref().is_none_or(|c| c.contains(&class_id))
    }

    fn signed_distance(&self, p: [f32; 2]) -> f32 {
        dot(sub(p, self.from), self.normal)
    }

    /// Whether the path `a → b`, whose ends lie on opposite sides, meets the segment itself.
    fn path_meets_segment(&self, a: [f32; 2], b: [f32; 2]) -> bool {
        let (da, db) = (self.signed_distance(a), self.signed_distance(b));
        if da == db {
            return false;
        }
        let t = da / (da - db);
        let meet = [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])];
        let along = sub(self.to, self.from);
        let u = dot(sub(meet, self.from), along) / dot(along, along);
        (0.0..=1.0).contains(&u)
    }
}

/// A zone as served.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub name: String,
    cameras: Vec<String>,
    pub polygon: Vec<[f32; 2]>,
    classes: Option<Vec<u32>>,
}

impl Zone {
    /// Even-odd rule.
    fn contains(&self, p: [f32; 2]) -> bool {
        let mut inside = false;
        let n = self.polygon.len();
        for i in 0..n {
            let (a, b) = (self.polygon[i], self.polygon[(i + n - 1) % n]);
            if (a[1] > p[1]) != (b[1] > p[1]) && p[0] < (b[0] - a[0]) * (p[1] - a[1]) / (b[1] - a[1]) + a[0] {
                inside = !inside;
            }
        }
        inside
    }
}

/// Why `name` cannot name a `kind` (line or zone) beside the ones in `taken`, if it cannot.
fn name_problem<'a>(taken: &mut std::collections::BTreeSet<&'a str>, name: &'a str, kind: &str) -> Option<String> {
    if name.is_empty() {
        Some("must not be empty".to_owned())
    } else if !taken.insert(name) {
        Some(format!("is already the name of another {kind}"))
    } else {
        None
    }
}

fn applies_to(cameras: &[String], camera: &str) -> bool {
    cameras.is_empty() || cameras.iter().any(|c| c == camera)
}

/// A pipeline's lines and zones with class ids, and its crossing totals over every camera (never
/// reset, for the metrics).
#[derive(Debug)]
pub struct AnalyticsPlan {
    anchor: Anchor,
    hysteresis: f32,
    handover_frames: u32,
    duplicate_overlap: f32,
    forget_after: u64,
    lines: Vec<Line>,
    zones: Vec<Zone>,
    class_count: usize,
    classes: Vec<String>,
    // [line][class][direction]
    crossings: Vec<AtomicU64>,
}

impl AnalyticsPlan {
    /// A plan with nothing to count.
    pub fn none() -> Self {
        Self {
            anchor: Anchor::Center,
            hysteresis: 0.0,
            handover_frames: 0,
            duplicate_overlap: 0.0,
            forget_after: 1,
            lines: Vec::new(),
            zones: Vec::new(),
            class_count: 1,
            classes: Vec::new(),
            crossings: Vec::new(),
        }
    }

    fn class_name(&self, class_id: u32) -> String {
        self.classes.get(class_id as usize).cloned().unwrap_or_default()
    }

    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// The camera's analytics state, or `None` when no line or zone is drawn on it.
    pub fn for_camera(self: &Arc<Self>, camera: &str) -> Option<CameraAnalytics> {
        let lines: Vec<usize> = (0..self.lines.len()).filter(|&i| applies_to(&self.lines[i].cameras, camera)).collect();
        let zones: Vec<usize> = (0..self.zones.len()).filter(|&i| applies_to(&self.zones[i].cameras, camera)).collect();
        if lines.is_empty() && zones.is_empty() {
            return None;
        }
        Some(CameraAnalytics {
            plan: self.clone(),
            lines,
            zones,
            tracks: HashMap::new(),
            frame: 0,
            totals: Vec::new(),
            occupancy: Vec::new(),
        })
    }

    /// Crossings over every camera since start: (line, class id, forward, backward), non-zero rows.
    pub fn crossing_totals(&self) -> Vec<LineTotal> {
        let mut rows = Vec::new();
        for (l, line) in self.lines.iter().enumerate() {
            for class_id in 0..self.class_count {
                let at = (l * self.class_count + class_id) * 2;
                let (forward, backward) =
                    (self.crossings[at].load(Ordering::Relaxed), self.crossings[at + 1].load(Ordering::Relaxed));
                if forward + backward > 0 {
                    let class_id = class_id as u32;
                    let class_name = self.class_name(class_id);
                    rows.push(LineTotal { line: line.name.clone(), class_id, class_name, forward, backward });
                }
            }
        }
        rows
    }

    fn record(&self, line: usize, class_id: u32, direction: Direction) {
        let class = (class_id as usize).min(self.class_count - 1);
        let at = (line * self.class_count + class) * 2 + direction as usize;
        self.crossings[at].fetch_add(1, Ordering::Relaxed);
    }
}

/// Which way a track crossed a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Along the line's `forward`.
    Forward = 0,
    Backward = 1,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        }
    }
}

/// A line crossed in this frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub line: String,
    pub track_id: u64,
    pub class_id: u32,
    pub class_name: String,
    pub direction: Direction,
}

/// Crossings of one line by one class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTotal {
    pub line: String,
    pub class_id: u32,
    pub class_name: String,
    pub forward: u64,
    pub backward: u64,
}

/// Tracks of one class whose point is inside a zone in this frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneCount {
    pub zone: String,
    pub class_id: u32,
    pub class_name: String,
    pub objects: u32,
}

/// One frame's analytics, and the camera's running totals after it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FrameAnalytics {
    pub crossings: Vec<Crossing>,
    /// Every (line, class) of the camera crossed at least once, in the order of the config.
    pub totals: Vec<LineTotal>,
    /// Every (zone, class) with an occupant now.
    pub zones: Vec<ZoneCount>,
    /// The camera's lines and zones, for drawing.
    pub lines: Vec<Line>,
    pub zone_shapes: Vec<Zone>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Behind,
    Ahead,
}

#[derive(Debug, Clone)]
struct LineState {
    /// The last side the point was clearly on, and where it was then.
    side: Option<(Side, [f32; 2])>,
    counted: [bool; 2],
}

#[derive(Debug, Clone)]
struct TrackState {
    lines: Vec<LineState>,
    /// (class id, frames matched with it).
    votes: Vec<(u32, u32)>,
    point: [f32; 2],
    bbox: BBox,
    /// Pixels per frame over the last update.
    velocity: [f32; 2],
    /// Larger side of the last box.
    size: f32,
    last_frame: u64,
    first_frame: u64,
}

impl TrackState {
    /// The last box moved on at the last velocity to `frame`.
    fn bbox_at(&self, frame: u64) -> BBox {
        let steps = (frame - self.last_frame) as f32;
        let [dx, dy] = [self.velocity[0] * steps, self.velocity[1] * steps];
        BBox { x1: self.bbox.x1 + dx, y1: self.bbox.y1 + dy, x2: self.bbox.x2 + dx, y2: self.bbox.y2 + dy }
    }

    fn class(&self) -> u32 {
        // Most frames wins; on a tie, the class seen first.
        let mut best = self.votes[0];
        for &v in &self.votes[1..] {
            if v.1 > best.1 {
                best = v;
            }
        }
        best.0
    }

    fn vote(&mut self, class_id: u32) {
        match self.votes.iter_mut().find(|v| v.0 == class_id) {
            Some(v) => v.1 += 1,
            None => self.votes.push((class_id, 1)),
        }
    }
}

/// One camera's line and zone state; lives with its tracker in the registry.
#[derive(Debug)]
pub struct CameraAnalytics {
    plan: Arc<AnalyticsPlan>,
    /// Indices into the plan's lines and zones drawn on this camera.
    lines: Vec<usize>,
    zones: Vec<usize>,
    tracks: HashMap<u64, TrackState>,
    frame: u64,
    /// [camera line][class] → [forward, backward], grown as classes are seen.
    totals: Vec<Vec<[u64; 2]>>,
    occupancy: Vec<ZoneCount>,
}

impl CameraAnalytics {
    /// Applies one tracked frame (the confirmed tracks the tracker reported for it).
    pub fn observe(&mut self, objects: &[TrackedObject]) -> FrameAnalytics {
        self.frame += 1;
        let frame = self.frame;
        let plan = self.plan.clone();
        let mut crossings = Vec::new();
        // Known tracks first, so a new one can only take over a track that is really missing.
        let (known, new): (Vec<&TrackedObject>, Vec<&TrackedObject>) =
            objects.iter().partition(|o| self.tracks.contains_key(&o.track_id));
        for object in known.into_iter().chain(new) {
            let point = plan.anchor.point(&object.bbox);
            let mut state = self.update(object, point, frame);
            let class_id = state.class();
            for k in 0..self.lines.len() {
                let l = self.lines[k];
                let line = &plan.lines[l];
                let distance = line.signed_distance(point);
                let now = if distance >= plan.hysteresis.max(f32::EPSILON) {
                    Side::Ahead
                } else if distance <= -plan.hysteresis.max(f32::EPSILON) {
                    Side::Behind
                } else {
                    continue;
                };
                let line_state = &mut state.lines[k];
                if let Some((before, at)) = line_state.side
                    && before != now
                    && line.path_meets_segment(at, point)
                    && line.counts(class_id)
                {
                    let direction = if now == Side::Ahead { Direction::Forward } else { Direction::Backward };
                    if !line_state.counted[direction as usize] {
                        line_state.counted[direction as usize] = true;
                        if self.counted_as(object, k, direction, frame) {
                            line_state.side = Some((now, point));
                            continue;
                        }
                        self.count(k, class_id, direction);
                        plan.record(l, class_id, direction);
                        crossings.push(Crossing {
                            line: line.name.clone(),
                            track_id: object.track_id,
                            class_id,
                            class_name: plan.class_name(class_id),
                            direction,
                        });
                    }
                }
                line_state.side = Some((now, point));
            }
            self.tracks.insert(object.track_id, state);
        }
        let forget_after = plan.forget_after;
        self.tracks.retain(|_, t| frame - t.last_frame <= forget_after);
        self.occupancy = self.occupancy(objects);
        FrameAnalytics {
            crossings,
            totals: self.totals(),
            zones: self.occupancy.clone(),
            lines: self.lines.iter().map(|&l| plan.lines[l].clone()).collect(),
            zone_shapes: self.zones.iter().map(|&z| plan.zones[z].clone()).collect(),
        }
    }

    /// The track's state moved on to `object` at `point`: its own, a lost one's it continues, or new.
    fn update(&mut self, object: &TrackedObject, point: [f32; 2], frame: u64) -> TrackState {
        let size = (object.bbox.x2 - object.bbox.x1).max(object.bbox.y2 - object.bbox.y1);
        let mut state = match self.tracks.remove(&object.track_id) {
            Some(mut state) => {
                let gap = (frame - state.last_frame) as f32;
                state.velocity = [(point[0] - state.point[0]) / gap, (point[1] - state.point[1]) / gap];
                state
            }
            None => self.handover(point, frame).unwrap_or_else(|| TrackState {
                lines: vec![LineState { side: None, counted: [false; 2] }; self.lines.len()],
                votes: Vec::new(),
                point,
                bbox: object.bbox,
                velocity: [0.0; 2],
                size,
                last_frame: frame,
                first_frame: frame,
            }),
        };
        state.point = point;
        state.bbox = object.bbox;
        state.size = size;
        state.last_frame = frame;
        state.vote(object.class_id);
        state
    }

    /// Whether another track, seen in this frame or the one before and already counted on camera
    /// line `k` in `direction`, boxes the same object as `object` (their boxes overlap by at least
    /// `duplicate_overlap` of the smaller one).
    fn counted_as(&self, object: &TrackedObject, k: usize, direction: Direction, frame: u64) -> bool {
        let threshold = self.plan.duplicate_overlap;
        threshold > 0.0
            && self.tracks.iter().any(|(&id, t)| {
                id != object.track_id
                    && frame - t.last_frame <= 1
                    && t.lines[k].counted[direction as usize]
                    && overlap_of_smaller(&t.bbox_at(frame), &object.bbox) >= threshold
            })
    }

    /// The lost track the new one at `point` continues: missing from this frame and seen last at
    /// most `handover_frames` frames before it, seen in more than one frame, and predicted (at its last velocity)
    /// within half its size of `point`. The nearest wins and leaves the pool.
    fn handover(&mut self, point: [f32; 2], frame: u64) -> Option<TrackState> {
        let window = u64::from(self.plan.handover_frames);
        let mut best: Option<(u64, f32)> = None;
        for (&id, t) in &self.tracks {
            let missed = frame - t.last_frame;
            if missed == 0 || missed > window || t.last_frame == t.first_frame {
                continue;
            }
            let steps = missed as f32;
            let predicted = [t.point[0] + t.velocity[0] * steps, t.point[1] + t.velocity[1] * steps];
            let distance = norm(sub(point, predicted));
            if distance <= t.size / 2.0 && best.is_none_or(|(_, d)| distance < d) {
                best = Some((id, distance));
            }
        }
        let (id, _) = best?;
        let mut state = self.tracks.remove(&id)?;
        state.first_frame = frame;
        Some(state)
    }

    fn count(&mut self, line: usize, class_id: u32, direction: Direction) {
        if self.totals.len() < self.lines.len() {
            self.totals.resize(self.lines.len(), Vec::new());
        }
        let row = &mut self.totals[line];
        if row.len() <= class_id as usize {
            row.resize(class_id as usize + 1, [0, 0]);
        }
        row[class_id as usize][direction as usize] += 1;
    }

    /// The camera's crossings since its first frame: non-zero (line, class) rows.
    pub fn totals(&self) -> Vec<LineTotal> {
        let mut rows = Vec::new();
        for (k, row) in self.totals.iter().enumerate() {
            let name = &self.plan.lines[self.lines[k]].name;
            for (class_id, &[forward, backward]) in row.iter().enumerate() {
                if forward + backward > 0 {
                    let class_id = class_id as u32;
                    let class_name = self.plan.class_name(class_id);
                    rows.push(LineTotal { line: name.clone(), class_id, class_name, forward, backward });
                }
            }
        }
        rows
    }

    /// Occupants per zone and class in the last frame.
    pub fn last_occupancy(&self) -> &[ZoneCount] {
        &self.occupancy
    }

    fn occupancy(&self, objects: &[TrackedObject]) -> Vec<ZoneCount> {
        let mut counts: Vec<ZoneCount> = Vec::new();
        for &z in &self.zones {
            let zone = &self.plan.zones[z];
            let first = counts.len();
            for object in objects {
                let class_id = self.tracks.get(&object.track_id).map_or(object.class_id, TrackState::class);
                if !zone.classes.as_ref().is_none_or(|c| c.contains(&class_id))
                    || !zone.contains(self.plan.anchor.point(&object.bbox))
                {
                    continue;
                }
                match counts[first..].iter_mut().find(|c| c.class_id == class_id) {
                    Some(c) => c.objects += 1,
                    None => counts.push(ZoneCount {
                        zone: zone.name.clone(),
                        class_id,
                        class_name: self.plan.class_name(class_id),
                        objects: 1,
                    }),
                }
            }
            counts[first..].sort_by_key(|c| c.class_id);
        }
        counts
    }
}

fn sub(a: [f32; 2], b: [f32; 2]) -> [f32; 2] {
    [a[0] - b[0], a[1] - b[1]]
}

fn dot(a: [f32; 2], b: [f32; 2]) -> f32 {
    a[0] * b[0] + a[1] * b[1]
}

fn cross(a: [f32; 2], b: [f32; 2]) -> f32 {
    a[0] * b[1] - a[1] * b[0]
}

fn norm(a: [f32; 2]) -> f32 {
    dot(a, a).sqrt()
}

/// Intersection over the smaller box's area: 1 when one box lies inside the other.
fn overlap_of_smaller(a: &BBox, b: &BBox) -> f32 {
    let w = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let h = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let smaller = ((a.x2 - a.x1) * (a.y2 - a.y1)).min((b.x2 - b.x1) * (b.y2 - b.y1));
    if smaller > 0.0 { w * h / smaller } else { 0.0 }
}

fn polygon_area(points: &[[f32; 2]]) -> f32 {
    let n = points.len();
    (0..n).map(|i| cross(points[i], points[(i + 1) % n])).sum::<f32>() / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSES: [&str; 3] = ["bolt", "nut", "washer"];

    fn classes() -> Vec<String> {
        CLASSES.iter().map(|c| c.to_string()).collect()
    }

    /// A vertical line at x = 100 from y = 0 to 200, forward = moving right.
    fn gate() -> LineSettings {
        LineSettings {
            name: "gate".into(),
            cameras: vec![],
            from: [100.0, 0.0],
            to: [100.0, 200.0],
            forward: [1.0, 0.0],
            classes: vec![],
        }
    }

    fn camera(settings: AnalyticsSettings) -> CameraAnalytics {
        Arc::new(settings.plan(&classes(), 30).unwrap()).for_camera("cam").unwrap()
    }

    fn lines(lines: Vec<LineSettings>) -> CameraAnalytics {
        camera(AnalyticsSettings { lines, ..AnalyticsSettings::default() })
    }

    /// A 20 × 20 box centred on (x, y).
    fn at(track_id: u64, class_id: u32, x: f32, y: f32) -> TrackedObject {
        TrackedObject {
            track_id,
            bbox: BBox { x1: x - 10.0, y1: y - 10.0, x2: x + 10.0, y2: y + 10.0 },
            class_id,
            score: 0.9,
            observation: 0,
        }
    }

    /// Runs one track along `xs` at height `y`; returns every crossing.
    fn walk(analytics: &mut CameraAnalytics, track_id: u64, class_id: u32, xs: &[f32], y: f32) -> Vec<Crossing> {
        xs.iter().flat_map(|&x| analytics.observe(&[at(track_id, class_id, x, y)]).crossings).collect()
    }

    #[test]
    fn a_part_crossing_the_line_counts_once_forward_in_its_class() {
        let mut a = lines(vec![gate()]);
        let crossings = walk(&mut a, 7, 1, &[80.0, 90.0, 99.0, 101.0, 110.0, 120.0], 50.0);
        assert_eq!(
            crossings,
            vec![Crossing {
                line: "gate".into(),
                track_id: 7,
                class_id: 1,
                class_name: "nut".into(),
                direction: Direction::Forward
            }]
        );
        assert_eq!(
            a.totals(),
            vec![LineTotal { line: "gate".into(), class_id: 1, class_name: "nut".into(), forward: 1, backward: 0 }]
        );
        // Coming back counts once backward; going forward again does not count a second time.
        let back = walk(&mut a, 7, 1, &[90.0, 110.0, 90.0, 110.0], 50.0);
        assert_eq!(back.iter().map(|c| c.direction).collect::<Vec<_>>(), vec![Direction::Backward]);
        assert_eq!(
            a.totals(),
            vec![LineTotal { line: "gate".into(), class_id: 1, class_name: "nut".into(), forward: 1, backward: 1 }]
        );
    }

    #[test]
    fn jitter_within_the_hysteresis_does_not_count() {
        let mut a =
            camera(AnalyticsSettings { hysteresis_px: 3.0, lines: vec![gate()], ..AnalyticsSettings::default() });
        let crossings = walk(&mut a, 1, 0, &[90.0, 98.0, 101.0, 99.0, 102.0, 98.5, 101.5], 50.0);
        assert!(crossings.is_empty(), "{crossings:?}");
        // Then clearly across: one crossing.
        assert_eq!(walk(&mut a, 1, 0, &[104.0], 50.0).len(), 1);
    }

    #[test]
    fn passing_beside_the_segment_does_not_count() {
        let mut a = lines(vec![gate()]);
        assert!(walk(&mut a, 1, 0, &[80.0, 120.0], 250.0).is_empty(), "below the segment's end");
        assert!(walk(&mut a, 2, 0, &[80.0, 120.0], 150.0).len() == 1, "across the segment");
    }

    #[test]
    fn the_crossing_counts_even_when_the_track_is_missed_on_the_line() {
        let mut a = lines(vec![gate()]);
        assert_eq!(walk(&mut a, 1, 0, &[60.0, 70.0], 50.0).len(), 0);
        a.observe(&[]);
        a.observe(&[]);
        assert_eq!(walk(&mut a, 1, 0, &[130.0], 50.0).len(), 1);
    }

    #[test]
    fn a_track_first_seen_past_the_line_is_not_counted() {
        // A part counted under id 1, lost, and found again far away under id 2.
        let mut a = lines(vec![gate()]);
        assert_eq!(walk(&mut a, 1, 0, &[80.0, 95.0, 110.0], 50.0).len(), 1);
        for _ in 0..15 {
            a.observe(&[]);
        }
        assert!(walk(&mut a, 2, 0, &[190.0, 200.0, 210.0], 50.0).is_empty());
        assert_eq!(a.totals()[0].forward, 1);
    }

    #[test]
    fn an_identity_switch_at_the_line_neither_drops_nor_doubles_the_count() {
        // Lost just before the line, found just past it under a new id: the crossing still counts.
        let mut a = lines(vec![gate()]);
        assert!(walk(&mut a, 1, 2, &[70.0, 80.0, 90.0], 50.0).is_empty());
        a.observe(&[]);
        let crossings = walk(&mut a, 5, 2, &[110.0, 120.0], 50.0);
        assert_eq!(crossings.len(), 1, "{crossings:?}");
        assert_eq!(crossings[0].track_id, 5);
        // Counted under id 5, lost, found again as id 6 further on: still one.
        a.observe(&[]);
        assert!(walk(&mut a, 6, 2, &[139.0, 150.0, 160.0], 50.0).is_empty());
        assert_eq!(
            a.totals(),
            vec![LineTotal { line: "gate".into(), class_id: 2, class_name: "washer".into(), forward: 1, backward: 0 }]
        );
        // With handover off, the switch before the line loses that part's crossing.
        let mut off =
            camera(AnalyticsSettings { handover_frames: 0, lines: vec![gate()], ..AnalyticsSettings::default() });
        walk(&mut off, 1, 2, &[70.0, 80.0, 90.0], 50.0);
        off.observe(&[]);
        assert!(walk(&mut off, 5, 2, &[110.0, 120.0], 50.0).is_empty());
    }

    #[test]
    fn a_part_boxed_twice_counts_once_whichever_box_crosses_first() {
        // Track 2 boxes the front lower part of the part track 1 boxes whole (centre 4 px ahead).
        let whole = |x: f32| at(1, 0, x, 50.0);
        let part = |x: f32| TrackedObject {
            bbox: BBox { x1: x - 2.0, y1: 50.0, x2: x + 10.0, y2: 60.0 },
            ..at(2, 0, x, 55.0)
        };
        let run = |a: &mut CameraAnalytics| -> Vec<u64> {
            let mut ids = Vec::new();
            // The part box crosses at x = 99 (the whole one is still within the hysteresis); the
            // whole one crosses at 105, where the part box is missing and predicted.
            for (x, with_part) in
                [(80.0, true), (87.0, false), (94.0, true), (99.0, true), (105.0, false), (111.0, true)]
            {
                let frame = if with_part { vec![whole(x), part(x)] } else { vec![whole(x)] };
                ids.extend(a.observe(&frame).crossings.iter().map(|c| c.track_id));
            }
            ids
        };
        let narrow = || AnalyticsSettings { hysteresis_px: 2.0, lines: vec![gate()], ..AnalyticsSettings::default() };
        assert_eq!(run(&mut camera(narrow())), [2]);
        // The other way round: the whole box crosses first.
        let mut a = camera(narrow());
        let ids: Vec<u64> = [80.0, 90.0, 103.0, 110.0]
            .into_iter()
            .flat_map(|x| a.observe(&[whole(x), part(x - 6.0)]).crossings)
            .map(|c| c.track_id)
            .collect();
        assert_eq!(ids, [1]);
        // Off, both count.
        let mut off = camera(AnalyticsSettings { duplicate_overlap: 0.0, ..narrow() });
        assert_eq!(run(&mut off), [2, 1]);
    }

    #[test]
    fn two_parts_side_by_side_crossing_together_both_count() {
        let mut a = lines(vec![gate()]);
        let counted: usize = [80.0, 95.0, 110.0]
            .into_iter()
            .map(|x| a.observe(&[at(1, 0, x, 50.0), at(2, 0, x + 4.0, 62.0)]).crossings.len())
            .sum();
        assert_eq!(counted, 2, "boxes overlapping by 32 % of either are two parts");
    }

    #[test]
    fn a_different_part_near_a_lost_one_does_not_take_its_place() {
        let mut a = lines(vec![gate()]);
        walk(&mut a, 1, 0, &[70.0, 80.0, 90.0], 50.0);
        a.observe(&[]);
        // Predicted at x = 110, y = 50; this one appears 40 px away, beyond half the box size.
        assert!(walk(&mut a, 2, 0, &[110.0, 120.0], 90.0).is_empty());
    }

    #[test]
    fn a_track_counts_in_the_class_it_was_matched_with_most() {
        let mut a = lines(vec![gate()]);
        let frames = [(80.0, 0), (85.0, 1), (90.0, 1), (95.0, 1), (110.0, 0)];
        let crossings: Vec<Crossing> =
            frames.iter().flat_map(|&(x, class)| a.observe(&[at(3, class, x, 50.0)]).crossings).collect();
        assert_eq!(crossings[0].class_id, 1);
    }

    #[test]
    fn a_line_counts_only_its_classes_and_only_on_its_cameras() {
        let settings = AnalyticsSettings {
            lines: vec![LineSettings { classes: vec!["nut".into()], cameras: vec!["cam".into()], ..gate() }],
            ..AnalyticsSettings::default()
        };
        let plan = Arc::new(settings.plan(&classes(), 30).unwrap());
        assert!(plan.for_camera("other").is_none());
        let mut a = plan.for_camera("cam").unwrap();
        assert!(walk(&mut a, 1, 0, &[80.0, 120.0], 50.0).is_empty(), "a bolt");
        assert_eq!(walk(&mut a, 2, 1, &[80.0, 120.0], 60.0).len(), 1, "a nut");
        assert_eq!(
            plan.crossing_totals(),
            vec![LineTotal { line: "gate".into(), class_id: 1, class_name: "nut".into(), forward: 1, backward: 0 }]
        );
    }

    #[test]
    fn zones_count_their_occupants_by_class() {
        let zone = ZoneSettings {
            name: "bin".into(),
            cameras: vec![],
            polygon: vec![[0.0, 0.0], [50.0, 0.0], [50.0, 50.0], [0.0, 50.0]],
            classes: vec![],
        };
        let mut a = camera(AnalyticsSettings { zones: vec![zone], ..AnalyticsSettings::default() });
        let frame =
            a.observe(&[at(1, 0, 10.0, 10.0), at(2, 0, 40.0, 40.0), at(3, 2, 25.0, 25.0), at(4, 0, 60.0, 10.0)]);
        assert_eq!(
            frame.zones,
            vec![
                ZoneCount { zone: "bin".into(), class_id: 0, class_name: "bolt".into(), objects: 2 },
                ZoneCount { zone: "bin".into(), class_id: 2, class_name: "washer".into(), objects: 1 },
            ]
        );
        assert!(a.observe(&[at(4, 0, 60.0, 10.0)]).zones.is_empty());
    }

    #[test]
    fn bad_lines_and_zones_are_reported_with_their_keys() {
        let settings = AnalyticsSettings {
            hysteresis_px: -1.0,
            duplicate_overlap: 1.5,
            lines: vec![
                gate(),
                gate(),
                LineSettings { name: "flat".into(), forward: [0.0, 1.0], ..gate() },
                LineSettings { name: "dot".into(), to: [100.0, 0.0], ..gate() },
            ],
            zones: vec![ZoneSettings {
                name: "z".into(),
                cameras: vec![],
                polygon: vec![[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]],
                classes: vec![],
            }],
            ..AnalyticsSettings::default()
        };
        let keys: Vec<String> = settings.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "hysteresis_px",
                "duplicate_overlap",
                "lines[1].name",
                "lines[2].forward",
                "lines[3].to",
                "zones[0].polygon"
            ]
        );
        let unknown = AnalyticsSettings {
            lines: vec![LineSettings { classes: vec!["gear".into()], ..gate() }],
            ..AnalyticsSettings::default()
        };
        assert_eq!(
            unknown.plan(&classes(), 30).unwrap_err().to_string(),
            "analytics.lines[0].classes: `gear` is not one of the detector's classes"
        );
    }
}
