//! The listening socket, and the deadlines every connection lives under.
//!
//! Each accepted connection counts against its address
//! (`limits.max_connections_per_ip`; `429` beyond). A request's headers must arrive
//! within `limits.handshake_timeout`, and a kept-alive connection may stay idle for
//! `limits.idle_timeout`; answered SSE streams and WebSocket sessions have their own
//! heartbeats instead. [`Deadlined`] enforces the deadlines on reads, [`Serve`] tells it
//! where requests begin and responses end, and each socket is a shared [`Wire`] the hub
//! can write to.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::extract::connect_info::ConnectInfo;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::serve::{IncomingStream, Listener};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::admission::{ConnectionPermit, Connections, HttpRefusal, LimitsConfig};
use super::protocol::ErrorCode;
use super::wire::{Conn, Wire};

/// A TCP listener whose connections are counted per IP and carry deadlines.
#[derive(Debug)]
pub(crate) struct HandshakeListener {
    inner: TcpListener,
    limits: Arc<LimitsConfig>,
    connections: Arc<Connections>,
}

impl HandshakeListener {
    /// Wraps a bound listener; its connections count in `connections`.
    pub(crate) fn new(
        inner: TcpListener,
        limits: Arc<LimitsConfig>,
        connections: Arc<Connections>,
    ) -> HandshakeListener {
        HandshakeListener {
            inner,
            limits,
            connections,
        }
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
                    let permit = self.connections.admit(addr.ip(), &self.limits).ok();
                    let http = Http {
                        header_timeout: self.limits.handshake_timeout,
                        idle_timeout: self.limits.idle_timeout,
                        deadline: Some(Box::pin(tokio::time::sleep(self.limits.handshake_timeout))),
                        phase: Phase::Headers,
                        in_flight: 0,
                        read_in_flight: false,
                        upgraded: false,
                        ended: 0,
                        seen: 0,
                    };
                    let connection = Arc::new(Connection {
                        refused: permit.is_none(),
                        reader: AtomicWaker::new(),
                        http: Mutex::new(http),
                    });
                    let io = Deadlined {
                        conn: Conn::new(Wire::new(stream)),
                        _permit: permit,
                        http: Some(connection),
                    };
                    return (io, addr);
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

/// The peer's address, the connection's socket and its request state, for handlers
/// (`ConnectInfo<Peer>`).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The client's address.
    pub(crate) addr: SocketAddr,
    /// The connection's socket.
    pub(crate) wire: Arc<Wire>,
    /// What the connection is doing, shared with its stream's deadlines.
    pub(crate) connection: Arc<Connection>,
}

/// Serves a router on the connections of a [`HandshakeListener`] (the make-service of
/// `axum::serve`): every request gets its [`Peer`] as `ConnectInfo<Peer>`, and the
/// connection's stream learns where each request begins and where its response ends.
/// A connection over its address's limit gets `429` and `Connection: close` for its
/// request.
#[derive(Debug, Clone)]
pub(crate) struct Serve {
    router: Router,
}

impl Serve {
    /// Serves `router`.
    pub(crate) fn new(router: Router) -> Serve {
        Serve { router }
    }
}

impl Service<IncomingStream<'_, HandshakeListener>> for Serve {
    type Response = PerConnection;
    type Error = Infallible;
    type Future = std::future::Ready<Result<PerConnection, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'_, HandshakeListener>) -> Self::Future {
        let io = stream.io();
        let peer = Peer {
            addr: *stream.remote_addr(),
            wire: io.conn.wire().clone(),
            connection: io
                .http
                .clone()
                .expect("a connection is upgraded only after a request"),
        };
        std::future::ready(Ok(PerConnection {
            router: self.router.clone(),
            peer,
        }))
    }
}

/// One connection's service ([`Serve`]).
#[derive(Debug, Clone)]
pub(crate) struct PerConnection {
    router: Router,
    peer: Peer,
}

impl Service<Request> for PerConnection {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut request: Request) -> Answer {
        let connection = self.peer.connection.clone();
        if connection.refused {
            tracing::debug!(peer = %self.peer.addr, "connection over the per-address limit: refused");
            return Answer(None);
        }
        let connect = request.method() == Method::CONNECT;
        request
            .extensions_mut()
            .insert(ConnectInfo(self.peer.clone()));
        connection.begin();
        Answer(Some(Routed {
            inner: self.router.call(request),
            connection: Some(connection),
            connect,
        }))
    }
}

/// The response future of [`PerConnection`].
pub(crate) struct Answer(Option<Routed>);

/// A request the router is answering (an [`Answer`] without one is a refusal: the
/// connection is over its address's limit).
struct Routed {
    inner: RouteFuture<Infallible>,
    /// Whose request ends with the response's body; taken when the response is ready.
    connection: Option<Arc<Connection>>,
    /// A `CONNECT` request (an HTTP/2 WebSocket), upgraded by a 2xx.
    connect: bool,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer").finish_non_exhaustive()
    }
}

