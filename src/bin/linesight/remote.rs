//! How the binary's clients (`bench --server`, `camera`) reach a server: endpoint, TLS and token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use linesight::api::proto::inspection_client::InspectionClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The command-line options for a remote server with TLS or tokens.
#[derive(clap::Args, Clone, Default)]
pub struct RemoteArgs {
    /// Bearer token sent on every call (for a server with [server.auth]).
    #[arg(long, env = "LINESIGHT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With an https:// server: PEM CA certificate the server's certificate must chain to.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// With mutual TLS: this client's PEM certificate and key.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// With an https:// server: the name its certificate must carry (default: the URL's host).
    #[arg(long)]
    pub tls_domain: Option<String>,
}

impl RemoteArgs {
    /// Reads the certificates and checks the token.
    pub fn access(&self) -> anyhow::Result<Access> {
        let read = |path: &Path| std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
        let token = match &self.token {
            Some(token) => Some(format!("Bearer {token}").parse().context("--token must be printable ASCII")?),
            None => None,
        };
        let tls = if self.ca_cert.is_some() || self.client_cert.is_some() || self.tls_domain.is_some() {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.ca_cert {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(domain) = &self.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            Some(tls)
        } else {
            None
        };
        Ok(Access { tls, token: Bearer(token) })
    }
}

/// How a client reaches a server that wants TLS (`https://` endpoints) or a bearer token.
#[derive(Clone, Default)]
pub struct Access {
    pub tls: Option<ClientTlsConfig>,
    pub token: Bearer,
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone, Default)]
pub struct Bearer(pub Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// An Inspection client over one connection, carrying the token.
pub type Client = InspectionClient<InterceptedService<Channel, Bearer>>;

#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {endpoint}: {message}")]
pub struct ConnectError {
    pub endpoint: String,
    pub message: String,
}

fn endpoint_config(endpoint: &str, access: &Access) -> Result<Endpoint, ConnectError> {
    let connect_error = |message: String| ConnectError { endpoint: endpoint.to_owned(), message };
    let mut config = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| connect_error(e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        // A path that goes silent (a switch that drops traffic and keeps the connection) is noticed
        // by HTTP/2 pings even while nothing is in flight.
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20);
    if let Some(tls) = &access.tls {
        config = config.tls_config(tls.clone()).map_err(|e| connect_error(e.to_string()))?;
    }
    Ok(config)
}

/// One connection to `endpoint`.
pub async fn connect_channel(endpoint: &str, access: &Access) -> Result<Channel, ConnectError> {
    endpoint_config(endpoint, access)?
        .connect()
        .await
        .map_err(|e| ConnectError { endpoint: endpoint.to_owned(), message: format!("{e:?}") })
}

/// An Inspection client over a connection of its own.
pub async fn connect(endpoint: &str, access: &Access) -> Result<Client, ConnectError> {
    let channel = connect_channel(endpoint, access).await?;
    Ok(InspectionClient::with_interceptor(channel, access.token.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}
