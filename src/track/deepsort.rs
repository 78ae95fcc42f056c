//! One camera's DeepSORT tracker (Wojke, Bewley & Paulus 2017): predict every track, match confirmed
//! tracks by a cascade over time since their last update on gated appearance distance, match what is
//! left (tentative tracks and tracks missed once) by IoU, then update, age and spawn tracks.

use super::appearance::{Gallery, normalized};
use super::assignment::{CostMatrix, INFEASIBLE, min_cost_matching};
use super::kalman::{self, CHI2_INV95_4DOF, Gaussian, Measurement};
use super::{GalleryUpdate, Observation, ReportedBox, TrackedObject, TrackerParams};
use crate::detect::BBox;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackStatus {
    Tentative,
    Confirmed,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct Track {
    pub id: u64,
    pub state: Gaussian,
    pub hits: u32,
    pub age: u32,
    pub time_since_update: u32,
    pub status: TrackStatus,
    pub class_id: u32,
    pub score: f32,
    gallery: Gallery,
    /// Frames since an embedding last joined the gallery (or was offered to it).
    frames_since_embedding: u32,
}

impl Track {
    /// The Kalman mean as a box.
    pub fn bbox(&self) -> BBox {
        let [x1, y1, x2, y2] = self.corners();
        BBox { x1: x1 as f32, y1: y1 as f32, x2: x2 as f32, y2: y2 as f32 }
    }

    /// The Kalman mean as (x1, y1, x2, y2), full precision.
    fn corners(&self) -> [f64; 4] {
        let m = &self.state.mean;
        let (h, w) = (m[3], m[2] * m[3]);
        [m[0] - w / 2.0, m[1] - h / 2.0, m[0] + w / 2.0, m[1] + h / 2.0]
    }

    pub fn gallery_len(&self) -> usize {
        self.gallery.len()
    }
}

/// A detection as the matcher uses it.
struct Candidate {
    measurement: Measurement,
    bbox: BBox,
    score: f32,
    feature: Option<Box<[f32]>>,
}

/// IoU of two (x1, y1, x2, y2) boxes in f64, as the reference computes it.
fn iou(a: &[f64; 4], b: &BBox) -> f64 {
    iou_corners(a, &[f64::from(b.x1), f64::from(b.y1), f64::from(b.x2), f64::from(b.y2)])
}

fn iou_corners(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// One frame's matching outcome, as track and candidate indices.
struct Association {
    matches: Vec<(usize, usize)>,
    /// The first `by_appearance` matches came from the appearance cascade, the rest from IoU.
    by_appearance: usize,
    unmatched_tracks: Vec<usize>,
    unmatched_candidates: Vec<usize>,
}

/// Box → (cx, cy, w / h, h).
fn to_measurement(b: &BBox) -> Measurement {
    let (w, h) = (f64::from(b.x2 - b.x1), f64::from(b.y2 - b.y1));
    Measurement::new(f64::from(b.x1) + w / 2.0, f64::from(b.y1) + h / 2.0, w / h, h)
}

#[derive(Debug, Clone)]
pub struct Tracker {
    params: TrackerParams,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new(TrackerParams::default())
    }
}

impl Tracker {
    pub fn new(params: TrackerParams) -> Self {
        Self { params, tracks: Vec::new(), next_id: 1 }
    }

    pub fn params(&self) -> &TrackerParams {
        &self.params
    }

    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    pub fn confirmed_count(&self) -> usize {
        self.tracks.iter().filter(|t| t.status == TrackStatus::Confirmed).count()
    }

    /// Advances one frame with its detections; returns the confirmed tracks matched in this frame.
    /// Boxes without positive width and height are ignored.
    pub fn step(&mut self, observations: &[Observation]) -> Vec<TrackedObject> {
        for track in &mut self.tracks {
            track.state = kalman::predict(&track.state);
            track.age += 1;
            track.time_since_update += 1;
            track.frames_since_embedding = track.frames_since_embedding.saturating_add(1);
        }
        let usable: Vec<usize> = observations
            .iter()
            .enumerate()
            .filter(|(_, o)| o.bbox.x2 > o.bbox.x1 && o.bbox.y2 > o.bbox.y1 && o.bbox.x1.is_finite())
            .map(|(i, _)| i)
            .collect();
        let candidates: Vec<Candidate> = usable
            .iter()
            .map(|&i| {
                let o = &observations[i];
                Candidate {
                    measurement: to_measurement(&o.bbox),
                    bbox: o.bbox,
                    score: o.score,
                    feature: normalized(&o.feature),
                }
            })
            .collect();

        let (high, low): (Vec<usize>, Vec<usize>) =
            (0..candidates.len()).partition(|&c| candidates[c].score >= self.params.high_score);
        let Association { mut matches, by_appearance, unmatched_tracks, unmatched_candidates } =
            self.associate(&candidates, high);
        let (second, unmatched_tracks) = self.associate_low_score(&candidates, low, unmatched_tracks);
        matches.extend(second);

        let mut matched_this_frame = Vec::with_capacity(matches.len());
        for (i, &(t, c)) in matches.iter().enumerate() {
            let obs = &observations[usable[c]];
            let candidate = &candidates[c];
            let track = &mut self.tracks[t];
            if let Some(updated) = kalman::update(&track.state, &candidate.measurement) {
                track.state = updated;
            }
            if let Some(f) = &candidate.feature {
                track.frames_since_embedding = 0;
                // A confirmed track keeps only embeddings that agree with its gallery (see
                // `GalleryUpdate::Consistent`); a match made by motion alone still moves the track.
                let admit = match self.params.gallery_update {
                    GalleryUpdate::Every => true,
                    // Cascade matches agree with the gallery by construction.
                    GalleryUpdate::Consistent => {
                        i < by_appearance
                            || track.status != TrackStatus::Confirmed
                            || track.gallery.nearest(f).is_none_or(|d| f64::from(d) <= self.params.max_cosine_distance)
                    }
                };
                if admit {
                    track.gallery.push(f.clone(), self.params.nn_budget);
                }
            }
            track.hits += 1;
            track.time_since_update = 0;
            track.class_id = obs.class_id;
            track.score = obs.score;
            if track.status == TrackStatus::Tentative && track.hits >= self.params.n_init {
                track.status = TrackStatus::Confirmed;
            }
            matched_this_frame.push((t, usable[c]));
        }
        for &t in &unmatched_tracks {
            let track = &mut self.tracks[t];
            if track.status == TrackStatus::Tentative || track.time_since_update > self.params.max_age {
                track.status = TrackStatus::Deleted;
            }
        }
        for c in unmatched_candidates {
            if candidates[c].score < self.params.new_track_score {
                continue;
            }
            self.spawn(&candidates[c], &observations[usable[c]]);
            // With n_init ≤ 1 a new track is confirmed at once and reported in its first frame.
            matched_this_frame.push((self.tracks.len() - 1, usable[c]));
        }
        let output = self.reported(&matched_this_frame, observations);
        self.tracks.retain(|t| t.status != TrackStatus::Deleted);
        output
    }

    /// The confirmed tracks among this frame's (track, observation) pairs, in track id order.
    fn reported(&self, matched: &[(usize, usize)], observations: &[Observation]) -> Vec<TrackedObject> {
        let mut output: Vec<TrackedObject> = matched
            .iter()
            .filter(|&&(t, _)| self.tracks[t].status == TrackStatus::Confirmed)
            .map(|&(t, observation)| {
                let track = &self.tracks[t];
                TrackedObject {
                    track_id: track.id,
                    bbox: match self.params.reported_box {
                        ReportedBox::Filtered => track.bbox(),
                        ReportedBox::Detection => observations[observation].bbox,
                    },
                    class_id: track.class_id,
                    score: track.score,
                    observation,
                }
            })
            .collect();
        output.sort_by_key(|o| o.track_id);
        output
    }

    /// Which of this frame's boxes need an appearance embedding, judged from the tracks as they stand
    /// before the frame (see `TrackerParams::embed_only_ambiguous`). A box may go without one when
    /// exactly one confirmed track, matched in the previous frame and embedded within
    /// `embedding_refresh_frames`, overlaps it by IoU ≥ `unambiguous_iou`, and no other track
    /// overlaps that box and no other box overlaps that track (IoU ≥ 0.1 either way): then motion
    /// and IoU alone decide the match. Every box needs one when the policy is off.
    pub fn needs_embedding(&self, boxes: &[BBox]) -> Vec<bool> {
        if !self.params.embed_only_ambiguous {
            return vec![true; boxes.len()];
        }
        const NEAR: f64 = 0.1;
        let predicted: Vec<[f64; 4]> = self
            .tracks
            .iter()
            .map(|t| {
                let p = kalman::predict(&t.state).mean;
                let (h, w) = (p[3], p[2] * p[3]);
                [p[0] - w / 2.0, p[1] - h / 2.0, p[0] + w / 2.0, p[1] + h / 2.0]
            })
            .collect();
        let boxes: Vec<[f64; 4]> =
            boxes.iter().map(|b| [f64::from(b.x1), f64::from(b.y1), f64::from(b.x2), f64::from(b.y2)]).collect();
        let overlap: Vec<Vec<f64>> =
            boxes.iter().map(|b| predicted.iter().map(|p| iou_corners(p, b)).collect()).collect();
        (0..boxes.len())
            .map(|d| {
                let near: Vec<usize> = (0..predicted.len()).filter(|&t| overlap[d][t] >= NEAR).collect();
                let [t] = near[..] else { return true };
                let track = &self.tracks[t];
                let plain = track.status == TrackStatus::Confirmed
                    && track.time_since_update == 0
                    && !track.gallery.is_empty()
                    && track.frames_since_embedding + 1 < self.params.embedding_refresh_frames
                    && overlap[d][t] >= self.params.unambiguous_iou
                    && (0..boxes.len()).all(|other| other == d || overlap[other][t] < NEAR);
                !plain
            })
            .collect()
    }

    /// ByteTrack's second association: low-score detections matched by IoU alone to the confirmed
    /// tracks left unmatched, among those IoU matching may offer. Returns the matches and the tracks
    /// still unmatched.
    fn associate_low_score(
        &self,
        candidates: &[Candidate],
        low: Vec<usize>,
        unmatched_tracks: Vec<usize>,
    ) -> (Vec<(usize, usize)>, Vec<usize>) {
        if low.is_empty() {
            return (Vec::new(), unmatched_tracks);
        }
        let (eligible, mut rest): (Vec<usize>, Vec<usize>) =
            unmatched_tracks.into_iter().partition(|&t| self.tracks[t].status == TrackStatus::Confirmed);
        let cost = self.iou_cost(&eligible, &low, candidates);
        let a = min_cost_matching(&cost, self.params.low_score_max_iou_distance);
        rest.extend(a.unmatched_rows.iter().map(|&r| eligible[r]));
        (a.matches.iter().map(|&(r, c)| (eligible[r], low[c])).collect(), rest)
    }

    fn spawn(&mut self, candidate: &Candidate, obs: &Observation) {
        let mut gallery = Gallery::default();
        if let Some(f) = &candidate.feature {
            gallery.push(f.clone(), self.params.nn_budget);
        }
        let status = if self.params.n_init <= 1 { TrackStatus::Confirmed } else { TrackStatus::Tentative };
        self.tracks.push(Track {
            id: self.next_id,
            state: kalman::initiate(&candidate.measurement),
            hits: 1,
            age: 1,
            time_since_update: 0,
            status,
            class_id: obs.class_id,
            score: obs.score,
            gallery,
            frames_since_embedding: 0,
        });
        self.next_id += 1;
    }

    /// DeepSORT's matching of the `pool` candidates: the appearance cascade, then IoU.
    fn associate(&self, candidates: &[Candidate], pool: Vec<usize>) -> Association {
        let confirmed: Vec<usize> =
            (0..self.tracks.len()).filter(|&i| self.tracks[i].status == TrackStatus::Confirmed).collect();
        let unconfirmed: Vec<usize> =
            (0..self.tracks.len()).filter(|&i| self.tracks[i].status != TrackStatus::Confirmed).collect();

        // Matching cascade: tracks seen more recently get the first pick of the detections.
        let mut matches = Vec::new();
        let mut unmatched = pool;
        for level in 0..self.params.max_age {
            if unmatched.is_empty() {
                break;
            }
            let at_level: Vec<usize> =
                confirmed.iter().copied().filter(|&t| self.tracks[t].time_since_update == 1 + level).collect();
            if at_level.is_empty() {
                continue;
            }
            let cost = self.gated_appearance_cost(&at_level, &unmatched, candidates);
            let a = min_cost_matching(&cost, self.params.max_cosine_distance);
            matches.extend(a.matches.iter().map(|&(r, c)| (at_level[r], unmatched[c])));
            unmatched = a.unmatched_cols.iter().map(|&c| unmatched[c]).collect();
        }
        let cascade_matched: Vec<bool> = {
            let mut m = vec![false; self.tracks.len()];
            for &(t, _) in &matches {
                m[t] = true;
            }
            m
        };
        let by_appearance = matches.len();
        let missed_by_cascade: Vec<usize> = confirmed.iter().copied().filter(|&t| !cascade_matched[t]).collect();

        // IoU matching for tentative tracks and confirmed tracks missed for up to `iou_max_age` frames.
        let recent = |t: usize| self.tracks[t].time_since_update <= self.params.iou_max_age;
        let mut iou_tracks = unconfirmed;
        iou_tracks.extend(missed_by_cascade.iter().copied().filter(|&t| recent(t)));
        let mut unmatched_tracks: Vec<usize> = missed_by_cascade.iter().copied().filter(|&t| !recent(t)).collect();
        let cost = self.iou_cost(&iou_tracks, &unmatched, candidates);
        let a = min_cost_matching(&cost, self.params.max_iou_distance);
        matches.extend(a.matches.iter().map(|&(r, c)| (iou_tracks[r], unmatched[c])));
        unmatched_tracks.extend(a.unmatched_rows.iter().map(|&r| iou_tracks[r]));
        let unmatched_candidates = a.unmatched_cols.iter().map(|&c| unmatched[c]).collect();
        Association { matches, by_appearance, unmatched_tracks, unmatched_candidates }
    }

    /// Nearest-neighbour cosine distance to each track's gallery, with pairs outside the Kalman
    /// Mahalanobis gate made infeasible. Where either side has no embedding, the pair is scored by
    /// motion alone (the paper's λ = 1): d² / gate, scaled onto the appearance threshold.
    fn gated_appearance_cost(&self, tracks: &[usize], cols: &[usize], candidates: &[Candidate]) -> CostMatrix {
        let measurements: Vec<Measurement> = cols.iter().map(|&c| candidates[c].measurement).collect();
        let mut cost = CostMatrix::new(tracks.len(), cols.len());
        for (row, &t) in tracks.iter().enumerate() {
            let track = &self.tracks[t];
            let gating = kalman::gating_distances(&track.state, &measurements);
            for (col, &c) in cols.iter().enumerate() {
                let value = if gating[col] > CHI2_INV95_4DOF {
                    INFEASIBLE
                } else {
                    match candidates[c].feature.as_deref().and_then(|f| track.gallery.nearest(f)) {
                        Some(d) => f64::from(d),
                        None => gating[col] / CHI2_INV95_4DOF * self.params.max_cosine_distance,
                    }
                };
                cost.set(row, col, value);
            }
        }
        cost
    }

    fn iou_cost(&self, tracks: &[usize], cols: &[usize], candidates: &[Candidate]) -> CostMatrix {
        let mut cost = CostMatrix::new(tracks.len(), cols.len());
        for (row, &t) in tracks.iter().enumerate() {
            let track = &self.tracks[t];
            let bbox = track.corners();
            for (col, &c) in cols.iter().enumerate() {
                let value = if track.time_since_update > self.params.iou_max_age {
                    INFEASIBLE
                } else {
                    1.0 - iou(&bbox, &candidates[c].bbox)
                };
                cost.set(row, col, value);
            }
        }
        cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(x: f32, y: f32, w: f32, h: f32, feature: &[f32]) -> Observation {
        Observation {
            bbox: BBox { x1: x, y1: y, x2: x + w, y2: y + h },
            score: 0.9,
            class_id: 0,
            feature: feature.to_vec(),
        }
    }

    #[test]
    fn tracks_are_confirmed_after_n_init_hits_and_report_kalman_boxes() {
        let mut tracker = Tracker::new(TrackerParams::default());
        assert!(tracker.step(&[obs(100.0, 100.0, 50.0, 100.0, &[1.0, 0.0])]).is_empty());
        assert!(tracker.step(&[obs(102.0, 100.0, 50.0, 100.0, &[1.0, 0.0])]).is_empty());
        let out = tracker.step(&[obs(104.0, 100.0, 50.0, 100.0, &[1.0, 0.0])]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].track_id, 1);
        assert_eq!(out[0].observation, 0);
        // Filtered, so between the prediction and the measurement, not equal to either.
        assert!(out[0].bbox.x1 > 102.0 && out[0].bbox.x1 < 104.5, "{:?}", out[0].bbox);
    }

    #[test]
    fn a_tentative_track_dies_on_its_first_miss() {
        let mut tracker = Tracker::new(TrackerParams::default());
        tracker.step(&[obs(100.0, 100.0, 50.0, 100.0, &[])]);
        tracker.step(&[]);
        assert!(tracker.tracks().is_empty());
    }

    #[test]
    fn confirmed_tracks_survive_max_age_misses_then_go() {
        let params = TrackerParams { max_age: 5, ..TrackerParams::default() };
        let mut tracker = Tracker::new(params);
        for _ in 0..3 {
            tracker.step(&[obs(100.0, 100.0, 50.0, 100.0, &[1.0, 0.0])]);
        }
        for _ in 0..5 {
            tracker.step(&[]);
        }
        assert_eq!(tracker.confirmed_count(), 1);
        tracker.step(&[]);
        assert_eq!(tracker.confirmed_count(), 0);
    }

    #[test]
    fn the_gate_refuses_a_jump_even_with_a_perfect_appearance_match() {
        let mut tracker = Tracker::new(TrackerParams::default());
        for _ in 0..3 {
            tracker.step(&[obs(100.0, 100.0, 50.0, 100.0, &[1.0, 0.0])]);
        }
        // Same embedding, 300 px away: gated out of the cascade, IoU 0: a new track.
        tracker.step(&[obs(400.0, 100.0, 50.0, 100.0, &[1.0, 0.0])]);
        let ids: Vec<u64> = tracker.tracks().iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(tracker.tracks()[0].time_since_update, 1);
    }

    #[test]
    fn the_cascade_serves_recently_seen_tracks_first() {
        // Two confirmed tracks at the same place and with the same appearance; A was last seen one
        // frame ago, B three frames ago. The one detection must go to A.
        let mut tracker = Tracker::new(TrackerParams::default());
        let f = [1.0, 0.0];
        for _ in 0..3 {
            tracker.step(&[obs(100.0, 100.0, 50.0, 100.0, &f), obs(105.0, 100.0, 50.0, 100.0, &f)]);
        }
        // B (id 2) is missed for two frames while A (id 1) keeps being seen.
        for _ in 0..2 {
            tracker.step(&[obs(100.0, 100.0, 50.0, 100.0, &f)]);
        }
        let b = tracker.tracks().iter().find(|t| t.id == 2).unwrap();
        assert_eq!(b.time_since_update, 2);
        let out = tracker.step(&[obs(103.0, 100.0, 50.0, 100.0, &f)]);
        assert_eq!(out.iter().map(|o| o.track_id).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn appearance_decides_between_two_equally_close_tracks() {
        let mut tracker = Tracker::new(TrackerParams::default());
        for _ in 0..3 {
            tracker.step(&[obs(100.0, 100.0, 50.0, 100.0, &[1.0, 0.0]), obs(130.0, 100.0, 50.0, 100.0, &[0.0, 1.0])]);
        }
        // Detections swapped in position order but carrying their own appearance.
        let out =
            tracker.step(&[obs(116.0, 100.0, 50.0, 100.0, &[0.0, 1.0]), obs(114.0, 100.0, 50.0, 100.0, &[1.0, 0.0])]);
        let by_obs: Vec<(usize, u64)> = out.iter().map(|o| (o.observation, o.track_id)).collect();
        assert!(by_obs.contains(&(0, 2)) && by_obs.contains(&(1, 1)), "{by_obs:?}");
    }

    #[test]
    fn a_foreign_embedding_matched_by_iou_moves_the_track_but_stays_out_of_its_gallery() {
        for (policy, expected_gallery) in [(GalleryUpdate::Consistent, 3), (GalleryUpdate::Every, 4)] {
            let mut tracker = Tracker::new(TrackerParams { gallery_update: policy, ..TrackerParams::default() });
            for _ in 0..3 {
                tracker.step(&[obs(100.0, 100.0, 50.0, 100.0, &[1.0, 0.0])]);
            }
            // Same place, someone else's appearance: the cascade refuses it, IoU matching takes it.
            let out = tracker.step(&[obs(101.0, 100.0, 50.0, 100.0, &[0.0, 1.0])]);
            assert_eq!(out.iter().map(|o| o.track_id).collect::<Vec<_>>(), vec![1], "{policy:?}");
            assert_eq!(tracker.tracks()[0].gallery_len(), expected_gallery, "{policy:?}");
        }
    }

    /// Two people walk towards each other along the same line, overlap for several frames (one
    /// hides the other for two frames, as in an occlusion), and walk on. Each must keep its id.
    #[test]
    fn ids_survive_a_crossing_with_occlusion() {
        let mut tracker = Tracker::new(TrackerParams::default());
        let (red, blue) = ([1.0, 0.0, 0.1], [0.0, 1.0, 0.1]);
        let mut seen: Vec<(u64, u64)> = Vec::new();
        for frame in 0..40 {
            let a_x = 100.0 + 8.0 * frame as f32; // walking right
            let b_x = 420.0 - 8.0 * frame as f32; // walking left; they meet near frame 20
            let mut frame_obs = vec![obs(a_x, 100.0, 40.0, 100.0, &red)];
            if !(19..=20).contains(&frame) {
                frame_obs.push(obs(b_x, 102.0, 40.0, 100.0, &blue));
            }
            let out = tracker.step(&frame_obs);
            let id_of = |i: usize| out.iter().find(|o| o.observation == i).map(|o| o.track_id);
            if let (Some(a), Some(b)) = (id_of(0), id_of(1)) {
                seen.push((a, b));
            }
        }
        assert!(seen.len() >= 30, "{} frames with both tracked", seen.len());
        assert!(seen.iter().all(|&ids| ids == seen[0]), "ids changed: {seen:?}");
        assert_ne!(seen[0].0, seen[0].1);
    }

    fn scored(x: f32, score: f32, feature: &[f32]) -> Observation {
        Observation { score, ..obs(x, 100.0, 50.0, 100.0, feature) }
    }

    #[test]
    fn a_low_score_box_keeps_a_track_alive_but_never_starts_one() {
        let params = TrackerParams { high_score: 0.5, new_track_score: 0.6, ..TrackerParams::default() };
        let mut tracker = Tracker::new(params);
        for frame in 0..3 {
            tracker.step(&[scored(100.0 + 2.0 * frame as f32, 0.9, &[1.0, 0.0])]);
        }
        // An occluded frame: the person's box scores 0.3 and carries someone else's appearance;
        // a low-score clutter box elsewhere must not become a track.
        let out = tracker.step(&[scored(106.0, 0.3, &[0.0, 1.0]), scored(400.0, 0.3, &[0.0, 1.0])]);
        assert_eq!(out.iter().map(|o| (o.track_id, o.observation)).collect::<Vec<_>>(), vec![(1, 0)]);
        assert_eq!(tracker.tracks().len(), 1, "the clutter box started a track");
        // A high-score box under new_track_score does not start one either.
        tracker.step(&[scored(108.0, 0.9, &[1.0, 0.0]), scored(400.0, 0.55, &[0.0, 1.0])]);
        assert_eq!(tracker.tracks().len(), 1);
        // With DeepSORT's settings every box is high-score and starts a track.
        let mut paper = Tracker::new(TrackerParams::deep_sort());
        paper.step(&[scored(400.0, 0.05, &[])]);
        assert_eq!(paper.tracks().len(), 1);
    }

    #[test]
    fn iou_matching_finds_a_track_missed_for_a_few_frames_only_when_allowed() {
        for (iou_max_age, expected) in [(1, vec![2]), (5, vec![1])] {
            let params = TrackerParams { iou_max_age, ..TrackerParams::default() };
            let mut tracker = Tracker::new(params);
            for frame in 0..5 {
                tracker.step(&[obs(100.0 + 4.0 * frame as f32, 100.0, 50.0, 100.0, &[0.0, 1.0])]);
            }
            tracker.step(&[]);
            tracker.step(&[]);
            // Where the track was heading, with an appearance the cascade refuses (a changed view):
            // only IoU matching can take it, and only for a track missed more than once if
            // iou_max_age allows.
            let mut seen = Vec::new();
            for frame in 7..10 {
                let out = tracker.step(&[obs(100.0 + 4.0 * frame as f32, 100.0, 50.0, 100.0, &[1.0, 0.0])]);
                seen.extend(out.iter().map(|o| o.track_id));
            }
            seen.dedup();
            assert_eq!(seen, expected, "iou_max_age {iou_max_age}");
        }
    }

    #[test]
    fn only_boxes_whose_match_is_not_plain_need_an_embedding() {
        let params =
            TrackerParams { embed_only_ambiguous: true, embedding_refresh_frames: 4, ..TrackerParams::default() };
        let mut tracker = Tracker::new(params);
        let b = |x: f32| BBox { x1: x, y1: 100.0, x2: x + 50.0, y2: 200.0 };
        // Nothing tracked yet: every box needs one.
        assert_eq!(tracker.needs_embedding(&[b(100.0)]), vec![true]);
        for _ in 0..3 {
            tracker.step(&[obs(100.0, 100.0, 50.0, 100.0, &[1.0, 0.0]), obs(300.0, 100.0, 50.0, 100.0, &[0.0, 1.0])]);
        }
        // Each box sits on its own confirmed track, far from the other: plain.
        assert_eq!(tracker.needs_embedding(&[b(101.0), b(301.0)]), vec![false, false]);
        // A box in between overlaps neither enough; a second box on a track makes both on it ambiguous.
        assert_eq!(tracker.needs_embedding(&[b(101.0), b(200.0)]), vec![false, true]);
        assert_eq!(tracker.needs_embedding(&[b(101.0), b(120.0), b(301.0)]), vec![true, true, false]);
        // After refresh − 1 frames without an embedding the track asks for one again.
        for _ in 0..3 {
            tracker.step(&[obs(100.0, 100.0, 50.0, 100.0, &[]), obs(300.0, 100.0, 50.0, 100.0, &[0.0, 1.0])]);
        }
        assert_eq!(tracker.needs_embedding(&[b(101.0), b(301.0)]), vec![true, false]);
        // Off, every box needs one.
        let off = Tracker::new(TrackerParams { embed_only_ambiguous: false, ..params });
        assert_eq!(off.needs_embedding(&[b(1.0), b(2.0)]), vec![true, true]);
    }

    #[test]
    fn the_reported_box_is_the_detection_or_the_filtered_one_as_configured() {
        let mut boxes = Vec::new();
        for reported_box in [ReportedBox::Detection, ReportedBox::Filtered] {
            let mut tracker = Tracker::new(TrackerParams { reported_box, n_init: 1, ..TrackerParams::default() });
            tracker.step(&[obs(100.0, 100.0, 50.0, 100.0, &[1.0, 0.0])]);
            let out = tracker.step(&[obs(110.0, 100.0, 50.0, 100.0, &[1.0, 0.0])]);
            boxes.push(out[0].bbox);
        }
        assert_eq!(boxes[0], obs(110.0, 100.0, 50.0, 100.0, &[]).bbox);
        // The filter is still between the two positions after one update.
        assert!(boxes[1].x1 > 100.0 && boxes[1].x1 < 110.0, "{:?}", boxes[1]);
    }

    #[test]
    fn degenerate_boxes_are_ignored() {
        let mut tracker = Tracker::new(TrackerParams::default());
        tracker.step(&[
            obs(10.0, 10.0, 0.0, 20.0, &[]),
            obs(10.0, 10.0, 20.0, -5.0, &[]),
            obs(f32::NAN, 1.0, 2.0, 2.0, &[]),
        ]);
        assert!(tracker.tracks().is_empty());
    }
}
