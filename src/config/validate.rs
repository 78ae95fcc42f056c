//! Each section of the configuration checks itself and reports every problem with its TOML path;
//! `Config` adds what only the whole file can know (names that refer to other pipelines).

use crate::batching::BatchPolicy;
use crate::pipeline::{CellRuleSettings, DetectSettings, PipelineSettings, SegmentSettings, TrackSettings};

use super::{Config, EngineConfig, ServerConfig};

/// One problem found in a configuration, with its TOML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A section that checks itself; `at` is its TOML path (`""` for the file itself).
pub trait Validate {
    fn validate_into(&self, at: &str, problems: &mut Vec<ConfigProblem>);
}

/// `at.key`, or `key` at the top.
fn path(at: &str, key: &str) -> String {
    if at.is_empty() { key.to_owned() } else { format!("{at}.{key}") }
}

fn problem(problems: &mut Vec<ConfigProblem>, at: &str, key: &str, message: &str) {
    problems.push(ConfigProblem { path: path(at, key), message: message.to_owned() });
}

fn positive(problems: &mut Vec<ConfigProblem>, at: &str, key: &str, is_zero: bool) {
    if is_zero {
        problem(problems, at, key, "must be positive");
    }
}

fn fraction(problems: &mut Vec<ConfigProblem>, at: &str, key: &str, value: Option<f32>) {
    if value.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
        problem(problems, at, key, "must be within 0..=1");
    }
}

impl Validate for Config {
    fn validate_into(&self, _at: &str, problems: &mut Vec<ConfigProblem>) {
        self.server.validate_into("server", problems);
        self.engine.validate_into("engine", problems);
        if self.pipelines.is_empty() {
            problem(problems, "", "pipelines", "at least one pipeline is required");
        }
        if !self.pipelines.contains_key(&self.default_pipeline) {
            problem(problems, "", "default_pipeline", "names no configured pipeline");
        }
        for (name, pipeline) in &self.pipelines {
            if name.is_empty() {
                problem(problems, "", "pipelines", "pipeline names must not be empty");
            }
            let at = format!("pipelines.{name}");
            pipeline.validate_into(&at, problems);
            if let PipelineSettings::Track(track) = pipeline {
                match self.pipelines.get(&track.detector) {
                    Some(PipelineSettings::Detect(_)) => {}
                    Some(_) => problem(problems, &at, "detector", "must name a pipeline of kind `detect`"),
                    None => problem(problems, &at, "detector", "names no configured pipeline"),
                }
            }
        }
    }
}

impl Validate for ServerConfig {
    fn validate_into(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        if self.max_message_bytes < 1024 {
            problem(problems, at, "max_message_bytes", "must be at least 1024");
        }
        positive(problems, at, "max_decoded_pixels", self.max_decoded_pixels == 0);
        positive(problems, at, "max_image_side", self.max_image_side == 0);
        positive(problems, at, "max_decoded_mib", self.max_decoded_mib == 0);
        positive(problems, at, "default_budget_ms", self.default_budget.is_zero());
        positive(problems, at, "cpu_workers", self.cpu_workers == 0);
        positive(problems, at, "stream_window", self.stream_window == 0);
        positive(problems, at, "max_in_flight_per_camera", self.max_in_flight_per_camera == 0);
        positive(problems, at, "max_frames_in_flight", self.max_frames_in_flight == 0);
        positive(problems, at, "max_connections", self.max_connections == 0);
        positive(problems, at, "preface_timeout_ms", self.preface_timeout.is_zero());
        positive(problems, at, "keepalive_interval_ms", self.keepalive_interval.is_zero());
        positive(problems, at, "keepalive_timeout_ms", self.keepalive_timeout.is_zero());
        positive(problems, at, "max_concurrent_streams", self.max_concurrent_streams == 0);
        if let Some(tls) = &self.tls {
            positive(problems, &path(at, "tls"), "handshake_timeout_ms", tls.handshake_timeout.is_zero());
        }
        if let Some(auth) = &self.auth
            && auth.tokens_file.is_none()
            && auth.tokens_env.is_none()
        {
            problem(problems, at, "auth", "needs tokens_file, tokens_env or both");
        }
        if let Some(metrics) = &self.metrics
            && metrics.listen == self.listen
        {
            problem(problems, at, "metrics.listen", "must differ from server.listen");
        }
    }
}

