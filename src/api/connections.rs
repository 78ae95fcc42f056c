//! Accepted connections. A socket is accepted at once and, in its own task, must show its first
//! bytes within `server.preface_timeout_ms`: the 24-byte HTTP/2 client preface on plaintext, the
//! first byte of a TLS handshake record under TLS (the rest is the TLS handshake timeout's job).
//! Only then does it take one of `max_connections` places and reach tonic, so sockets that never
//! speak do not count against the cap.
//!
//! Sockets still waiting for their first bytes (or, past the cap, for a place) are bounded too: at
//! most `max_connections` of them. One more closes the oldest waiting one rather than leaving new
//! sockets in the listen backlog: silent sockets would then hold the backlog for a whole timeout
//! each and a real client would queue behind all of them, while a client that sends its preface
//! right after connecting is through long before it is the oldest, so starving it would take a
//! flood of `max_connections` new sockets per round trip.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::StreamExt;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::telemetry::{CloseLabels, Metrics};

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first byte of a TLS handshake record (content type 22): a ClientHello starts with it.
const TLS_HANDSHAKE: u8 = 0x16;

/// After an accept error that is not about one connection (out of file descriptors), wait this
/// long before accepting again instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections in use at once.
    pub max_open: usize,
    /// Sockets waiting for their first bytes or for a place at once; one more closes the oldest.
    pub max_waiting: usize,
    pub preface_timeout: Duration,
    /// The port speaks TLS: wait for a handshake's first byte, not for the HTTP/2 preface.
    pub tls: bool,
}

/// Why a connection was closed before it was in use.
#[derive(Debug, thiserror::Error)]
pub enum PrefaceError {
    #[error("no HTTP/2 client preface within {} ms (server.preface_timeout_ms)", .0.as_millis())]
    Timeout(Duration),
    #[error("the first bytes are not the HTTP/2 client preface")]
    NotHttp2,
    #[error("the first byte is not a TLS handshake record")]
    NotTls,
    #[error("closed by the client before its preface")]
    Closed,
    #[error("reading the preface: {0}")]
    Io(#[from] std::io::Error),
    #[error("closed to make room for a newer connection (server.max_connections sockets were waiting)")]
    Evicted,
}

impl PrefaceError {
    /// The `connections_closed` reason, for closes the server decided.
    fn reason(&self) -> Option<&'static str> {
        match self {
            PrefaceError::Timeout(_) => Some("preface_timeout"),
            PrefaceError::NotHttp2 => Some("not_http2"),
            PrefaceError::NotTls => Some("not_tls"),
            PrefaceError::Evicted => Some("pending_full"),
            PrefaceError::Closed | PrefaceError::Io(_) => None,
        }
    }
}

/// Reads the HTTP/2 client preface; fails at the first byte that differs from it.
pub async fn read_preface<R: AsyncRead + Unpin>(io: &mut R) -> Result<(), PrefaceError> {
    let mut got = [0u8; PREFACE.len()];
    let mut n = 0;
    while n < PREFACE.len() {
        let read = io.read(&mut got[n..]).await?;
        if read == 0 {
            return Err(PrefaceError::Closed);
        }
        if got[n..n + read] != PREFACE[n..n + read] {
            return Err(PrefaceError::NotHttp2);
        }
        n += read;
    }
    Ok(())
}

/// Waits for the first byte of a TLS handshake without consuming it (the TLS acceptor reads it).
async fn peek_tls(stream: &TcpStream) -> Result<(), PrefaceError> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await? {
        0 => Err(PrefaceError::Closed),
        _ if first[0] != TLS_HANDSHAKE => Err(PrefaceError::NotTls),
        _ => Ok(()),
    }
}

/// A place under the cap, held while the connection is open.
struct InUse {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// A connection in use: its preface has arrived and it holds a place under the cap.
pub struct Connection {
    stream: TcpStream,
    /// Bytes already read off the socket (the preface), given to the reader before the socket's.
    replay: &'static [u8],
    _in_use: InUse,
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay = &self.replay[n..];
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Sockets not yet in use, oldest first (ids grow with accept order); each entry closes its
/// socket when sent to.
#[derive(Default)]
struct Pending(Mutex<BTreeMap<u64, oneshot::Sender<()>>>);

impl Pending {
    /// Adds `id`; with `max` already waiting, the oldest one's close signal comes back.
    fn add(&self, id: u64, close: oneshot::Sender<()>, max: usize) -> Option<oneshot::Sender<()>> {
        let mut waiting = self.0.lock();
        let oldest = if waiting.len() >= max { waiting.pop_first().map(|(_, close)| close) } else { None };
        waiting.insert(id, close);
        oldest
    }

