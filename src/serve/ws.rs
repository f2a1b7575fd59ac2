//! WebSocket sessions at `GET /ws`.
//!
//! Each session is one `select!` loop over: client frames, its hub queue, the ping
//! timer and shutdown. While the session waits, the hub's fan-out writers write its
//! events straight to its socket (see [`crate::hub`] and [`super::wire`]); the session is
//! woken only to answer the client, to ping, or to write the events its writer could not
//! (the socket was full, or the session was answering its client). A `subscribe` with `since` replays the log before the session
//! goes live (see [`super::replay`] and [`crate::hub`] for the switch-over); a `since`
//! older than retention gets a `reset` first. Bad client frames get an `error`
//! message and the session goes on; a frame above the size limit closes it with 1009.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::SinkExt;
use serde::Deserialize;
use tokio::time::Instant;

use super::admission::{self, Permit, RateLimit};
use super::auth::Principal;
use super::protocol::{self, ErrorCode, Incoming, Outgoing, Refusal};
use super::replay::{self, Replay, Step};
use super::wire::Wire;
use super::{AppContext, listen};
use crate::hub::Membership;

/// Close codes used by sessions.
pub(crate) mod close {
    /// The server is shutting down.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// A policy refused the connection (origin, limits).
    pub(crate) const POLICY: u16 = 1008;
    /// A frame was larger than the limit.
    pub(crate) const TOO_LARGE: u16 = 1009;
    /// The server failed (the client should reconnect and resume).
    pub(crate) const INTERNAL: u16 = 1011;
    /// The client read too slowly; resume with `since`.
    pub(crate) const TOO_SLOW: u16 = 4000;
    /// The token expired.
    pub(crate) const TOKEN_EXPIRED: u16 = 4001;
    /// A token refresh was refused.
    pub(crate) const REFRESH_REFUSED: u16 = 4002;

    /// A metric label for a close code.
    pub(crate) fn label(code: u16) -> &'static str {
        match code {
            GOING_AWAY => "going_away",
            POLICY => "policy",
            TOO_LARGE => "too_large",
            INTERNAL => "internal_error",
            TOO_SLOW => "too_slow",
            TOKEN_EXPIRED => "token_expired",
            REFRESH_REFUSED => "refresh_refused",
            _ => "other",
        }
    }
}

/// Routes of this module.
pub(crate) fn router() -> Router<AppContext> {
    Router::new().route("/ws", get(upgrade))
}

/// The query string of `/ws`.
#[derive(Debug, Deserialize)]
struct WsQuery {
    token: Option<String>,
}

async fn upgrade(
    ws: WebSocketUpgrade,
    State(ctx): State<AppContext>,
    ConnectInfo(listen::Peer { wire, .. }): ConnectInfo<listen::Peer>,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
) -> Response {
    if !ctx.session.websocket {
        return admission::HttpRefusal::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            super::protocol::ErrorCode::WebsocketDisabled,
            "WebSocket is turned off on this server: use /sse or /events",
        )
        .into_response();
    }
    let (principal, permit) = match admission::admit_session(&ctx, &headers, query.token.as_deref())
    {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    let max = ctx.session.max_frame;
    // Per-session memory: the read buffer is zero-filled to its capacity on every read,
    // so all of it is resident for every idle session. Client frames are small (a
    // subscribe to one topic fits in 64 bytes); a larger one grows the buffer, which then
    // keeps that size (at most `max_frame`).
    ws.read_buffer_size(64)
        // Frames queued for a session are written together up to this size; a single
        // frame is written at once (send flushes). An idle session keeps the capacity of
        // the last frame it wrote itself (a reply; events go through the wire).
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_frame_size(max)
        .max_message_size(max)
        .on_upgrade(move |socket| {
            // The session gets a task of its own, sized by its own future: axum's upgrade
            // task, which would otherwise hold it, also keeps the upgrade's state (the
            // callback, the configuration) for as long as the session lasts.
            let sessions = ctx.sessions.clone();
            sessions.spawn(Session::new(ctx, socket, wire, principal, permit).run());
            std::future::ready(())
        })
}

/// Why a session ended.
enum End {
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The peer is gone; nothing to send.
    Gone,
}

