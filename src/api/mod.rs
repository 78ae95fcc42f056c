//! gRPC front: the `linesight.v1.Inspection` service, health and reflection, proto ⇄ domain mapping.

mod convert;
mod deadline;
mod inspection;
mod status;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use deadline::parse_grpc_timeout;
pub use inspection::InspectionService;
pub use status::{oversized_message_layer, to_status};

use crate::config::ServerConfig;
use crate::pipeline::Pipelines;

/// Generated protobuf and gRPC code for `linesight.v1`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("linesight.v1");

    /// Encoded descriptor set of the API, served through reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/linesight_v1_descriptor.bin"));
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Accepted connections with Nagle's algorithm off: a response is a few small HTTP/2 frames, and
/// Nagle + delayed ACKs would hold them back by up to 40 ms.
fn accept_nodelay(listener: TcpListener) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(message = "Cannot disable Nagle's algorithm.", %error);
            }
        })
    })
}

/// Serves Inspection, Health and Reflection on `listener` until `shutdown` resolves, then stops the
/// pipelines (queued frames are still answered).
pub async fn serve(
    pipelines: Arc<Pipelines>,
    config: &ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let inspection = proto::inspection_server::InspectionServer::new(InspectionService::new(pipelines.clone(), config))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    health.set_serving::<proto::inspection_server::InspectionServer<InspectionService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // grpcio's reflection client (Python) still speaks v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    // HTTP/2's default 64 KiB windows make every frame larger than that wait a round trip for a
    // WINDOW_UPDATE: let a client send a few frames' worth before waiting.
    let stream_window = u32::try_from(config.max_message_bytes.clamp(1 << 20, 16 << 20)).unwrap_or(16 << 20);
    let result = tonic::transport::Server::builder()
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(stream_window.saturating_mul(4))
        .layer(oversized_message_layer(config.max_message_bytes))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(inspection)
        .serve_with_incoming_shutdown(accept_nodelay(listener), shutdown)
        .await;
    health.set_not_serving::<proto::inspection_server::InspectionServer<InspectionService>>().await;
    pipelines.shutdown().await;
    Ok(result?)
}