    fn remove(&self, id: u64) {
        self.0.lock().remove(&id);
    }
}

/// What every connection's task shares.
struct Shared {
    limits: Limits,
    in_use: Arc<Semaphore>,
    pending: Pending,
    metrics: Arc<Metrics>,
    ready: mpsc::Sender<Connection>,
}

/// Connections from `listener` that have shown their first bytes, at most `limits.max_open` in
/// use at once. Accepting stops (and the listener closes) when the stream is dropped.
pub fn accept_capped(
    listener: TcpListener,
    limits: Limits,
    metrics: Arc<Metrics>,
) -> impl futures::Stream<Item = std::io::Result<Connection>> {
    let (ready, incoming) = mpsc::channel(16);
    let shared = Arc::new(Shared {
        limits,
        in_use: Arc::new(Semaphore::new(limits.max_open)),
        pending: Pending::default(),
        metrics,
        ready,
    });
    tokio::spawn(accept_loop(listener, shared));
    tokio_stream::wrappers::ReceiverStream::new(incoming).map(Ok)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            () = shared.ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // A failure of one handshake says nothing about the next; running out of file
                // descriptors would otherwise spin this loop.
                if !matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::Interrupted
                ) {
                    tracing::warn!(message = "Accept failed.", %error);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        // A response is a few small HTTP/2 frames: Nagle + delayed ACKs would hold them back by up
        // to 40 ms.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(message = "Cannot disable Nagle's algorithm.", %error);
        }
        let id = next_id;
        next_id += 1;
        let (close, closed) = oneshot::channel();
        if let Some(oldest) = shared.pending.add(id, close, shared.limits.max_waiting) {
            let _ = oldest.send(());
        }
        tokio::spawn(admit(stream, peer, id, closed, shared.clone()));
    }
}

