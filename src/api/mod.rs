//! gRPC front: the `linesight.v1.Inspection` service, health and reflection, proto ⇄ domain mapping.

mod auth;
mod connections;
mod convert;
mod deadline;
mod inspection;
mod metrics_http;
mod observe;
mod state;
mod status;
mod tls;
mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic_health::ServingStatus;

pub use auth::{AuthError, Tokens};
pub use convert::frame_request;
pub use deadline::parse_grpc_timeout;
pub use inspection::InspectionService;
pub use state::ServerState;
pub use status::is_shed_code;
pub use status::{oversized_message_layer, to_status, undecodable_status};
pub use tls::TlsError;
pub use wire::{InspectCodec, UndecodableMessage, WireDecoder, WireRequest, decode_inspect_request};

use crate::config::{Config, ServerConfig};
use crate::pipeline::{Pipelines, StartError};
use crate::telemetry::Metrics;

/// Generated protobuf and gRPC code for `linesight.v1`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("linesight.v1");
    // The server side of `Inspection`, declared in build.rs with the API's request codec.
    include!(concat!(env!("OUT_DIR"), "/linesight.v1.Inspection.rs"));

    /// Encoded descriptor set of the API, served through reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/linesight_v1_descriptor.bin"));
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("loading models: {0}")]
    Start(#[from] StartError),
    #[error("metrics endpoint: {0}")]
    Metrics(std::io::Error),
}

/// The models a server serves.
pub enum Models {
    /// Already loaded.
    Loaded(Arc<Pipelines>),
    /// Loaded once the server listens; until then health says NOT_SERVING and frames get
    /// UNAVAILABLE.
    Load(Box<Config>),
}

/// Where the server listens.
pub struct Listeners {
    pub grpc: TcpListener,
    /// `GET /metrics`, when metrics are on.
    pub metrics: Option<TcpListener>,
}

/// The gRPC service name health reports under, besides the server as a whole ("").
const INSPECTION_SERVICE: &str = "linesight.v1.Inspection";

/// How often health re-reads the models' states.
const HEALTH_POLL: Duration = Duration::from_millis(250);

/// Serves already-loaded pipelines on `listener` (no metrics port) until `shutdown` resolves.
pub async fn serve(
    pipelines: Arc<Pipelines>,
    config: &ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with(Models::Loaded(pipelines), config, Listeners { grpc: listener, metrics: None }, shutdown).await
}

/// Reflection over the Inspection and Health services.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The HTTP/2 server with the configured windows, streams and keepalive.
fn transport(config: &ServerConfig) -> tonic::transport::Server {
    // HTTP/2's default 64 KiB windows make every frame larger than that wait a round trip for a
    // WINDOW_UPDATE: let a client send a few frames' worth before waiting.
    let stream_window = u32::try_from(config.max_message_bytes.clamp(1 << 20, 16 << 20)).unwrap_or(16 << 20);
    tonic::transport::Server::builder()
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(stream_window.saturating_mul(4))
        .max_concurrent_streams(config.max_concurrent_streams)
        // hyper pings a connection silent for the interval, idle or not, and closes it when the
        // ping goes unanswered: a vanished peer frees its place under max_connections.
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
}

/// Loads the configured models on the blocking pool and hands them to `state`; resolves only if
/// they fail to load (with nothing to load, never).
async fn load_models(state: Arc<ServerState>, to_load: Option<Box<Config>>) -> StartError {
    let Some(config) = to_load else { return std::future::pending().await };
    let loading = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let loaded = Pipelines::start(&config.service_settings());
        if loaded.is_ok() {
            tracing::info!(message = "Models loaded.", seconds = started.elapsed().as_secs_f64());
        }
        loaded
    });
    match loading.await {
        Ok(Ok(pipelines)) => {
            state.set_pipelines(Arc::new(pipelines));
            std::future::pending().await
        }
        Ok(Err(error)) => error,
        Err(join) => StartError::Internal(join.to_string()),
    }
}

