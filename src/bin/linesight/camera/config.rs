//! The camera bridge's settings: a `[bridge]` table for the connection and outputs, and one
//! `[[cameras]]` entry per source.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_with::{DurationMilliSeconds, serde_as};

#[derive(Debug, thiserror::Error)]
pub enum BridgeConfigError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("camera settings are wrong: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeFile {
    #[serde(default)]
    pub bridge: BridgeSettings,
    #[serde(default)]
    pub cameras: Vec<CameraSettings>,
}

/// How frames travel and where answers go.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSettings {
    /// The server, e.g. `http://127.0.0.1:50051` or `https://inspect.plant.local:50051`.
    pub server: String,
    /// Frames of one camera in flight at once; when all are out, newer frames replace the waiting one.
    pub window: usize,
    /// How frames are sent: `jpeg` (small on the wire) or `raw` (no encode or decode, for a local server).
    pub encoding: FrameEncoding,
    pub jpeg_quality: u8,
    /// Answers as JSON lines: a file path, or `-` for standard output.
    pub output: Option<PathBuf>,
    /// Ask for an annotated JPEG every N-th frame of each camera and write it under `annotate_dir`.
    pub annotate_every: u64,
    pub annotate_dir: Option<PathBuf>,
    /// How often the per-camera stats are logged.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "stats_interval_ms")]
    pub stats_interval: Duration,
    /// `GET /metrics` (Prometheus text) on this address.
    pub metrics_listen: Option<SocketAddr>,
    /// Waits between attempts to reopen a source or reach the server: doubling from the first to the last.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "reconnect_min_ms")]
    pub reconnect_min: Duration,
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "reconnect_max_ms")]
    pub reconnect_max: Duration,
    /// A network source that takes longer than this to open, or to deliver its next frame, is reopened.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "open_timeout_ms")]
    pub open_timeout: Duration,
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "read_timeout_ms")]
    pub read_timeout: Duration,
    /// A frame older than this (from its capture, as the source tells it) is dropped, not sent:
    /// when it is read (buffered at an open, released by a stall) and when its turn to be sent comes.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "max_frame_age_ms")]
    pub max_frame_age: Duration,
    /// A stream whose oldest frame in flight has no answer within this is torn down and reopened
    /// (a silent network path); HTTP/2 pings notice one while no frame is in flight.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "answer_timeout_ms")]
    pub answer_timeout: Duration,
}

impl Default for BridgeSettings {
    fn default() -> Self {
        Self {
            server: "http://127.0.0.1:50051".into(),
            window: 2,
            encoding: FrameEncoding::Jpeg,
            jpeg_quality: 90,
            output: None,
            annotate_every: 0,
            annotate_dir: None,
            stats_interval: Duration::from_secs(10),
            metrics_listen: None,
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(1),
            open_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(5),
            max_frame_age: Duration::from_millis(80),
            answer_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FrameEncoding {
    Jpeg,
    Raw,
}

/// One camera.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraSettings {
    /// The `camera_id` its frames carry (the server keeps tracks per id).
    pub id: String,
    /// `rtsp://…`, `http://…`, a video file, `/dev/videoN` (V4L2), or a GStreamer pipeline ending in
    /// `appsink` (written with `!`, or prefixed `gstreamer:`).
    pub source: String,
    /// Pipeline the frames ask for (empty: the server's default).
    #[serde(default)]
    pub pipeline: String,
    /// At most this many frames per second are sent; the rest are skipped at capture.
    pub fps: Option<f64>,
    /// Budget each frame carries; 0 = the server's default for the pipeline.
    #[serde(default)]
    pub budget_ms: u32,
    /// A video file starts again from its first frame when it ends.
    #[serde(default, rename = "loop")]
    pub looped: bool,
}

/// Where a camera's frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A network stream OpenCV opens with FFmpeg (`rtsp`, `rtsps`, `http`, `https`, `rtmp`, `udp`, `tcp`, `srt`).
    Url(String),
    /// A video file, played at its own frame rate as a camera would deliver it.
    File(PathBuf),
    /// A V4L2 device: `/dev/videoN`.
    Device(String),
    /// A GStreamer pipeline that ends in `appsink` (on a Jetson: hardware decode with `nvv4l2decoder`).
    GStreamer(String),
}

impl Source {
    pub fn parse(source: &str) -> Self {
        const SCHEMES: [&str; 8] = ["rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp", "srt"];
        let source = source.trim();
        if let Some(pipeline) = source.strip_prefix("gstreamer:") {
            return Self::GStreamer(pipeline.trim().to_owned());
        }
        if source.contains(" ! ") {
            return Self::GStreamer(source.to_owned());
        }
        if let Some((scheme, _)) = source.split_once("://")
            && SCHEMES.contains(&scheme.to_ascii_lowercase().as_str())
        {
            return Self::Url(source.to_owned());
        }
        if source.starts_with("/dev/video") {
            return Self::Device(source.to_owned());
        }
        Self::File(PathBuf::from(source))
    }

