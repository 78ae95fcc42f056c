//! TLS, mutual TLS and bearer tokens on a real server, with certificates made in the test.

use std::path::Path;

use crate::common::{TestServer, http_get, test_config};
use linesight::api::proto::ListPipelinesRequest;
use linesight::api::proto::inspection_client::InspectionClient;
use linesight::config::{AuthConfig, MetricsConfig, TlsConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

pub struct Pki {
    pub ca_pem: String,
    server: (String, String),
    pub client: (String, String),
    /// Signed by a CA the server does not trust.
    rogue_client: (String, String),
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

fn leaf(names: &[&str], issuer: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

pub fn pki() -> Pki {
    let trusted = ca("linesight test CA");
    let rogue = ca("rogue CA");
    Pki {
        ca_pem: trusted.pem(),
        server: leaf(&["localhost", "127.0.0.1"], &trusted),
        client: leaf(&["camera-gateway"], &trusted),
        rogue_client: leaf(&["camera-gateway"], &rogue),
    }
}

pub fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// The server side of `pki`; with `mutual`, clients need a certificate from its CA too
/// (written to `dir/ca.pem`).
pub fn tls_config(dir: &Path, pki: &Pki, mutual: bool) -> TlsConfig {
    TlsConfig {
        cert_path: write(dir, "server.pem", &pki.server.0),
        key_path: write(dir, "server.key", &pki.server.1),
        client_ca_path: mutual.then(|| write(dir, "ca.pem", &pki.ca_pem)),
        handshake_timeout: std::time::Duration::from_millis(5_000),
    }
}

async fn tls_channel(server: &TestServer, pki: &Pki, identity: Option<&(String, String)>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://{}", server.addr))
        .expect("uri")
        .tls_config(tls)
        .map_err(|e| e.to_string())?;
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// Completes a TLS handshake as a client with `identity` and reads the server's first word: the
/// alert it refused the client with, or bytes of the HTTP/2 settings it opens a served connection with.
async fn server_alert(server: &TestServer, pki: &Pki, identity: Option<&(String, String)>) -> String {
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};

    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).expect("CA pem")).expect("CA");
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("client pem")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key"),
            )
            .expect("client identity"),
    };
    let tcp = tokio::net::TcpStream::connect(server.addr).await.expect("TCP connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = match tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await {
        Ok(tls) => tls,
        Err(error) => return format!("handshake: {error:?}"),
    };
    let mut bytes = [0_u8; 64];
    match tokio::time::timeout(std::time::Duration::from_secs(60), tls.read(&mut bytes)).await {
        Err(_) => "nothing within 60 s".to_owned(),
        Ok(Ok(0)) => "closed with no alert".to_owned(),
        Ok(Ok(n)) => format!("served: read {n} bytes"),
        Ok(Err(error)) => format!("read: {error:?}"),
    }
}

