//! The one place library errors become gRPC statuses.

use tonic::{Code, Status};

use super::wire::UndecodableMessage;
use crate::pipeline::InspectError;

pub fn code_of(error: &InspectError) -> Code {
    match error {
        InspectError::EmptyCameraId
        | InspectError::CameraIdTooLong { .. }
        | InspectError::MissingImage
        | InspectError::UnknownEncoding(_)
        | InspectError::Decode(_)
        | InspectError::FrameOverMemoryBudget { .. } => Code::InvalidArgument,
        InspectError::UnknownPipeline { .. } => Code::NotFound,
        InspectError::NotTracking { .. } => Code::InvalidArgument,
        InspectError::QueueFull { .. }
        | InspectError::CameraBusy { .. }
        | InspectError::ServerBusy { .. }
        | InspectError::TooManyCameras { .. }
        | InspectError::DecodedMemory { .. } => Code::ResourceExhausted,
        InspectError::Shed { .. } => Code::DeadlineExceeded,
        InspectError::ShuttingDown | InspectError::Loading => Code::Unavailable,
        InspectError::Engine(_) | InspectError::Detect(_) | InspectError::Internal(_) => Code::Internal,
    }
}

/// A status a client reads as "shed": the frame was refused or dropped to keep the budget.
pub fn is_shed_code(code: Code) -> bool {
    matches!(code, Code::ResourceExhausted | Code::DeadlineExceeded)
}

/// Longest message a status (or a stream frame's error) carries, in bytes. Messages quote what the
/// client sent (a pipeline name, say), which can be as long as the largest request; past this they
/// are cut, so that no answer echoes megabytes back into a header.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `error`'s text, cut at [`MAX_MESSAGE_BYTES`] on a character boundary, saying how much was cut.
pub fn message_of(error: &impl std::fmt::Display) -> String {
    let full = error.to_string();
    if full.len() <= MAX_MESSAGE_BYTES {
        return full;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !full.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes cut)", &full[..end], full.len() - end)
}

pub fn to_status(error: &InspectError) -> Status {
    Status::new(code_of(error), message_of(error))
}

/// A message that is not protobuf is the client's bytes, not the server's failure (tonic's own
/// codec says INTERNAL).
pub fn code_of_undecodable(_: &UndecodableMessage) -> Code {
    Code::InvalidArgument
}

pub fn undecodable_status(error: &UndecodableMessage) -> Status {
    Status::new(code_of_undecodable(error), message_of(error))
}

/// tonic refuses an oversized request with OUT_OF_RANGE before any handler runs; gRPC's convention
/// (and grpc-core's) is RESOURCE_EXHAUSTED. This layer rewrites that one status, in headers or in
/// trailers, and says which limit was hit.
pub fn oversized_message_layer(
    limit: usize,
) -> tower::util::MapResponseLayer<
    impl Fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> + Clone,
> {
    tower::util::MapResponseLayer::new(move |response: http::Response<tonic::body::Body>| {
        let (mut parts, body) = response.into_parts();
        rewrite_oversized(&mut parts.headers, limit);
        http::Response::from_parts(parts, tonic::body::Body::new(TrailerRewrite { inner: body, limit }))
    })
}

fn rewrite_oversized(headers: &mut http::HeaderMap, limit: usize) {
    if headers.get("grpc-status").is_none_or(|v| v.as_bytes() != b"11") {
        return;
    }
    // grpc-message is percent-encoded on the wire.
    let message = headers
        .get("grpc-message")
        .map(|v| percent_encoding::percent_decode(v.as_bytes()).decode_utf8_lossy().into_owned())
        .unwrap_or_default();
    if let Some(message) = oversized_message(&message, limit) {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        if let Ok(value) = http::HeaderValue::from_str(&message) {
            headers.insert("grpc-message", value);
        }
    }
}

/// Response body that applies [`rewrite_oversized`] to its trailers.
struct TrailerRewrite {
    inner: tonic::body::Body,
    limit: usize,
}