    /// A file ends; every other source is live and is reopened when it fails.
    pub fn is_live(&self) -> bool {
        !matches!(self, Self::File(_))
    }

    /// Whether the source's presentation times are its camera's clock (RTP timestamps), so that
    /// they tell how late a frame is; other sources' may be made up by the demuxer.
    pub fn has_source_timestamps(&self) -> bool {
        matches!(self, Self::Url(url) if url.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("rtsp://"))
            || url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("rtsps://")))
    }

    /// The source as logs show it: a URL without its password.
    pub fn display(&self) -> String {
        match self {
            Self::Url(url) => redact_password(url),
            Self::File(path) => path.display().to_string(),
            Self::Device(device) => device.clone(),
            Self::GStreamer(pipeline) => format!("gstreamer: {pipeline}"),
        }
    }
}

/// `rtsp://user:secret@host/…` → `rtsp://user:***@host/…`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl BridgeFile {
    pub fn from_file(path: &std::path::Path) -> Result<Self, BridgeConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| BridgeConfigError::Read { path: shown.clone(), message: e.to_string() })?;
        toml::from_str(&text).map_err(|e| BridgeConfigError::Parse { path: shown, message: e.to_string() })
    }

    /// Every problem at once, so that a config is fixed in one go.
    pub fn validate(&self) -> Result<(), BridgeConfigError> {
        let mut problems = Vec::new();
        let bridge = &self.bridge;
        if bridge.window == 0 {
            problems.push("bridge.window must be at least 1".to_owned());
        }
        if !(1..=100).contains(&bridge.jpeg_quality) {
            problems.push(format!("bridge.jpeg_quality must be 1..=100, not {}", bridge.jpeg_quality));
        }
        if bridge.reconnect_min.is_zero() || bridge.reconnect_min > bridge.reconnect_max {
            problems.push("bridge.reconnect_min_ms must be above 0 and at most bridge.reconnect_max_ms".to_owned());
        }
        if bridge.max_frame_age.is_zero() {
            problems.push("bridge.max_frame_age_ms must be above 0".to_owned());
        }
        if bridge.answer_timeout.is_zero() {
            problems.push("bridge.answer_timeout_ms must be above 0".to_owned());
        }
        if bridge.stats_interval.is_zero() {
            problems.push("bridge.stats_interval_ms must be above 0".to_owned());
        }
        if bridge.annotate_every > 0 && bridge.annotate_dir.is_none() {
            problems.push("bridge.annotate_every needs bridge.annotate_dir".to_owned());
        }
        if self.cameras.is_empty() {
            problems.push("no camera: add a [[cameras]] entry (or pass --source)".to_owned());
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, camera) in self.cameras.iter().enumerate() {
            let at = format!("cameras[{i}] ({:?})", camera.id);
            if camera.id.is_empty() {
                problems.push(format!("{at}: id must not be empty"));
            } else if !seen.insert(camera.id.as_str()) {
                problems.push(format!("{at}: id is used by another camera"));
            }
            if let Some(fps) = camera.fps
                && !(fps.is_finite() && fps > 0.0)
            {
                problems.push(format!("{at}: fps must be above 0, not {fps}"));
            }
            match Source::parse(&camera.source) {
                Source::File(path) if !path.is_file() => {
                    problems
                        .push(format!("{at}: source {} is not a file (nor a URL, device or pipeline)", path.display()));
                }
                Source::GStreamer(pipeline) if !pipeline.contains("appsink") => {
                    problems.push(format!("{at}: a GStreamer source must end in appsink"));
                }
                source if camera.looped && source.is_live() => {
                    problems.push(format!("{at}: loop applies to video files only"));
                }
                _ => {}
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(BridgeConfigError::Invalid(problems)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_told_apart_by_their_form() {
        assert_eq!(Source::parse("rtsp://10.0.0.7:554/stream1"), Source::Url("rtsp://10.0.0.7:554/stream1".into()));
        assert_eq!(Source::parse("HTTP://cam/mjpg"), Source::Url("HTTP://cam/mjpg".into()));
        assert_eq!(Source::parse("/dev/video0"), Source::Device("/dev/video0".into()));
        assert_eq!(Source::parse("clips/line.mp4"), Source::File("clips/line.mp4".into()));
        let pipeline = "rtspsrc location=rtsp://cam ! rtph264depay ! h264parse ! nvv4l2decoder ! nvvidconv ! appsink";
        assert_eq!(Source::parse(pipeline), Source::GStreamer(pipeline.into()));
        assert_eq!(
            Source::parse("gstreamer: videotestsrc ! appsink"),
            Source::GStreamer("videotestsrc ! appsink".into())
        );
        assert!(!Source::parse("clip.avi").is_live());
        assert!(Source::parse("/dev/video2").is_live());
    }

    #[test]
    fn a_password_in_a_url_is_not_shown() {
        assert_eq!(Source::parse("rtsp://admin:hunter2@10.0.0.7/s1").display(), "rtsp://admin:***@10.0.0.7/s1");
        assert_eq!(Source::parse("rtsp://10.0.0.7/s1").display(), "rtsp://10.0.0.7/s1");
    }

    #[test]
    fn a_config_file_reads_with_defaults_and_durations() {
        let file: BridgeFile = toml::from_str(
            r#"
            [bridge]
            server = "https://inspect:50051"
            window = 1
            read_timeout_ms = 1500
            [[cameras]]
            id = "line-3"
            source = "rtsp://cam3/live"
            pipeline = "track"
            fps = 10
            "#,
        )
        .unwrap();
        assert_eq!(file.bridge.window, 1);
        assert_eq!(file.bridge.read_timeout, Duration::from_millis(1500));
        assert_eq!(file.bridge.reconnect_max, Duration::from_secs(1));
        assert_eq!(file.bridge.max_frame_age, Duration::from_millis(80));
        assert_eq!(file.cameras[0].fps, Some(10.0));
        assert!(!file.cameras[0].looped);
        file.validate().unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let file: BridgeFile = toml::from_str(
            r#"
            [bridge]
            window = 0
            stats_interval_ms = 0
            annotate_every = 10
            [[cameras]]
            id = "a"
            source = "no/such/clip.avi"
            [[cameras]]
            id = "a"
            source = "rtsp://cam/live"
            fps = 0
            loop = true
            [[cameras]]
            id = "b"
            source = "videotestsrc ! autovideosink"
            "#,
        )
        .unwrap();
        let message = file.validate().unwrap_err().to_string();
        for expected in [
            "bridge.window must be at least 1",
            "bridge.stats_interval_ms must be above 0",
            "annotate_every needs bridge.annotate_dir",
            "source no/such/clip.avi is not a file",
            "cameras[1] (\"a\"): id is used by another camera",
            "fps must be above 0",
            "loop applies to video files only",
            "must end in appsink",
        ] {
            assert!(message.contains(expected), "{expected:?} not in {message}");
        }
    }

    #[test]
    fn the_example_cameras_file_is_valid() {
        let file: BridgeFile = toml::from_str(include_str!("../../../../cameras.example.toml")).unwrap();
        file.validate().unwrap();
        let sources: Vec<Source> = file.cameras.iter().map(|c| Source::parse(&c.source)).collect();
        assert!(matches!(sources[..], [Source::Url(_), Source::GStreamer(_), Source::Device(_)]), "{sources:?}");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let error = toml::from_str::<BridgeFile>("[bridge]\nwindw = 2\n").unwrap_err().to_string();
        assert!(error.contains("unknown field `windw`"), "{error}");
    }
}
