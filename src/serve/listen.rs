//! The listening socket. Every accepted connection gets a handshake deadline: a client
//! must finish sending its first request (the WebSocket upgrade, an SSE or HTTP request)
//! within `limits.handshake_timeout`, or the connection is dropped, so slow or silent
//! sockets cannot pile up. The deadline ends with the server's first write (the response
//! or the `101 Switching Protocols`); an established session is not limited by it.
//!
//! Each connection's socket is a shared [`Wire`]: handlers find it in [`Peer`], so a
//! WebSocket session can let the hub write events to it directly.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Sleep;

use super::wire::{Conn, Wire};

/// A TCP listener whose connections carry a handshake deadline.
#[derive(Debug)]
pub struct HandshakeListener {
    inner: TcpListener,
    timeout: Duration,
}

impl HandshakeListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener, timeout: Duration) -> HandshakeListener {
        HandshakeListener { inner, timeout }
    }
}

impl Listener for HandshakeListener {
    type Io = Deadlined;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let deadline = Some(Box::pin(tokio::time::sleep(self.timeout)));
                    let conn = Conn::new(Wire::new(stream));
                    return (Deadlined { conn, deadline }, addr);
                }
                // Out of file descriptors or a connection reset before accept: wait a
                // little rather than spin, then go on accepting.
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The peer's address and the connection's socket, for handlers (`ConnectInfo<Peer>`).
#[derive(Debug, Clone)]
pub struct Peer(pub SocketAddr, pub Arc<Wire>);

impl Connected<IncomingStream<'_, HandshakeListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, HandshakeListener>) -> Self {
        Peer(*stream.remote_addr(), stream.io().conn.wire().clone())
    }
}

/// A TCP stream that fails its reads once the handshake deadline passes, until the
/// server has written something.
#[derive(Debug)]
pub struct Deadlined {
    conn: Conn,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Deadlined {
    fn disarm_after(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.deadline = None;
        }
    }
}

impl AsyncRead for Deadlined {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            metrics::counter!(crate::metrics::REFUSALS, "code" => "handshake_timeout").increment(1);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not complete its request in time",
            )));
        }
        Pin::new(&mut self.conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for Deadlined {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.conn).poll_write(cx, buf);
        self.disarm_after(&written);
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_shutdown(cx)
    }
}