/// Serves Inspection, Health and Reflection (and `/metrics` on its own port) until `shutdown`
/// resolves. Then: health turns NOT_SERVING, no new connection is accepted, every stream stops
/// reading, answers the frames it holds and ends with UNAVAILABLE; after `shutdown_grace_ms`
/// whatever is left is cut. Last, the pipelines stop (queued frames are still answered).
pub async fn serve_with(
    models: Models,
    config: &ServerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new());
    let (state, to_load) = match models {
        Models::Loaded(pipelines) => {
            let state = Arc::new(ServerState::new(Vec::new(), metrics.clone()));
            state.set_pipelines(pipelines);
            (state, None)
        }
        Models::Load(config) => (Arc::new(ServerState::new(configured_models(&config), metrics.clone())), Some(config)),
    };
    let tokens = config.auth.as_ref().map(Tokens::load).transpose()?;
    let tls = config.tls.as_ref().map(tls::server_tls).transpose()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    // Loaded models serve from the first call on; loading ones start NOT_SERVING.
    let serving_at_start = state.serving();
    let initial = if serving_at_start { ServingStatus::Serving } else { ServingStatus::NotServing };
    for service in ["", INSPECTION_SERVICE] {
        health.set_service_status(service, initial).await;
    }
    let inspection = proto::inspection_server::InspectionServer::new(InspectionService::new(state.clone(), config))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let reflection_v1 = reflection().build_v1()?;
    // grpcio's reflection client (Python) still speaks v1alpha.
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let mut builder = transport(config);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let auth = auth::GrpcAuth { tokens: tokens.clone(), metrics: metrics.clone() };
    let limits = connections::Limits {
        max_open: config.max_connections,
        // A waiting socket costs a task and its kernel buffers, no more than one in use.
        max_waiting: config.max_connections,
        preface_timeout: config.preface_timeout,
        tls: config.tls.is_some(),
    };
    let incoming = connections::accept_capped(listeners.grpc, limits, metrics.clone());
    let grpc = builder
        .layer(tonic::service::InterceptorLayer::new(auth))
        .layer(oversized_message_layer(config.max_message_bytes))
        .layer(deadline::AnswerByDeadlineLayer { metrics: metrics.clone() })
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(inspection)
        .serve_with_incoming_shutdown(incoming, shutdown_begun(&state));
    let metrics_server = listeners.metrics.map(|listener| {
        tokio::spawn(metrics_http::serve_metrics(listener, state.clone(), tokens, shutdown_begun(&state)))
    });
    let health_task = tokio::spawn(report_health(state.clone(), health, serving_at_start));
    let loaded = load_models(state.clone(), to_load);

    tokio::pin!(grpc);
    let grace = config.shutdown_grace;
    let outcome = tokio::select! {
        served = &mut grpc => served.map_err(ServeError::from),
        () = shutdown => {
            tracing::info!(message = "Shutting down.", grace_ms = config.shutdown_grace.as_millis());
            state.begin_shutdown();
            finish(&mut grpc, grace).await
        }
        error = loaded => {
            tracing::error!(message = "Models failed to load.", %error);
            state.begin_shutdown();
            let _ = finish(&mut grpc, grace).await;
            Err(ServeError::Start(error))
        }
    };
    state.begin_shutdown();
    let _ = health_task.await;
    if let Some(server) = metrics_server {
        match server.await {
            Ok(Err(error)) => tracing::warn!(message = "Metrics endpoint failed.", %error),
            Err(error) => tracing::warn!(message = "Metrics endpoint failed.", %error),
            Ok(Ok(())) => {}
        }
    }
    if let Some(pipelines) = state.loaded() {
        pipelines.shutdown().await;
    }
    outcome
}

/// Resolves once `state`'s shutdown has begun.
pub(crate) fn shutdown_begun(state: &ServerState) -> impl Future<Output = ()> + Send + 'static {
    let mut signal = state.shutdown_signal();
    async move {
        let _ = signal.wait_for(|down| *down).await;
    }
}

/// Lets the server drain for up to `grace`, then cuts what is left.
async fn finish<F>(grpc: &mut std::pin::Pin<&mut F>, grace: Duration) -> Result<(), ServeError>
where
    F: Future<Output = Result<(), tonic::transport::Error>>,
{
    match tokio::time::timeout(grace, grpc.as_mut()).await {
        Ok(served) => served.map_err(ServeError::from),
        Err(_) => {
            tracing::warn!(
                message = "Shutdown grace period over; closing the remaining connections.",
                grace_ms = grace.as_millis() as u64
            );
            Ok(())
        }
    }
}

/// Keeps health in step with the server: SERVING once the models are loaded and while every one
/// works, NOT_SERVING while loading, when a model fails, and from shutdown on.
async fn report_health(state: Arc<ServerState>, health: tonic_health::server::HealthReporter, reported: bool) {
    let mut shutdown = state.shutdown_signal();
    let mut reported = reported;
    loop {
        let serving = state.serving();
        if reported != serving {
            let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
            for service in ["", INSPECTION_SERVICE] {
                health.set_service_status(service, status).await;
            }
            tracing::info!(message = "Health changed.", serving);
            reported = serving;
        }
        if state.is_shutting_down() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_POLL) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Every model folder the config's pipelines load.
fn configured_models(config: &Config) -> Vec<String> {
    let mut models: Vec<String> = config.pipelines.values().map(|p| p.model().to_owned()).collect();
    models.sort();
    models.dedup();
    models
}
