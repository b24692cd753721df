//! A TCP listener that holds at most a fixed number of connections open: past the cap it
//! stops accepting (new connections wait in the kernel's backlog) until one closes, so a
//! flood of idle or slow connections cannot exhaust the process's memory or file
//! descriptors. Accepted sockets have Nagle off. [`bind`] names the port in its error;
//! [`server`] serves a router on such a listener with header, body and idle timeouts and
//! a budget for request bodies in flight.

pub mod server;
pub mod tls;

/// An error with its causes, `outer: inner: …`: hyper's client errors say only
/// "client error (Connect)" at the top, the certificate or connection error is below.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A port that could not be bound (or whose address could not be read).
#[derive(Debug, thiserror::Error)]
#[error("binding the {what} port {addr}: {source}")]
pub struct BindError {
    pub what: &'static str,
    pub addr: String,
    #[source]
    pub source: io::Error,
}

/// Binds `addr`, the `what` port (`relay`, `admin`, …), and reads back its address (port
/// 0 picks a free one).
pub async fn bind(what: &'static str, addr: &str) -> Result<(TcpListener, SocketAddr), BindError> {
    let error = |source| BindError {
        what,
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let local = listener.local_addr().map_err(error)?;
    Ok((listener, local))
}

/// A listener with a connection cap.
#[derive(Debug)]
pub struct CappedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    cap: usize,
}

impl CappedListener {
    /// Caps `inner` at `max_connections` (at least 1) open connections.
    pub fn new(inner: TcpListener, max_connections: usize) -> Self {
        let cap = max_connections.max(1);
        Self {
            inner,
            slots: Arc::new(Semaphore::new(cap)),
            cap,
        }
    }

    /// A handle that reports how many connections are open.
    pub fn gauge(&self) -> OpenConnections {
        OpenConnections {
            slots: self.slots.clone(),
            cap: self.cap,
        }
    }
}

/// Reads the number of open connections of a [`CappedListener`].
#[derive(Clone, Debug)]
pub struct OpenConnections {
    slots: Arc<Semaphore>,
    cap: usize,
}

impl OpenConnections {
    pub fn open(&self) -> usize {
        self.cap - self.slots.available_permits()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }
}

/// An accepted connection holding its slot until dropped.
#[derive(Debug)]
pub struct CappedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let _ = stream.set_nodelay(true);
        (
            CappedStream {
                stream,
                _slot: slot,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server behind the cap: the third client is accepted only once one of the
    /// first two leaves.
    #[tokio::test]
    async fn past_the_cap_a_connection_waits_until_one_closes() {
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = inner.local_addr().expect("addr");
        let mut listener = CappedListener::new(inner, 2);
        let gauge = listener.gauge();
        tokio::spawn(async move {
            loop {
                let (mut io, _) = axum::serve::Listener::accept(&mut listener).await;
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    while io.read_exact(&mut b).await.is_ok() {
                        if io.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let echo = |mut s: TcpStream| async move {
            s.write_all(b"x").await.expect("write");
            let mut b = [0u8; 1];
            tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut b))
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false)
                .then_some(s)
        };
        let a = echo(TcpStream::connect(addr).await.expect("a"))
            .await
            .expect("a served");
        let _b = echo(TcpStream::connect(addr).await.expect("b"))
            .await
            .expect("b served");
        assert_eq!((gauge.open(), gauge.cap()), (2, 2));
        // The kernel completes the handshake, but the server does not take the connection.
        let mut c = TcpStream::connect(addr).await.expect("c connects");
        c.write_all(b"y").await.expect("write");
        let mut byte = [0u8; 1];
        let waited =
            tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut byte)).await;
        assert!(
            waited.is_err(),
            "a third connection is not served while two are open"
        );
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut byte))
            .await
            .expect("served once a slot is free")
            .expect("read");
        assert_eq!(&byte, b"y");
        assert_eq!(gauge.open(), 2);
    }
}