impl Validate for EngineConfig {
    fn validate_into(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        positive(problems, at, "intra_threads", self.intra_threads == 0);
        positive(problems, at, "tensorrt.workspace_mib", self.tensorrt.workspace_mib == 0);
        if self.gpu_memory_budget_mib == Some(0) {
            problem(problems, at, "gpu_memory_budget_mib", "must be positive (leave it out for no budget)");
        }
    }
}

impl Validate for PipelineSettings {
    fn validate_into(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        match self {
            PipelineSettings::Detect(p) => p.validate_into(at, problems),
            PipelineSettings::Track(p) => p.validate_into(at, problems),
            PipelineSettings::Segment(p) => p.validate_into(at, problems),
        }
    }
}

/// What every kind has: its model, instances and budget.
fn model_stage(problems: &mut Vec<ConfigProblem>, at: &str, model: &str, instances: usize, budget_zero: bool) {
    if model.is_empty() {
        problem(problems, at, "model", "must name a model folder");
    }
    positive(problems, at, "instances", instances == 0);
    positive(problems, at, "budget_ms", budget_zero);
}

/// Score and IoU thresholds, and the detection cap.
fn thresholds(
    problems: &mut Vec<ConfigProblem>,
    at: &str,
    score: Option<f32>,
    iou: Option<f32>,
    max_detections: Option<usize>,
) {
    fraction(problems, at, "score_threshold", score);
    fraction(problems, at, "iou_threshold", iou);
    positive(problems, at, "max_detections", max_detections == Some(0));
}

impl Validate for DetectSettings {
    fn validate_into(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        model_stage(problems, at, &self.model, self.instances, self.budget.is_some_and(|b| b.is_zero()));
        self.batching.validate_into(&path(at, "batching"), problems);
        thresholds(problems, at, self.score_threshold, self.iou_threshold, self.max_detections);
    }
}

impl Validate for SegmentSettings {
    fn validate_into(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        model_stage(problems, at, &self.model, self.instances, self.budget.is_some_and(|b| b.is_zero()));
        self.batching.validate_into(&path(at, "batching"), problems);
        thresholds(problems, at, self.score_threshold, self.iou_threshold, self.max_detections);
        fraction(problems, at, "mask_threshold", self.mask_threshold);
        self.cell_rule.validate_into(&path(at, "cell_rule"), problems);
    }
}

impl Validate for CellRuleSettings {
    fn validate_into(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        fraction(problems, at, "min_score", self.min_score);
        fraction(problems, at, "min_area_fraction", self.min_area_fraction);
        fraction(problems, at, "min_defect_probability", self.min_defect_probability);
    }
}

impl Validate for TrackSettings {
    fn validate_into(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        model_stage(problems, at, &self.model, self.instances, self.budget.is_some_and(|b| b.is_zero()));
        let analytics = path(at, "analytics");
        for (key, message) in self.analytics.problems() {
            problem(problems, &analytics, &key, &message);
        }
        let at = path(at, "tracker");
        let (t, p) = (&self.tracker, &self.tracker.params);
        positive(problems, &at, "n_init", p.n_init == 0);
        positive(problems, &at, "max_age", p.max_age == 0);
        if !(0.0..=1.0).contains(&p.max_iou_distance) {
            problem(problems, &at, "max_iou_distance", "must be within 0..=1");
        }
        if !(0.0..=2.0).contains(&p.max_cosine_distance) {
            problem(problems, &at, "max_cosine_distance", "must be within 0..=2");
        }
        positive(problems, &at, "nn_budget", p.nn_budget == 0);
        for (key, side) in [("crop_width", t.crop_width), ("crop_height", t.crop_height)] {
            if side.is_some_and(|v| !(16..=1024).contains(&v)) {
                problem(problems, &at, key, "must be within 16..=1024");
            }
        }
        positive(problems, &at, "camera_idle_s", t.camera_idle.is_zero());
        positive(problems, &at, "max_cameras", t.max_cameras == 0);
        t.embedder_batching.validate_into(&path(&at, "embedder_batching"), problems);
    }
}

impl Validate for BatchPolicy {
    fn validate_into(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        positive(problems, at, "max_batch", self.max_batch == 0);
        if self.max_queue_size < self.max_batch {
            problem(problems, at, "max_queue_size", "must be at least max_batch");
        }
    }
}
