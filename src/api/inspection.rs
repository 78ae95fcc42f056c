//! `linesight.v1.Inspection`.

use std::pin::Pin;
use std::sync::Arc;

use futures::future::Either;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{
    error_response, frame_request, inspect_response, line_counts, pipeline_info, pipeline_tracking,
    undecodable_response,
};
use super::deadline::answer_by;
use super::observe::{self, UNKNOWN_PIPELINE};
use super::proto::{self, inspection_server::Inspection};
use super::state::ServerState;
use super::status::{oversized_message, to_status, undecodable_status};
use super::wire::WireRequest;
use crate::config::ServerConfig;
use crate::pipeline::{InspectError, Pipelines, ShedLimit};
use crate::telemetry::Metrics;

pub struct InspectionService {
    state: Arc<ServerState>,
    stream_window: usize,
    max_message_bytes: usize,
}

impl InspectionService {
    pub fn new(state: Arc<ServerState>, config: &ServerConfig) -> Self {
        Self { state, stream_window: config.stream_window, max_message_bytes: config.max_message_bytes }
    }

    /// The pipelines, unless the server is still loading them or is shutting down.
    fn pipelines(&self) -> Result<Arc<Pipelines>, Status> {
        if self.state.is_shutting_down() {
            return Err(to_status(&InspectError::ShuttingDown));
        }
        self.state.pipelines().cloned().map_err(|e| to_status(&e))
    }
}

/// The metrics label of a requested pipeline: its served name, or [`UNKNOWN_PIPELINE`].
fn pipeline_label(pipelines: &Pipelines, requested: &str) -> String {
    match pipelines.get(requested) {
        Ok(_) if requested.is_empty() => pipelines.default_name().to_owned(),
        Ok(_) => requested.to_owned(),
        Err(_) => UNKNOWN_PIPELINE.to_owned(),
    }
}

/// One frame of a stream, answered whatever happens to it. Called in request order: the frame's
/// place in its camera's order is taken now, before the returned future runs.
fn answer(
    pipelines: Arc<Pipelines>,
    metrics: Arc<Metrics>,
    request: WireRequest,
    received: Instant,
) -> impl std::future::Future<Output = proto::InspectResponse> + Send + 'static {
    let request = match request {
        WireRequest::Decoded(request) => request,
        WireRequest::Undecodable(error) => {
            tracing::debug!(message = "Message undecodable.", %error);
            observe::message_undecodable(&metrics);
            return Either::Left(std::future::ready(undecodable_response(&error, received.elapsed())));
        }
    };
    let (camera_id, sequence, pipeline) = (request.camera_id.clone(), request.sequence, request.pipeline.clone());
    let inspected = match frame_request(request, received, None) {
        Ok(frame) => pipelines.inspect(frame),
        Err(e) => Box::pin(std::future::ready(Err(e))),
    };
    Either::Right(async move {
        match inspected.await {
            Ok(result) => {
                observe::frame_served(&metrics, &result);
                inspect_response(result)
            }
            Err(error) => {
                tracing::debug!(message = "Frame failed.", %error, camera_id, sequence);
                observe::frame_failed(&metrics, &pipeline_label(&pipelines, &pipeline), &error);
                let pipeline = if pipeline.is_empty() { pipelines.default_name().to_owned() } else { pipeline };
                error_response(camera_id, sequence, pipeline, &error, received.elapsed())
            }
        }
    })
}

