//! `GET /metrics`: the Prometheus exposition on its own HTTP port, behind the same bearer tokens
//! as the gRPC services.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use super::auth::Tokens;
use super::state::ServerState;
use crate::telemetry::{CONTENT_TYPE, ServiceLabels};

#[derive(Clone)]
struct Exposition {
    state: Arc<ServerState>,
    tokens: Option<Tokens>,
}

async fn metrics(State(exposition): State<Exposition>, headers: HeaderMap) -> Response {
    if let Some(tokens) = &exposition.tokens
        && let Err(why) = tokens.check_header(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))
    {
        exposition.state.metrics.unauthenticated.get_or_create(&ServiceLabels { service: "metrics" }).inc();
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], why).into_response();
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], exposition.state.render_metrics()).into_response()
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    state: Arc<ServerState>,
    tokens: Option<Tokens>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app =
        axum::Router::new().route("/metrics", axum::routing::get(metrics)).with_state(Exposition { state, tokens });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
