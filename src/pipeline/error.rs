//! Everything that can go wrong with one frame. `api::status` maps each to a gRPC status.

use std::time::Duration;

use crate::detect::DetectError;
use crate::engine::EngineError;
use crate::imaging::DecodeError;

/// Client text longer than this is cut where an error quotes it, so that the message still says
/// what the client should have sent.
pub const MAX_QUOTED_BYTES: usize = 128;

/// `text` as an error quotes it: whole, or its first [`MAX_QUOTED_BYTES`] (on a character boundary)
/// and how long it was.
pub fn quoted(text: &str) -> String {
    if text.len() <= MAX_QUOTED_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_QUOTED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum InspectError {
    #[error("camera_id is empty; every frame must name its camera")]
    EmptyCameraId,
    #[error("camera_id is {len} bytes long; the limit is {max}")]
    CameraIdTooLong { len: usize, max: usize },
    #[error("pipeline `{name}` does not exist; available: {}", available.join(", "))]
    UnknownPipeline { name: String, available: Vec<String> },
    #[error("pipeline `{name}` is not a track pipeline and has no line counts; track pipelines: {}", tracking.join(", "))]
    NotTracking { name: String, tracking: Vec<String> },
    #[error("image is missing")]
    MissingImage,
    #[error("image.encoding {0} is not a known encoding")]
    UnknownEncoding(i32),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("pipeline `{pipeline}` queue is full ({capacity} frames waiting); frame shed")]
    QueueFull { pipeline: String, capacity: usize },
    #[error("camera `{camera_id}` already has {max} frames in flight (server.max_in_flight_per_camera); frame refused")]
    CameraBusy { camera_id: String, max: usize },
    #[error("the server already has {max} frames in flight (server.max_frames_in_flight); frame refused")]
    ServerBusy { max: usize },
    #[error(
        "frames in flight already take {held_mib} MiB decoded and this {width}x{height} frame needs {needed_mib} \
         MiB more, over server.max_decoded_mib = {budget_mib}; frame refused"
    )]
    DecodedMemory { width: u32, height: u32, needed_mib: u64, held_mib: u64, budget_mib: u64 },
    #[error(
        "this {width}x{height} frame alone needs {needed_mib} MiB decoded, over server.max_decoded_mib = \
         {budget_mib}; send it smaller"
    )]
    FrameOverMemoryBudget { width: u32, height: u32, needed_mib: u64, budget_mib: u64 },
    #[error(
        "pipeline `{pipeline}` already tracks {max} cameras (pipelines.{pipeline}.tracker.max_cameras); a new camera \
         is refused until one has sent nothing for camera_idle_s"
    )]
    TooManyCameras { pipeline: String, max: usize },
    #[error("models are still loading; retry shortly")]
    Loading,
    #[error("frame shed: it could no longer finish {} (waited {} ms)", limit, waited.as_millis())]
    Shed { limit: ShedLimit, waited: Duration },
    #[error("inference failed: {0}")]
    Engine(#[from] EngineError),
    #[error("decoding model outputs failed: {0}")]
    Detect(#[from] DetectError),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a frame was shed: the one list, used by the metrics' `reason` label and the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShedCause {
    /// Its pipeline's queue was full.
    QueueFull,
    /// It could no longer finish within its budget.
    Budget,
    /// It could no longer finish before its client's gRPC deadline.
    ClientDeadline,
    /// Its camera had `server.max_in_flight_per_camera` frames in flight.
    CameraInFlight,
    /// The server had `server.max_frames_in_flight` frames in flight.
    ServerInFlight,
    /// A new camera of a `track` pipeline that already tracks `max_cameras`.
    TrackedCameras,
    /// The frames in flight already took `server.max_decoded_mib`.
    DecodedMemory,
}

impl ShedCause {
    pub const ALL: [ShedCause; 7] = [
        ShedCause::QueueFull,
        ShedCause::Budget,
        ShedCause::ClientDeadline,
        ShedCause::CameraInFlight,
        ShedCause::ServerInFlight,
        ShedCause::TrackedCameras,
        ShedCause::DecodedMemory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ShedCause::QueueFull => "queue_full",
            ShedCause::Budget => "budget",
            ShedCause::ClientDeadline => "client_deadline",
            ShedCause::CameraInFlight => "camera_in_flight",
            ShedCause::ServerInFlight => "server_in_flight",
            ShedCause::TrackedCameras => "tracked_cameras",
            ShedCause::DecodedMemory => "decoded_memory",
        }
    }
}

/// Which deadline a shed frame could not meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedLimit {
    Budget(Duration),
    ClientDeadline,
}

impl std::fmt::Display for ShedLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShedLimit::Budget(budget) => write!(f, "within its {} ms budget", budget.as_millis()),
            ShedLimit::ClientDeadline => f.write_str("before the client's gRPC deadline"),
        }
    }
}

impl InspectError {
    /// Frames refused for lack of time or room are answered with the `shed` verdict.
    pub fn is_shed(&self) -> bool {
        self.shed_cause().is_some()
    }

    /// Why a shed frame was shed; `None` for every other error.
    pub fn shed_cause(&self) -> Option<ShedCause> {
        match self {
            InspectError::QueueFull { .. } => Some(ShedCause::QueueFull),
            InspectError::Shed { limit: ShedLimit::Budget(_), .. } => Some(ShedCause::Budget),
            InspectError::Shed { limit: ShedLimit::ClientDeadline, .. } => Some(ShedCause::ClientDeadline),
            InspectError::CameraBusy { .. } => Some(ShedCause::CameraInFlight),
            InspectError::ServerBusy { .. } => Some(ShedCause::ServerInFlight),
            InspectError::TooManyCameras { .. } => Some(ShedCause::TrackedCameras),
            InspectError::DecodedMemory { .. } => Some(ShedCause::DecodedMemory),
            _ => None,
        }
    }
}

#[cfg(test)]
mod quoting_tests {
    use super::*;

    #[test]
    fn a_long_unknown_pipeline_name_is_cut_and_the_message_still_names_the_pipelines() {
        let name = "x".repeat(100_000);
        let message =
            InspectError::UnknownPipeline { name: quoted(&name), available: vec!["detect".into()] }.to_string();
        assert!(message.len() < 300, "{} bytes", message.len());
        assert!(message.contains("(100000 bytes)") && message.ends_with("available: detect"), "{message}");
        assert_eq!(quoted("track"), "track");
        assert!(quoted(&"é".repeat(100)).starts_with(&"é".repeat(64)), "cut on a character boundary");
    }
}