impl Future for Answer {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(Routed {
            inner,
            connection,
            connect,
        }) = &mut self.0
        else {
            let mut response = HttpRefusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyConnections,
                "too many connections from this address",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Poll::Ready(Ok(response));
        };
        let connect = *connect;
        let Ok(response) = std::task::ready!(Pin::new(inner).poll(cx));
        let Some(connection) = connection.take() else {
            return Poll::Ready(Ok(response));
        };
        let status = response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success()) {
            // No more HTTP on this connection: its request state goes with the next read.
            connection.lock().upgraded = true;
            connection.end();
            return Poll::Ready(Ok(response));
        }
        let (parts, body) = response.into_parts();
        let body = Body::new(InFlight { body, connection });
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        // Dropped before its response (the client went away): the request is over.
        if let Some(Routed {
            connection: Some(connection),
            ..
        }) = &mut self.0
        {
            connection.end();
        }
    }
}

/// One connection's request state, shared by its stream ([`Deadlined`]) and its service
/// ([`PerConnection`]).
#[derive(Debug)]
pub(crate) struct Connection {
    /// The connection was over its address's limit: every request on it is refused
    /// (`429`) and the connection closed.
    refused: bool,
    /// The stream's reader, woken when a response ends so that the idle time starts.
    reader: AtomicWaker,
    http: Mutex<Http>,
}

/// Where a connection is between requests, and its deadline.
#[derive(Debug)]
struct Http {
    header_timeout: Duration,
    idle_timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    phase: Phase,
    /// Requests being answered (HTTP/1 answers one at a time).
    in_flight: u32,
    /// Bytes arrived while a request was being answered: the next request has begun.
    read_in_flight: bool,
    /// The connection was upgraded (WebSocket): no more HTTP deadlines.
    upgraded: bool,
    /// Counts (wrapping) the times the connection went back to waiting for a request.
    ended: u32,
    /// `ended` when the stream last looked.
    seen: u32,
}

/// Which deadline a connection's reads are under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request's headers are arriving (or the first request is awaited).
    Headers,
    /// A request is being answered, or the connection was upgraded: no deadline.
    Busy,
    /// Kept alive between a response and the next request.
    Idle,
}

impl Connection {
    fn lock(&self) -> MutexGuard<'_, Http> {
        self.http.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request's headers have been read: no deadline until its response ends.
    fn begin(&self) {
        let mut http = self.lock();
        http.in_flight += 1;
        http.read_in_flight = false;
    }

    /// A response has ended (or was dropped): the connection waits for the next request.
    fn end(&self) {
        {
            let mut http = self.lock();
            http.in_flight = http.in_flight.saturating_sub(1);
            if http.in_flight == 0 {
                http.ended = http.ended.wrapping_add(1);
            }
        }
        self.reader.wake();
    }
}

impl Http {
    fn arm(&mut self, phase: Phase, timeout: Duration) {
        self.phase = phase;
        let at = Instant::now() + timeout;
        match self.deadline.as_mut() {
            Some(deadline) => deadline.as_mut().reset(at),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Brings the phase up to date; fails if the phase's deadline has passed.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.upgraded || self.in_flight > 0 {
            self.phase = Phase::Busy;
            self.deadline = None;
            return Ok(());
        }
        if self.ended != self.seen {
            // A response ended: idle, unless the next request had begun during it.
            self.seen = self.ended;
            if self.read_in_flight {
                self.arm(Phase::Headers, self.header_timeout);
            } else {
                self.arm(Phase::Idle, self.idle_timeout);
            }
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            let (code, message) = match self.phase {
                Phase::Idle => (
                    ErrorCode::IdleTimeout,
                    "the connection was idle for too long",
                ),
                _ => (
                    ErrorCode::HandshakeTimeout,
                    "the client did not complete its request in time",
                ),
            };
            metrics::counter!(crate::metrics::REFUSALS, "code" => code.as_str()).increment(1);
            return Err(io::Error::new(io::ErrorKind::TimedOut, message));
        }
        Ok(())
    }

    /// Bytes arrived.
    fn read_some(&mut self) {
        match self.phase {
            Phase::Busy => self.read_in_flight = true,
            // The next request has begun: its headers have the header timeout.
            Phase::Idle => self.arm(Phase::Headers, self.header_timeout),
            Phase::Headers => {}
        }
    }
}

/// A response body that ends its request when it ends or is dropped.
struct InFlight {
    body: Body,
    connection: Arc<Connection>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.connection.end();
    }
}

impl HttpBody for InFlight {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A TCP stream whose reads fail once the deadline of its connection's phase has
/// passed: headers not complete within `handshake_timeout`, or idle for `idle_timeout`
/// (see the module docs). It holds its connection's share of the per-address count.
#[derive(Debug)]
pub(crate) struct Deadlined {
    conn: Conn,
    _permit: Option<ConnectionPermit>,
    /// The connection's request state; `None` once it was upgraded.
    http: Option<Arc<Connection>>,
}

impl AsyncRead for Deadlined {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(connection) = this.http.as_ref() else {
            // Upgraded: reads pass straight through.
            return Pin::new(&mut this.conn).poll_read(cx, buf);
        };
        connection.reader.register(cx.waker());
        let mut http = connection.lock();
        if http.upgraded {
            drop(http);
            this.http = None;
            return Pin::new(&mut this.conn).poll_read(cx, buf);
        }
        if let Err(err) = http.check(cx) {
            return Poll::Ready(Err(err));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.conn).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            http.read_some();
        }
        read
    }
}

impl AsyncWrite for Deadlined {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.conn).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_shutdown(cx)
    }
}
