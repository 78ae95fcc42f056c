//! The client's deadline, from the `grpc-timeout` header ("<digits><unit>", unit H M S m u n),
//! counted from when the call arrived.
//!
//! The transport also times each call from that header and, when the time is up first, answers
//! CANCELLED. So every call is answered [`ANSWER_AHEAD`] before its deadline by linesight, with
//! DEADLINE_EXCEEDED: by the `Inspect` handler (its frame counted as shed for `client_deadline`
//! under its pipeline) or, while the call's message is still being read, by [`AnswerByDeadline`].

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::pipeline::{InspectError, ShedLimit};
use crate::telemetry::Metrics;

/// How long before the client's deadline a call still running is answered: the transport's timer
/// starts a few microseconds before [`AnswerByDeadline`]'s, and one timer tick ahead wins.
pub const ANSWER_AHEAD: Duration = Duration::from_millis(1);

/// The `Inspect` method's path: its calls are frames, counted when shed.
const INSPECT_PATH: &str = "/linesight.v1.Inspection/Inspect";

/// When a call must be answered by, put in its extensions by [`AnswerByDeadline`].
#[derive(Debug, Clone, Copy)]
pub struct AnswerBy(pub Instant);

/// When a call with `timeout` that arrived at `arrived` must be answered by.
fn answer_by_deadline(arrived: Instant, timeout: Duration) -> Instant {
    let deadline = arrived.checked_add(timeout).unwrap_or(arrived + Duration::from_secs(86_400 * 365));
    deadline.checked_sub(ANSWER_AHEAD).unwrap_or(deadline).max(arrived)
}

/// The `Inspect` handler's deadline: the one [`AnswerByDeadline`] set (`None`: the client set none).
pub fn answer_by<T>(request: &tonic::Request<T>) -> Option<Instant> {
    request.extensions().get::<AnswerBy>().map(|a| a.0)
}

/// Answers DEADLINE_EXCEEDED for a call still unanswered [`ANSWER_AHEAD`] before its gRPC deadline.
#[derive(Clone)]
pub struct AnswerByDeadlineLayer {
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for AnswerByDeadlineLayer {
    type Service = AnswerByDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AnswerByDeadline { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Clone)]
pub struct AnswerByDeadline<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<http::Request<B>> for AnswerByDeadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let arrived = Instant::now();
        let timeout = request.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        let Some(at) = timeout.map(|t| answer_by_deadline(arrived, t)) else {
            return Box::pin(self.inner.call(request));
        };
        request.extensions_mut().insert(AnswerBy(at));
        let is_frame = request.uri().path() == INSPECT_PATH;
        let metrics = self.metrics.clone();
        let answered = self.inner.call(request);
        Box::pin(async move {
            // The handler's own answer at the same instant wins: the inner future is polled first.
            match tokio::time::timeout_at(at, answered).await {
                Ok(response) => response,
                Err(_) => {
                    let error = InspectError::Shed { limit: ShedLimit::ClientDeadline, waited: arrived.elapsed() };
                    if is_frame {
                        super::observe::frame_failed(&metrics, super::observe::UNKNOWN_PIPELINE, &error);
                    }
                    let message = format!("{error}; its message was still being read");
                    Ok(tonic::Status::deadline_exceeded(message).into_http())
                }
            }
        })
    }
}

pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    // Bytes, not chars: a non-ASCII value must be refused, not split inside a character.
    let (&unit, digits) = value.as_bytes().split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount.checked_mul(3600)?),
        b'M' => Duration::from_secs(amount.checked_mul(60)?),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("83m"), Some(Duration::from_millis(83)));
        assert_eq!(parse_grpc_timeout("250u"), Some(Duration::from_micros(250)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn a_call_is_answered_just_before_its_deadline_and_never_before_it_arrived() {
        let now = Instant::now();
        assert_eq!(answer_by_deadline(now, Duration::from_millis(50)), now + Duration::from_millis(49));
        assert_eq!(answer_by_deadline(now, Duration::from_micros(10)), now);
    }

    #[test]
    fn malformed_values_are_ignored() {
        // "\u{d5}\u{3d2}": found by the validate_request fuzzer (a split inside a character).
        for bad in ["", "S", "10", "10x", "-1S", "+1S", "1234567890S", "1.5S", "\u{d5}\u{3d2}", "1\u{3d2}", "\u{3d2}S"]
        {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
