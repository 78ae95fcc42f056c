//! TLS and mutual TLS for the gRPC port (rustls through tonic).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.{field} {path}: {source}")]
    Read { field: &'static str, path: PathBuf, source: std::io::Error },
    #[error("server.tls.{field} {path}: no PEM block found")]
    NotPem { field: &'static str, path: PathBuf },
}

fn read_pem(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { field, path: path.to_owned(), source })?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError::NotPem { field, path: path.to_owned() });
    }
    Ok(pem)
}

/// The server's TLS settings; with a client CA every client must present a certificate it signed.
pub fn server_tls(config: &TlsConfig) -> Result<ServerTlsConfig, TlsError> {
    let cert = read_pem("cert_path", &config.cert_path)?;
    let key = read_pem("key_path", &config.key_path)?;
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key)).timeout(config.handshake_timeout);
    if let Some(ca) = &config.client_ca_path {
        tls = tls.client_ca_root(Certificate::from_pem(read_pem("client_ca_path", ca)?)).client_auth_optional(false);
    }
    Ok(tls)
}