async fn list(channel: Channel) -> Result<usize, tonic::Status> {
    let mut client = InspectionClient::new(channel);
    Ok(client.list_pipelines(ListPipelinesRequest {}).await?.into_inner().pipelines.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_ca_and_refuses_plaintext() {
    let _machine = crate::common::machine_shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let mut config = test_config();
    config.server.tls = Some(tls_config(dir.path(), &pki, false));
    let server = TestServer::start(config).await;

    let channel = tls_channel(&server, &pki, None).await.expect("TLS connect");
    assert!(list(channel).await.expect("ListPipelines over TLS") >= 1);

    let plaintext = Channel::from_shared(format!("http://{}", server.addr)).expect("uri").connect().await;
    let refusal = match plaintext {
        Err(error) => format!("connect: {error:?}"),
        Ok(channel) => match list(channel).await {
            Ok(n) => panic!("a plaintext client was served by a TLS server ({n} pipelines)"),
            Err(status) => format!("{status:?}"),
        },
    };
    eprintln!("plaintext client: {refusal}");
    // Refused for speaking plaintext, not for a server that went away: it still serves over TLS.
    let channel = tls_channel(&server, &pki, None).await.expect("TLS connect after the plaintext client");
    assert!(list(channel).await.expect("ListPipelines over TLS after the plaintext client") >= 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_only_clients_with_a_certificate_from_the_trusted_ca() {
    let _machine = crate::common::machine_shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let mut config = test_config();
    config.server.tls = Some(tls_config(dir.path(), &pki, true));
    let server = TestServer::start(config).await;

    let trusted = tls_channel(&server, &pki, Some(&pki.client)).await.expect("mTLS connect");
    assert!(list(trusted).await.expect("ListPipelines with a trusted client certificate") >= 1);

    // Each is refused, and the server's TLS alert names why. With TLS 1.3 the client's side of the
    // handshake ends before the server has checked its certificate, so a gRPC client may see either
    // the alert or only a closed connection, depending on whether its request went out first: the
    // alert is read from a bare handshake that sends nothing after it.
    let refused = [
        ("no client certificate", None, "CertificateRequired"),
        ("a rogue CA's certificate", Some(&pki.rogue_client), "UnknownCA"),
    ];
    for (what, identity, alert) in refused {
        match tls_channel(&server, &pki, identity).await {
            Err(error) => eprintln!("a client with {what}: connect: {error}"),
            Ok(channel) => match list(channel).await {
                Ok(n) => panic!("a client with {what} was served ({n} pipelines)"),
                Err(status) => eprintln!("a client with {what}: {status:?}"),
            },
        }
        let received = server_alert(&server, &pki, identity).await;
        assert!(received.contains(alert), "a client with {what} was refused, but not with {alert}: {received}");
        // Refused for its certificate, not for a server that went away: the trusted client still is served.
        let trusted = tls_channel(&server, &pki, Some(&pki.client)).await.expect("mTLS connect");
        let listed = list(trusted).await.unwrap_or_else(|s| panic!("a trusted client refused after {what}: {s:?}"));
        assert!(listed >= 1);
    }
    assert!(
        server_alert(&server, &pki, Some(&pki.client)).await.starts_with("served"),
        "the bare handshake reads no alert from a trusted client"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_every_service_and_the_metrics_endpoint() {
    let _machine = crate::common::machine_shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = write(dir.path(), "tokens", "# line 4 gateways\ngateway-token-1\ngateway-token-2\n");
    let mut config = test_config();
    config.server.auth = Some(AuthConfig { tokens_file: Some(tokens), tokens_env: None });
    config.server.metrics = Some(MetricsConfig { listen: "127.0.0.1:0".parse().expect("addr") });
    let server = TestServer::start(config).await;
    let channel =
        Channel::from_shared(format!("http://{}", server.addr)).expect("uri").connect().await.expect("connect");

    let with_token = |token: Option<&'static str>| {
        move |mut request: tonic::Request<()>| {
            if let Some(token) = token {
                request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
            }
            Ok(request)
        }
    };
    for token in [None, Some("gateway-token-3"), Some("gateway-token-1 ")] {
        let mut inspection = InspectionClient::with_interceptor(channel.clone(), with_token(token));
        let status = inspection.list_pipelines(ListPipelinesRequest {}).await.expect_err("no valid token");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{token:?}: {status:?}");
        let mut health = HealthClient::with_interceptor(channel.clone(), with_token(token));
        let status = health.check(HealthCheckRequest { service: String::new() }).await.expect_err("no valid token");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "health, {token:?}: {status:?}");
    }
    for token in ["gateway-token-1", "gateway-token-2"] {
        let mut inspection = InspectionClient::with_interceptor(channel.clone(), with_token(Some(token)));
        let listed = inspection.list_pipelines(ListPipelinesRequest {}).await.expect("valid token");
        assert!(!listed.into_inner().pipelines.is_empty());
        let mut health = HealthClient::with_interceptor(channel.clone(), with_token(Some(token)));
        health.check(HealthCheckRequest { service: String::new() }).await.expect("health with a valid token");
    }

    let metrics = server.metrics_addr.expect("metrics on");
    assert_eq!(http_get(metrics, "/metrics", None).await.0, 401);
    assert_eq!(http_get(metrics, "/metrics", Some("wrong")).await.0, 401);
    let (status, body) = http_get(metrics, "/metrics", Some("gateway-token-2")).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#"linesight_requests_unauthenticated_total{service="grpc"} 6"#), "{body}");
    assert!(body.contains(r#"linesight_requests_unauthenticated_total{service="metrics"} 2"#), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_certificates_stop_the_server_with_the_field_named() {
    let _machine = crate::common::machine_shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config();
    config.server.tls = Some(TlsConfig {
        cert_path: write(dir.path(), "server.pem", "not a certificate"),
        key_path: dir.path().join("missing.key"),
        client_ca_path: None,
        handshake_timeout: std::time::Duration::from_millis(5_000),
    });
    let server = TestServer::start(config).await;
    let error = server.stop_result().await.expect_err("bad certificate");
    assert!(error.to_string().contains("server.tls.cert_path"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_loads_a_server_with_mutual_tls_and_a_token() {
    let _machine = crate::common::machine_shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let mut config = test_config();
    config.server.tls = Some(tls_config(dir.path(), &pki, true));
    let tokens = write(dir.path(), "tokens", "bench-token\n");
    config.server.auth = Some(AuthConfig { tokens_file: Some(tokens), tokens_env: None });
    let server = TestServer::start(config).await;
    let out = dir.path().join("report.json");
    let bench = |token: &'static str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_linesight"));
        command
            .args(["bench", "--quiet", "--server", &format!("https://{}", server.addr)])
            .args(["--cameras", "1", "--fps", "5", "--count", "3", "--warmup-s", "0", "--budget-ms", "20000"])
            .arg("--ca-cert")
            .arg(dir.path().join("ca.pem"))
            .arg("--client-cert")
            .arg(write(dir.path(), "client.pem", &pki.client.0))
            .arg("--client-key")
            .arg(write(dir.path(), "client.key", &pki.client.1))
            .args(["--tls-domain", "localhost", "--out"])
            .arg(&out)
            .env("LINESIGHT_TOKEN", token)
            .env("RUST_LOG", "warn");
        command
    };
    let refused = bench("not-the-token").output().await.expect("run bench");
    assert!(!refused.status.success(), "a wrong token was let in");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("bearer token is not accepted"));
    let served = bench("bench-token").output().await.expect("run bench");
    assert!(served.status.success(), "{}", String::from_utf8_lossy(&served.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("JSON");
    assert_eq!(report["runs"][0]["frames"], 3);
    assert_eq!(report["runs"][0]["within_budget"], 3);
    server.stop().await;
}

/// Under TLS, sockets that never begin a handshake are closed after the preface timeout (long
/// before the handshake timeout) and take no place under max_connections meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_on_tls_are_closed_and_keep_no_client_out() {
    let _machine = crate::common::machine_shared();
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let mut config = test_config();
    config.server.tls = Some(TlsConfig {
        handshake_timeout: std::time::Duration::from_millis(60_000),
        ..tls_config(dir.path(), &pki, false)
    });
    config.server.max_connections = 2;
    config.server.preface_timeout = std::time::Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(server.addr).await.expect("connect"));
    }
    let channel = tls_channel(&server, &pki, None).await.expect("TLS connect past silent sockets");
    assert!(list(channel).await.expect("ListPipelines over TLS") >= 1);
    for (i, stream) in silent.iter_mut().enumerate() {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "silent socket {i}: {read:?}");
    }
    server.stop().await;
}
