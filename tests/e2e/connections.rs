//! Connections on a real server: sockets that never speak HTTP/2, or stop answering its pings,
//! are closed and cannot keep a real client out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{TestServer, http_get, test_config};
use linesight::api::proto::ListPipelinesRequest;
use linesight::config::{Config, MetricsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
const PING: u8 = 6;

fn with_metrics(mut config: Config) -> Config {
    config.server.metrics = Some(MetricsConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)) });
    config
}

/// Whether the server closed `stream` within `within` (EOF or reset); whatever it sent is skipped.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

/// A metric's value in the server's exposition text.
async fn metric(server: &TestServer, name: &str) -> f64 {
    let (status, text) = http_get(server.metrics_addr.expect("metrics on"), "/metrics", None).await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().expect("metric value"))
}

async fn list_pipelines(server: &TestServer) -> usize {
    let mut client = server.client().await;
    client.list_pipelines(ListPipelinesRequest {}).await.expect("ListPipelines").into_inner().pipelines.len()
}

/// More silent sockets than `max_connections` neither keep a real client out nor stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_past_max_connections_do_not_keep_a_client_out() {
    let _machine = crate::common::machine_shared();
    let mut config = test_config();
    config.server.max_connections = 4;
    config.server.preface_timeout = std::time::Duration::from_millis(5_000);
    let server = TestServer::start(config).await;
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // Served before any silent socket could have timed out: it did not wait behind them.
    let served = tokio::time::timeout(Duration::from_secs(4), list_pipelines(&server)).await;
    assert!(served.is_ok_and(|pipelines| pipelines >= 1), "the client was not served past 10 silent sockets");
    for (i, stream) in silent.iter_mut().enumerate() {
        assert!(closed_within(stream, Duration::from_secs(20)).await, "silent socket {i} is still open");
    }
    server.stop().await;
}

/// A connection that sent its preface and SETTINGS but never answers a PING is closed; one that
/// answers them (tonic's client) stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_answers_pings_is_closed() {
    let _machine = crate::common::machine_shared();
    let mut config = with_metrics(test_config());
    config.server.keepalive_interval = std::time::Duration::from_millis(300);
    config.server.keepalive_timeout = std::time::Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let mut answering = server.client().await;
    answering.list_pipelines(ListPipelinesRequest {}).await.expect("ListPipelines");

    let mut mute = TcpStream::connect(server.addr).await.expect("connect");
    mute.write_all(&[PREFACE, &EMPTY_SETTINGS[..]].concat()).await.expect("preface");
    let started = Instant::now();
    let mut received = Vec::new();
    let read_to_end = async {
        let mut buf = [0u8; 4096];
        loop {
            match mute.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(15), read_to_end).await;
    assert!(closed.is_ok(), "a connection that never answers PINGs stayed open");
    assert!(started.elapsed() >= Duration::from_millis(300), "closed before any PING was due");
    let mut frames = Vec::new();
    let mut rest = &received[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        frames.push((rest[3], rest[4]));
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(frames.iter().any(|&(kind, flags)| kind == PING && flags & 1 == 0), "no PING before the close: {frames:?}");

    // The answering client's connection outlived several ping intervals.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(metric(&server, "linesight_connections_open").await, 1.0);
    answering.list_pipelines(ListPipelinesRequest {}).await.expect("ListPipelines after idling");
    server.stop().await;
}

/// Bytes that are not the HTTP/2 preface close the connection at once, long before the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_http2_close_the_connection() {
    let _machine = crate::common::machine_shared();
    let mut config = with_metrics(test_config());
    config.server.preface_timeout = std::time::Duration::from_millis(60_000);
    let server = TestServer::start(config).await;
    let mut http1 = TcpStream::connect(server.addr).await.expect("connect");
    http1.write_all(b"GET /metrics HTTP/1.1\r\nHost: linesight\r\n\r\n").await.expect("write");
    assert!(closed_within(&mut http1, Duration::from_secs(10)).await, "an HTTP/1 client stayed connected");
    assert_eq!(metric(&server, r#"linesight_connections_closed_total{reason="not_http2"}"#).await, 1.0);
    assert!(list_pipelines(&server).await >= 1);
    server.stop().await;
}