struct Session {
    ctx: AppContext,
    socket: WebSocket,
    /// The socket under `socket`, which the hub writes events to.
    wire: Arc<Wire>,
    member: Membership,
    principal: Principal,
    /// Subscribed topics, to re-check when the token is refreshed (the names are shared
    /// with the hub's index).
    subscribed: Vec<Arc<str>>,
    rate: RateLimit,
    _permit: Permit,
    subscribed_once: bool,
}

impl Session {
    fn new(
        ctx: AppContext,
        socket: WebSocket,
        wire: Arc<Wire>,
        principal: Principal,
        permit: Permit,
    ) -> Session {
        let mut member = ctx.hub.join(ctx.session.queue);
        member.events.attach(wire.clone());
        let rate = RateLimit::new(ctx.limits.subscribe_rate, ctx.limits.subscribe_burst);
        Session {
            ctx,
            socket,
            wire,
            member,
            principal,
            subscribed: Vec::new(),
            rate,
            _permit: permit,
            subscribed_once: false,
        }
    }

    /// The session's task. An `async` block rather than an `async fn`: an `async fn`
    /// keeps its `self` argument twice in its future (as the argument and as the local
    /// it is moved into), which is 0.6 KiB more for every idle session.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self) -> impl std::future::Future<Output = ()> {
        async move {
            let end = self.serve().await;
            let reason = match &end {
                End::Close(code, _) => close::label(*code),
                End::Gone => "client_gone",
            };
            metrics::counter!(crate::metrics::SESSIONS_CLOSED, "reason" => reason).increment(1);
            // Whatever happens now, the hub writes no more events to this socket.
            self.wire.hold();
            if let End::Close(code, reason) = end {
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                };
                // A client that stopped reading may never take the close frame. Boxed, like
                // every write below: a write's future (its timeout's timer, the socket's
                // sink) would otherwise size every idle session's task.
                let _ = Box::pin(tokio::time::timeout(
                    Duration::from_secs(1),
                    self.socket.send(Message::Close(Some(frame))),
                ))
                .await;
            }
            tracing::debug!(session = self.member.id(), "session ended");
        }
    }

    async fn serve(&mut self) -> End {
        let interval = self.ctx.session.ping_interval;
        let mut next_ping = Instant::now() + interval;
        // One timer, kept in the task, for both the next ping and the token's expiry:
        // timers are a large part of an idle session's memory.
        let timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(timer);
        let mut last_seen = Instant::now();
        loop {
            let expiry = expiry_of(&self.principal);
            if Instant::now() >= expiry {
                return End::Close(close::TOKEN_EXPIRED, "token expired");
            }
            let due = next_ping.min(expiry);
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            // Waiting: the hub may write events to the socket.
            self.wire.release();
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => return End::Close(close::GOING_AWAY, "server shutting down"),
                incoming = self.socket.recv() => {
                    // Answers must not be overtaken by the events they announce.
                    self.wire.hold();
                    last_seen = Instant::now();
                    match incoming {
                        None | Some(Ok(Message::Close(_))) => return End::Gone,
                        Some(Err(err)) => return receive_failed(err),
                        Some(Ok(Message::Text(text))) => {
                            // Boxed: subscribe and replay hold large futures (pool,
                            // queries); inline they would size every idle session's task.
                            if let Err(end) = Box::pin(self.handle(&text)).await {
                                return end;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let refusal = Refusal { code: ErrorCode::BadRequest, message: "messages must be JSON text frames".into() };
                            if Box::pin(self.refuse(&refusal)).await.is_err() {
                                return End::Gone;
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    }
                }
                queued = self.member.events.writable() => {
                    if !queued {
                        return End::Close(close::TOO_SLOW, "too slow: resume with since");
                    }
                    if let Err(end) = Box::pin(self.deliver()).await {
                        return end;
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= expiry {
                        return End::Close(close::TOKEN_EXPIRED, "token expired");
                    }
                    if now < next_ping {
                        continue;
                    }
                    next_ping += interval;
                    if last_seen.elapsed() > interval * 2 {
                        return End::Close(close::GOING_AWAY, "no answer to ping");
                    }
                    if let Err(end) = Box::pin(self.write(Message::Ping(Default::default()))).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Writes what the hub queued for this session (and the rest of a frame it
    /// started), as many frames per syscall as are queued, within the write timeout.
    async fn deliver(&mut self) -> Result<(), End> {
        let limit = self.ctx.session.write_timeout;
        let mut sent = 0u64;
        let write = async {
            loop {
                if self.wire.dirty() {
                    // tungstenite is halfway through a frame of its own: it goes first.
                    self.socket.flush().await.map_err(|_| ())?;
                }
                let drained = self.member.events.write_queued().map_err(|_| ())?;
                sent += drained.sent;
                if drained.done {
                    return Ok(());
                }
                self.wire.writable().await.map_err(|_| ())?;
            }
        };
        let result = tokio::time::timeout(limit, write).await;
        metrics::counter!(crate::metrics::DELIVERIES).increment(sent);
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(())) => Err(End::Gone),
            Err(_) => Err(End::Close(close::TOO_SLOW, "too slow: resume with since")),
        }
    }

    /// Writes one message; a client that takes longer than the write timeout is too slow.
    async fn write(&mut self, message: Message) -> Result<(), End> {
        match tokio::time::timeout(self.ctx.session.write_timeout, self.socket.send(message)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(End::Close(close::TOO_SLOW, "too slow: resume with since")),
        }
    }

    async fn send_json(&mut self, message: &Outgoing<'_>) -> Result<(), End> {
        self.write(Message::Text(message.to_json().into())).await
    }

    async fn refuse(&mut self, refusal: &Refusal) -> Result<(), End> {
        metrics::counter!(crate::metrics::REFUSALS, "code" => refusal.code.as_str()).increment(1);
        self.send_json(&Outgoing::Error {
            code: refusal.code,
            message: &refusal.message,
        })
        .await
    }

    async fn handle(&mut self, text: &str) -> Result<(), End> {
        match protocol::parse(text) {
            Err(refusal) => self.refuse(&refusal).await,
            Ok(Incoming::Ping) => self.send_json(&Outgoing::Pong).await,
            Ok(Incoming::Subscribe { .. } | Incoming::Unsubscribe { .. })
                if !self.rate.try_take() =>
            {
                self.refuse(&Refusal {
                    code: ErrorCode::RateLimited,
                    message: "too many subscribe or unsubscribe requests: slow down".into(),
                })
                .await
            }
            Ok(Incoming::Subscribe { topics, since }) => self.subscribe(topics, since).await,
            Ok(Incoming::Unsubscribe { topics }) => {
                self.ctx.hub.unsubscribe(self.member.id(), &topics);
                self.subscribed
                    .retain(|t| !topics.iter().any(|u| **u == **t));
                self.subscribed.shrink_to_fit();
                self.send_json(&Outgoing::Unsubscribed { topics: &topics })
                    .await
            }
            Ok(Incoming::Auth { token }) => self.refresh(&token).await,
        }
    }

    async fn subscribe(&mut self, topics: Vec<String>, since: Option<i64>) -> Result<(), End> {
        let first = !self.subscribed_once;
        self.subscribed_once = true;
        let mut accepted = Vec::with_capacity(topics.len());
        for topic in topics {
            if accepted.contains(&topic) {
                continue;
            }
            if let Err(refusal) = protocol::check_topic(&topic) {
                self.refuse(&refusal).await?;
            } else if !self.principal.allows(&topic) {
                let refusal = Refusal {
                    code: ErrorCode::Forbidden,
                    message: format!("topic {topic} is not allowed for this token"),
                };
                self.refuse(&refusal).await?;
            } else if self.subscribed.iter().any(|t| **t == *topic) {
                continue;
            } else if self.subscribed.len() + accepted.len() >= self.ctx.session.max_topics {
                let refusal = Refusal {
                    code: ErrorCode::TooManyTopics,
                    message: format!(
                        "topic {topic} refused: a connection may hold at most {} topics",
                        self.ctx.session.max_topics
                    ),
                };
                self.refuse(&refusal).await?;
            } else {
                accepted.push(topic);
            }
        }
        let replay = match since {
            Some(p) if first => Some(p),
            Some(_) => {
                let refusal = Refusal {
                    code: ErrorCode::BadRequest,
                    message: "since is accepted on the first subscribe of a connection only; these topics are live".into(),
                };
                self.refuse(&refusal).await?;
                None
            }
            None => None,
        };
        let shared: Vec<Arc<str>> = accepted.iter().map(|t| Arc::from(t.as_str())).collect();
        let Some(head) =
            self.ctx
                .hub
                .subscribe(self.member.id(), shared.iter().cloned(), replay.is_some())
        else {
            return Err(End::Close(close::TOO_SLOW, "too slow: resume with since"));
        };
        self.subscribed.reserve_exact(shared.len());
        self.subscribed.extend(shared);
        self.send_json(&Outgoing::Subscribed {
            topics: &accepted,
            head,
        })
        .await?;
        match replay {
            Some(since) => self.replay(accepted, since, head).await,
            None => Ok(()),
        }
    }

    /// Replaces the session's token. A token that fails verification, or belongs to
    /// another subject, closes the session (4002); topics the new token no longer
    /// allows are dropped, each with a `forbidden` error.
    async fn refresh(&mut self, token: &str) -> Result<(), End> {
        let Some(auth) = self.ctx.auth.clone() else {
            return self
                .refuse(&Refusal {
                    code: ErrorCode::BadRequest,
                    message: "this server has no authentication configured".into(),
                })
                .await;
        };
        let principal = match auth.verify(token) {
            Ok(p) if p.sub == self.principal.sub => p,
            Ok(_) => {
                return Err(End::Close(
                    close::REFRESH_REFUSED,
                    "refresh refused: another subject",
                ));
            }
            Err(err) => {
                tracing::info!(session = self.member.id(), error = %err, "token refresh refused");
                return Err(End::Close(
                    close::REFRESH_REFUSED,
                    "refresh refused: invalid token",
                ));
            }
        };
        let (kept, dropped): (Vec<Arc<str>>, Vec<Arc<str>>) = std::mem::take(&mut self.subscribed)
            .into_iter()
            .partition(|t| principal.allows(t));
        self.subscribed = kept;
        self.subscribed.shrink_to_fit();
        self.principal = principal;
        if !dropped.is_empty() {
            self.ctx.hub.unsubscribe(self.member.id(), &dropped);
            for topic in &dropped {
                let refusal = Refusal {
                    code: ErrorCode::Forbidden,
                    message: format!(
                        "topic {topic} is not allowed for the new token: unsubscribed"
                    ),
                };
                self.refuse(&refusal).await?;
            }
        }
        self.send_json(&Outgoing::Authed {
            exp: self.principal.exp,
        })
        .await
    }

    /// Sends the log's events on `topics` with `since < pos <= head` (or a `reset` if
    /// `since` is older than retention), then goes live; see [`replay`].
    async fn replay(&mut self, topics: Vec<String>, since: i64, head: i64) -> Result<(), End> {
        let mut replay = Replay::new(&self.ctx, self.member.id(), topics, since, head);
        loop {
            match replay.next().await {
                Ok(Step::Events(events)) => {
                    for event in events {
                        self.write(Message::Text(
                            Utf8Bytes::try_from(event.frame.bytes())
                                .expect("a frame is UTF-8 text"),
                        ))
                        .await?;
                    }
                }
                Ok(Step::Reset { head }) => {
                    self.send_json(&Outgoing::Reset {
                        reason: replay::SINCE_TOO_OLD,
                        head,
                    })
                    .await?;
                    self.member.events.skip_through(head);
                }
                Ok(Step::Live { upto }) => {
                    self.member.events.skip_through(upto);
                    return Ok(());
                }
                Err(err) => {
                    tracing::warn!(error = %err, "replay failed");
                    return Err(End::Close(
                        close::INTERNAL,
                        "replay failed: reconnect and resume",
                    ));
                }
            }
        }
    }
}

fn receive_failed(err: axum::Error) -> End {
    let too_large = err
        .into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)));
    if too_large {
        End::Close(close::TOO_LARGE, "frame too large")
    } else {
        End::Gone
    }
}

/// When the session's token expires (far away when it has no expiry).
fn expiry_of(principal: &Principal) -> Instant {
    let far = Duration::from_secs(365 * 24 * 3600);
    Instant::now() + principal.expires_in().unwrap_or(far)
}