/// One socket: waits for its first bytes and a place under the cap, then hands it to tonic.
async fn admit(mut stream: TcpStream, peer: SocketAddr, id: u64, evicted: oneshot::Receiver<()>, shared: Arc<Shared>) {
    let limits = shared.limits;
    let ready = async {
        let first_bytes = async {
            if limits.tls {
                peek_tls(&stream).await.map(|()| &[][..])
            } else {
                read_preface(&mut stream).await.map(|()| &PREFACE[..])
            }
        };
        let replay = tokio::time::timeout(limits.preface_timeout, first_bytes)
            .await
            .map_err(|_| PrefaceError::Timeout(limits.preface_timeout))??;
        // The semaphore is never closed, so acquiring only waits.
        let permit = shared.in_use.clone().acquire_owned().await.map_err(|_| PrefaceError::Closed)?;
        Ok::<_, PrefaceError>((replay, permit))
    };
    // Progress wins a tie with eviction: a socket whose preface is in is no longer idle.
    let outcome = tokio::select! {
        biased;
        outcome = ready => outcome,
        Ok(()) = evicted => Err(PrefaceError::Evicted),
        () = shared.ready.closed() => return,
    };
    shared.pending.remove(id);
    match outcome {
        Ok((replay, permit)) => {
            shared.metrics.connections_open.inc();
            let in_use = InUse { _permit: permit, open: shared.metrics.connections_open.clone() };
            // Fails only once the server has stopped accepting; the connection just closes.
            let _ = shared.ready.send(Connection { stream, replay, _in_use: in_use }).await;
        }
        Err(error) => {
            tracing::debug!(message = "Connection closed before use.", %error, %peer);
            if let Some(reason) = error.reason() {
                shared.metrics.connections_closed.get_or_create(&CloseLabels { reason }).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;

    const LONG: Duration = Duration::from_secs(60);

    fn limits(max_open: usize, max_waiting: usize, preface_timeout: Duration) -> Limits {
        Limits { max_open, max_waiting, preface_timeout, tls: false }
    }

    async fn listen(
        limits: Limits,
    ) -> (SocketAddr, Arc<Metrics>, impl futures::Stream<Item = std::io::Result<Connection>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::new());
        (addr, metrics.clone(), accept_capped(listener, limits, metrics))
    }

    async fn speaking(addr: SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(PREFACE).await.expect("preface");
        stream
    }

    /// Whether the server closed `stream` within `within` (EOF or reset).
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(within, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }

    fn closed(metrics: &Metrics, reason: &'static str) -> u64 {
        metrics.connections_closed.get_or_create(&CloseLabels { reason }).get()
    }

    #[tokio::test]
    async fn the_preface_is_read_whole_or_refused_at_the_first_wrong_byte() {
        assert!(read_preface(&mut &PREFACE[..]).await.is_ok());
        let with_more = [&PREFACE[..], b"\x00\x00\x00\x04"].concat();
        assert!(read_preface(&mut &with_more[..]).await.is_ok());
        assert!(matches!(read_preface(&mut &b"GET / HTTP/1.1\r\n\r\n"[..]).await, Err(PrefaceError::NotHttp2)));
        assert!(matches!(read_preface(&mut &PREFACE[..10]).await, Err(PrefaceError::Closed)));
        // A byte-at-a-time preface is fine; a wrong byte is refused without waiting for the rest.
        let (mut client, mut server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move { read_preface(&mut server).await });
        for byte in PREFACE {
            client.write_all(&[*byte]).await.expect("write");
        }
        assert!(reader.await.expect("reader").is_ok());
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/1").await.expect("write");
        let refused = tokio::time::timeout(Duration::from_secs(5), read_preface(&mut server)).await;
        assert!(matches!(refused, Ok(Err(PrefaceError::NotHttp2))), "{refused:?}");
    }

    #[tokio::test]
    async fn the_preface_is_replayed_to_the_reader() {
        let (addr, _metrics, incoming) = listen(limits(2, 2, LONG)).await;
        let mut incoming = Box::pin(incoming);
        let mut client = speaking(addr).await;
        client.write_all(b"after").await.expect("write");
        let mut connection = incoming.next().await.expect("connection").expect("ok");
        let mut got = vec![0u8; PREFACE.len() + 5];
        connection.read_exact(&mut got).await.expect("read");
        assert_eq!(&got[..PREFACE.len()], PREFACE);
        assert_eq!(&got[PREFACE.len()..], b"after");
    }

    #[tokio::test]
    async fn silent_sockets_take_no_place_under_the_cap() {
        let (addr, metrics, incoming) = listen(limits(1, 4, LONG)).await;
        let mut incoming = Box::pin(incoming);
        let _silent = TcpStream::connect(addr).await.expect("connect");
        let _client = speaking(addr).await;
        let connection = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(matches!(connection, Ok(Some(Ok(_)))), "the speaking client is admitted past the silent one");
        assert_eq!(metrics.connections_open.get(), 1);
    }

    #[tokio::test]
    async fn silent_sockets_close_after_the_timeout() {
        let (addr, metrics, _incoming) = listen(limits(1, 4, Duration::from_millis(300))).await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_within(&mut silent, Duration::from_secs(10)).await, "the silent socket stays open");
        assert_eq!(closed(&metrics, "preface_timeout"), 1);
    }

    #[tokio::test]
    async fn bytes_that_are_not_http2_close_the_connection_at_once() {
        let (addr, metrics, _incoming) = listen(limits(2, 2, LONG)).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        assert!(closed_within(&mut client, Duration::from_secs(10)).await, "an HTTP/1 client stays connected");
        assert_eq!(closed(&metrics, "not_http2"), 1);
    }

    #[tokio::test]
    async fn past_the_waiting_cap_the_oldest_silent_socket_is_closed() {
        let (addr, metrics, _incoming) = listen(limits(4, 2, LONG)).await;
        let mut oldest = TcpStream::connect(addr).await.expect("connect");
        let mut second = TcpStream::connect(addr).await.expect("connect");
        let _third = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_within(&mut oldest, Duration::from_secs(10)).await, "the oldest waiting socket stays open");
        assert!(!closed_within(&mut second, Duration::from_millis(200)).await, "a younger one was closed");
        assert_eq!(closed(&metrics, "pending_full"), 1);
    }

    #[tokio::test]
    async fn past_the_cap_the_next_client_waits_until_one_closes() {
        let (addr, metrics, incoming) = listen(limits(2, 4, LONG)).await;
        let mut incoming = Box::pin(incoming);
        let _c1 = speaking(addr).await;
        let _c2 = speaking(addr).await;
        let _c3 = speaking(addr).await;
        let first = incoming.next().await.expect("first").expect("ok");
        let _second = incoming.next().await.expect("second").expect("ok");
        assert_eq!(metrics.connections_open.get(), 2);
        let third = tokio::time::timeout(Duration::from_millis(200), incoming.next()).await;
        assert!(third.is_err(), "a third connection was admitted past the cap");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(matches!(third, Ok(Some(Ok(_)))), "the third connection is admitted once one closes");
        assert_eq!(metrics.connections_open.get(), 2);
    }

    #[tokio::test]
    async fn under_tls_the_first_byte_is_waited_for_and_left_unread() {
        let (addr, metrics, incoming) = listen(Limits { tls: true, ..limits(2, 4, Duration::from_millis(300)) }).await;
        let mut incoming = Box::pin(incoming);
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut hello = TcpStream::connect(addr).await.expect("connect");
        hello.write_all(&[TLS_HANDSHAKE, 3, 1]).await.expect("write");
        let mut connection = incoming.next().await.expect("connection").expect("ok");
        let mut got = [0u8; 3];
        connection.read_exact(&mut got).await.expect("read");
        assert_eq!(got, [TLS_HANDSHAKE, 3, 1]);
        assert!(closed_within(&mut silent, Duration::from_secs(10)).await, "the silent socket stays open");
        let mut plaintext = speaking(addr).await;
        assert!(closed_within(&mut plaintext, Duration::from_secs(10)).await, "a plaintext client stays connected");
        assert_eq!((closed(&metrics, "preface_timeout"), closed(&metrics, "not_tls")), (1, 1));
    }
}
