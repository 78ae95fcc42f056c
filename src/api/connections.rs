//! Accepted connections: Nagle off, and at most `max_connections` open at once. Past the cap the
//! accept loop waits for a connection to close, so further clients wait in the listen backlog
//! instead of each taking buffers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted TCP connection holding its place under the cap until it closes.
pub struct Connection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
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

/// Connections from `listener`, at most `max_open` at once.
pub fn accept_capped(
    listener: TcpListener,
    max_open: usize,
    open: Gauge,
) -> impl futures::Stream<Item = std::io::Result<Connection>> {
    let permits = Arc::new(Semaphore::new(max_open));
    futures::stream::unfold((listener, permits, open), |(listener, permits, open)| async move {
        // The semaphore is never closed, so acquiring only waits.
        let permit = permits.clone().acquire_owned().await.ok()?;
        let accepted = listener.accept().await.map(|(stream, _)| {
            // A response is a few small HTTP/2 frames: Nagle + delayed ACKs would hold them back
            // by up to 40 ms.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(message = "Cannot disable Nagle's algorithm.", %error);
            }
            open.inc();
            Connection { stream, _permit: permit, open: open.clone() }
        });
        Some((accepted, (listener, permits, open)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn past_the_cap_the_next_client_waits_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Gauge::default();
        let mut incoming = Box::pin(accept_capped(listener, 2, open.clone()));
        let _c1 = TcpStream::connect(addr).await.expect("connect");
        let _c2 = TcpStream::connect(addr).await.expect("connect");
        let _c3 = TcpStream::connect(addr).await.expect("connect (backlog)");
        let first = incoming.next().await.expect("first").expect("ok");
        let _second = incoming.next().await.expect("second").expect("ok");
        assert_eq!(open.get(), 2);
        let third = tokio::time::timeout(std::time::Duration::from_millis(200), incoming.next()).await;
        assert!(third.is_err(), "a third connection was accepted past the cap");
        drop(first);
        let third = tokio::time::timeout(std::time::Duration::from_secs(5), incoming.next()).await;
        assert!(matches!(third, Ok(Some(Ok(_)))), "the third connection is accepted once one closes");
        assert_eq!(open.get(), 2);
    }
}