impl http_body::Body for TrailerRewrite {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let limit = self.limit;
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        polled.map(|frame| {
            frame.map(|frame| {
                frame.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        rewrite_oversized(&mut trailers, limit);
                        http_body::Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Our message for tonic's "decoded message length too large: found N bytes, …", or `None` for any
/// other message.
pub fn oversized_message(tonic_message: &str, limit: usize) -> Option<String> {
    if !tonic_message.contains("decoded message length too large") {
        return None;
    }
    let found = tonic_message.split("found ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap_or("?");
    Some(format!("request message is {found} bytes, over the server limit of {limit} bytes (server.max_message_bytes)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::DecodeError;

    #[test]
    fn every_error_maps_to_its_code() {
        let table: Vec<(InspectError, Code)> = vec![
            (InspectError::EmptyCameraId, Code::InvalidArgument),
            (InspectError::CameraIdTooLong { len: 300, max: 256 }, Code::InvalidArgument),
            (InspectError::MissingImage, Code::InvalidArgument),
            (InspectError::UnknownEncoding(42), Code::InvalidArgument),
            (InspectError::Decode(DecodeError::Empty), Code::InvalidArgument),
            (InspectError::UnknownPipeline { name: "x".into(), available: vec!["detect".into()] }, Code::NotFound),
            (
                InspectError::NotTracking { name: "detect".into(), tracking: vec!["track".into()] },
                Code::InvalidArgument,
            ),
            (InspectError::QueueFull { pipeline: "detect".into(), capacity: 64 }, Code::ResourceExhausted),
            (
                InspectError::Shed {
                    limit: crate::pipeline::ShedLimit::Budget(std::time::Duration::from_millis(83)),
                    waited: std::time::Duration::ZERO,
                },
                Code::DeadlineExceeded,
            ),
            (InspectError::ShuttingDown, Code::Unavailable),
            (InspectError::Loading, Code::Unavailable),
            (InspectError::CameraBusy { camera_id: "cam".into(), max: 16 }, Code::ResourceExhausted),
            (InspectError::TooManyCameras { pipeline: "track".into(), max: 4 }, Code::ResourceExhausted),
            (InspectError::ServerBusy { max: 256 }, Code::ResourceExhausted),
            (
                InspectError::DecodedMemory {
                    width: 4000,
                    height: 3000,
                    needed_mib: 36,
                    held_mib: 100,
                    budget_mib: 128,
                },
                Code::ResourceExhausted,
            ),
            (
                InspectError::FrameOverMemoryBudget { width: 4000, height: 3000, needed_mib: 36, budget_mib: 16 },
                Code::InvalidArgument,
            ),
            (InspectError::Engine(crate::engine::EngineError::NoSession), Code::Internal),
            (InspectError::Detect(crate::detect::DetectError::MissingOutput("cls".into())), Code::Internal),
            (InspectError::Internal("x".into()), Code::Internal),
        ];
        // Every variant is in the table: `variant` has no catch-all arm, so a new variant does not
        // compile here until it is given a row.
        fn variant(error: &InspectError) -> usize {
            match error {
                InspectError::EmptyCameraId => 0,
                InspectError::CameraIdTooLong { .. } => 1,
                InspectError::UnknownPipeline { .. } => 2,
                InspectError::MissingImage => 3,
                InspectError::UnknownEncoding(_) => 4,
                InspectError::Decode(_) => 5,
                InspectError::QueueFull { .. } => 6,
                InspectError::CameraBusy { .. } => 7,
                InspectError::ServerBusy { .. } => 8,
                InspectError::Loading => 9,
                InspectError::Shed { .. } => 10,
                InspectError::Engine(_) => 11,
                InspectError::Detect(_) => 12,
                InspectError::ShuttingDown => 13,
                InspectError::Internal(_) => 14,
                InspectError::NotTracking { .. } => 15,
                InspectError::TooManyCameras { .. } => 16,
                InspectError::DecodedMemory { .. } => 17,
                InspectError::FrameOverMemoryBudget { .. } => 18,
            }
        }
        let covered: std::collections::BTreeSet<usize> = table.iter().map(|(e, _)| variant(e)).collect();
        assert_eq!(covered, (0..19).collect(), "every InspectError variant needs a row");
        for (error, code) in table {
            let status = to_status(&error);
            assert_eq!(status.code(), code, "{error}");
            assert_eq!(is_shed_code(code), error.is_shed(), "{error}");
            assert_eq!(status.message(), error.to_string());
        }
        let undecodable = UndecodableMessage("failed to decode Protobuf message: invalid wire type".into());
        let status = undecodable_status(&undecodable);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), undecodable.to_string());
        assert!(status.message().contains("could not be decoded") && status.message().contains("invalid wire type"));
    }

    #[test]
    fn client_text_in_a_message_is_cut_at_the_limit() {
        let name = "é".repeat(50_000);
        let error = InspectError::UnknownPipeline { name: name.clone(), available: vec!["detect".into()] };
        let message = to_status(&error).message().to_owned();
        assert!(message.len() <= MAX_MESSAGE_BYTES + 40, "{} bytes", message.len());
        assert!(message.starts_with("pipeline `"), "{message}");
        assert!(message.ends_with("more bytes cut)"), "{}", &message[message.len() - 40..]);
        // Short messages are whole.
        assert_eq!(message_of(&InspectError::EmptyCameraId), InspectError::EmptyCameraId.to_string());
    }

    #[test]
    fn messages_name_the_field() {
        assert!(to_status(&InspectError::EmptyCameraId).message().contains("camera_id"));
        assert!(to_status(&InspectError::Decode(DecodeError::Empty)).message().contains("image.data"));
        assert!(to_status(&InspectError::UnknownEncoding(9)).message().contains("image.encoding"));
    }

    #[test]
    fn only_tonics_oversize_message_is_rewritten() {
        let tonic = "Error, decoded message length too large: found 1048577 bytes, the limit is: 1048576 bytes";
        assert_eq!(
            oversized_message(tonic, 1_048_576).as_deref(),
            Some("request message is 1048577 bytes, over the server limit of 1048576 bytes (server.max_message_bytes)")
        );
        assert_eq!(oversized_message("some other out-of-range problem", 10), None);
    }
}