type ResponseStream = Pin<Box<dyn futures::Stream<Item = Result<proto::InspectResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Inspection for InspectionService {
    async fn inspect(&self, request: Request<WireRequest>) -> Result<Response<proto::InspectResponse>, Status> {
        let received = Instant::now();
        let pipelines = self.pipelines()?;
        let metrics = &self.state.metrics;
        let deadline = answer_by(&request);
        let request = match request.into_inner() {
            WireRequest::Decoded(request) => request,
            WireRequest::Undecodable(error) => {
                tracing::debug!(message = "Message undecodable.", %error);
                observe::message_undecodable(metrics);
                return Err(undecodable_status(&error));
            }
        };
        let label = pipeline_label(&pipelines, &request.pipeline);
        let frame = frame_request(request, received, deadline).map_err(|e| {
            observe::frame_failed(metrics, &label, &e);
            to_status(&e)
        })?;
        let (camera_id, sequence) = (frame.camera_id.clone(), frame.sequence);
        let inspected = pipelines.inspect(frame);
        // Answered by the client's deadline whatever stage the frame is in; its work, dropped,
        // still holds its place and memory until it ends.
        let outcome = match deadline {
            Some(at) => tokio::time::timeout_at(at, inspected).await.unwrap_or_else(|_| {
                Err(InspectError::Shed { limit: ShedLimit::ClientDeadline, waited: received.elapsed() })
            }),
            None => inspected.await,
        };
        match outcome {
            Ok(result) => {
                observe::frame_served(metrics, &result);
                Ok(Response::new(inspect_response(result)))
            }
            Err(error) => {
                tracing::debug!(message = "Frame failed.", %error, camera_id, sequence);
                observe::frame_failed(metrics, &label, &error);
                Err(to_status(&error))
            }
        }
    }

    type InspectStreamStream = ResponseStream;

    async fn inspect_stream(
        &self,
        request: Request<Streaming<WireRequest>>,
    ) -> Result<Response<Self::InspectStreamStream>, Status> {
        let pipelines = self.pipelines()?;
        let mut inbound = request.into_inner();
        let window = self.stream_window;
        let max_message_bytes = self.max_message_bytes;
        let metrics = self.state.metrics.clone();
        let shutdown = super::shutdown_begun(&self.state);
        let (tx, rx) = mpsc::channel::<Result<proto::InspectResponse, Status>>(window);
        tokio::spawn(async move {
            // Up to `window` frames in flight; responses leave in request order.
            let mut in_flight = FuturesOrdered::new();
            let mut inbound_open = true;
            let mut ending: Option<Status> = None;
            let mut last_read: Option<u64> = None;
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    // Shutdown: read no more frames, answer those held, end with UNAVAILABLE.
                    () = &mut shutdown, if inbound_open => {
                        inbound_open = false;
                        let read = last_read.map_or_else(|| "no frame".to_owned(), |s| format!("up to sequence {s}"));
                        ending = Some(Status::unavailable(format!(
                            "the server is shutting down; frames {read} were read and answered, later ones were not read"
                        )));
                    }
                    message = inbound.message(), if inbound_open && in_flight.len() < window => match message {
                        Ok(Some(request)) => {
                            if let WireRequest::Decoded(decoded) = &request {
                                last_read = Some(decoded.sequence);
                            }
                            in_flight.push_back(answer(pipelines.clone(), metrics.clone(), request, Instant::now()));
                        }
                        Ok(None) => inbound_open = false,
                        Err(status) => {
                            inbound_open = false;
                            ending = Some(stream_error(status, max_message_bytes));
                        }
                    },
                    Some(response) = in_flight.next(), if !in_flight.is_empty() => {
                        if tx.send(Ok(response)).await.is_err() {
                            return; // client went away
                        }
                    }
                    else => break,
                }
            }
            if let Some(status) = ending {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_pipelines(
        &self,
        _request: Request<proto::ListPipelinesRequest>,
    ) -> Result<Response<proto::ListPipelinesResponse>, Status> {
        let pipelines = self.pipelines()?;
        Ok(Response::new(proto::ListPipelinesResponse {
            pipelines: pipelines.describe().into_iter().map(pipeline_info).collect(),
            default_pipeline: pipelines.default_name().to_owned(),
        }))
    }

    async fn get_tracking_stats(
        &self,
        _request: Request<proto::TrackingStatsRequest>,
    ) -> Result<Response<proto::TrackingStatsResponse>, Status> {
        Ok(Response::new(proto::TrackingStatsResponse {
            pipelines: self.pipelines()?.tracking_stats().into_iter().map(pipeline_tracking).collect(),
        }))
    }

    async fn get_line_counts(
        &self,
        request: Request<proto::LineCountsRequest>,
    ) -> Result<Response<proto::LineCountsResponse>, Status> {
        let request = request.into_inner();
        let camera = Some(request.camera_id.as_str()).filter(|c| !c.is_empty());
        let counts = self.pipelines()?.line_counts(&request.pipeline, camera).map_err(|e| to_status(&e))?;
        Ok(Response::new(line_counts(counts)))
    }
}

/// An inbound stream error ends the stream; an oversized frame is reported as RESOURCE_EXHAUSTED.
fn stream_error(status: Status, limit: usize) -> Status {
    match oversized_message(status.message(), limit) {
        Some(message) if status.code() == tonic::Code::OutOfRange => Status::resource_exhausted(message),
        _ => status,
    }
}
