//! The one place library errors become gRPC statuses.

use tonic::{Code, Status};

use crate::pipeline::InspectError;

pub fn code_of(error: &InspectError) -> Code {
    match error {
        InspectError::EmptyCameraId
        | InspectError::CameraIdTooLong { .. }
        | InspectError::MissingImage
        | InspectError::UnknownEncoding(_)
        | InspectError::Decode(_) => Code::InvalidArgument,
        InspectError::UnknownPipeline { .. } => Code::NotFound,
        InspectError::QueueFull { .. } => Code::ResourceExhausted,
        InspectError::Shed { .. } => Code::DeadlineExceeded,
        InspectError::ShuttingDown => Code::Unavailable,
        InspectError::Engine(_) | InspectError::Detect(_) | InspectError::Internal(_) => {
            Code::Internal
        }
    }
}

pub fn to_status(error: &InspectError) -> Status {
    Status::new(code_of(error), error.to_string())
}

/// tonic refuses an oversized request with OUT_OF_RANGE before any handler runs; gRPC's convention
/// (and grpc-core's) is RESOURCE_EXHAUSTED. This layer rewrites that one status on unary responses
/// and says which limit was hit.
pub fn oversized_message_layer(
    limit: usize,
) -> tower::util::MapResponseLayer<
    impl Fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> + Clone,
> {
    tower::util::MapResponseLayer::new(move |mut response: http::Response<tonic::body::Body>| {
        let headers = response.headers_mut();
        let is_out_of_range = headers
            .get("grpc-status")
            .is_some_and(|v| v.as_bytes() == b"11");
        let oversized = headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| m.contains("decoded message length too large"));
        if is_out_of_range && oversized {
            let found = headers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .and_then(|m| m.split("found ").nth(1))
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or("?")
                .to_owned();
            let message = oversized_message(&found, limit);
            headers.insert("grpc-status", http::HeaderValue::from_static("8"));
            if let Ok(value) = http::HeaderValue::from_str(&message) {
                headers.insert("grpc-message", value);
            }
        }
        response
    })
}

pub fn oversized_message(found: &str, limit: usize) -> String {
    format!(
        "request message is {found} bytes, over the server limit of {limit} bytes (server.max_message_bytes)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::DecodeError;

    #[test]
    fn every_error_maps_to_its_code() {
        let table: Vec<(InspectError, Code)> = vec![
            (InspectError::EmptyCameraId, Code::InvalidArgument),
            (
                InspectError::CameraIdTooLong { len: 300, max: 256 },
                Code::InvalidArgument,
            ),
            (InspectError::MissingImage, Code::InvalidArgument),
            (InspectError::UnknownEncoding(42), Code::InvalidArgument),
            (
                InspectError::Decode(DecodeError::Empty),
                Code::InvalidArgument,
            ),
            (
                InspectError::UnknownPipeline {
                    name: "x".into(),
                    available: vec!["detect".into()],
                },
                Code::NotFound,
            ),
            (
                InspectError::QueueFull {
                    pipeline: "detect".into(),
                    capacity: 64,
                },
                Code::ResourceExhausted,
            ),
            (
                InspectError::Shed {
                    budget: std::time::Duration::from_millis(83),
                    waited: std::time::Duration::ZERO,
                },
                Code::DeadlineExceeded,
            ),
            (InspectError::ShuttingDown, Code::Unavailable),
            (InspectError::Engine("boom".into()), Code::Internal),
            (
                InspectError::Detect(crate::detect::DetectError::MissingOutput("cls".into())),
                Code::Internal,
            ),
            (InspectError::Internal("x".into()), Code::Internal),
        ];
        for (error, code) in table {
            let status = to_status(&error);
            assert_eq!(status.code(), code, "{error}");
            assert_eq!(status.message(), error.to_string());
        }
    }

    #[test]
    fn messages_name_the_field() {
        assert!(
            to_status(&InspectError::EmptyCameraId)
                .message()
                .contains("camera_id")
        );
        assert!(
            to_status(&InspectError::Decode(DecodeError::Empty))
                .message()
                .contains("image.data")
        );
        assert!(
            to_status(&InspectError::UnknownEncoding(9))
                .message()
                .contains("image.encoding")
        );
    }
}
