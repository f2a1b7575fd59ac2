//! WebSocket sessions at `GET /ws`.
//!
//! Each session is one `select!` loop over: client frames, its hub queue, the ping
//! timer and shutdown. A `subscribe` with `since` replays the log before the session
//! goes live (see [`crate::hub`] for the switch-over). Bad client frames get an `error`
//! message and the session goes on; a frame above the size limit closes it with 1009.

use std::time::Duration;

/// Longest a replay read may take.
const REPLAY_READ_TIMEOUT: Duration = Duration::from_secs(30);

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::SinkExt;
use tokio::time::Instant;

use super::AppContext;
use super::protocol::{self, ErrorCode, Incoming, Outgoing, Refusal};
use crate::capture::{log, tail};
use crate::db::{self, DbError};
use crate::hub::Membership;

/// Close codes used by sessions.
pub mod close {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A policy refused the connection (origin, limits).
    pub const POLICY: u16 = 1008;
    /// A frame was larger than the limit.
    pub const TOO_LARGE: u16 = 1009;
    /// The server failed (the client should reconnect and resume).
    pub const INTERNAL: u16 = 1011;
    /// The client read too slowly; resume with `since`.
    pub const TOO_SLOW: u16 = 4000;
}

/// Routes of this module.
pub fn router() -> Router<AppContext> {
    Router::new().route("/ws", get(upgrade))
}

async fn upgrade(ws: WebSocketUpgrade, State(ctx): State<AppContext>) -> Response {
    let max = ctx.session.max_frame;
    // Per-session memory: the read buffer is zero-filled to its capacity on every read,
    // so all of it is resident for every idle session. Client frames are small; a larger
    // one grows the buffer for as long as it needs it.
    ws.read_buffer_size(256)
        // Frames queued for a session are written together up to this size; a single
        // frame is written at once (send flushes). Idle sessions hold no write buffer.
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_frame_size(max)
        .max_message_size(max)
        .on_upgrade(move |socket| {
            let sessions = ctx.sessions.clone();
            sessions.track_future(Session::new(ctx, socket).run())
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
    member: Membership,
    /// Last position sent; anything at or below it is not sent again.
    cursor: i64,
    subscribed_once: bool,
    topics: usize,
}

impl Session {
    fn new(ctx: AppContext, socket: WebSocket) -> Session {
        let member = ctx.hub.join(ctx.session.queue);
        Session {
            ctx,
            socket,
            member,
            cursor: 0,
            subscribed_once: false,
            topics: 0,
        }
    }

    async fn run(mut self) {
        let end = self.serve().await;
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            let _ = self.socket.send(Message::Close(Some(frame))).await;
        }
        tracing::debug!(session = self.member.id(), "session ended");
    }

    async fn serve(&mut self) -> End {
        let interval = self.ctx.session.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        let mut last_seen = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => return End::Close(close::GOING_AWAY, "server shutting down"),
                incoming = self.socket.recv() => {
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
                            if self.refuse(&refusal).await.is_err() {
                                return End::Gone;
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    }
                }
                event = self.member.events.recv() => match event {
                    Some(event) => {
                        // Everything already queued goes out in one write (the write
                        // buffer holds it until the flush): one syscall per wake-up.
                        let mut next = Some(event);
                        while let Some(event) = next {
                            if event.pos > self.cursor {
                                self.cursor = event.pos;
                                if self.socket.feed(Message::Text(event.frame.clone())).await.is_err() {
                                    return End::Gone;
                                }
                            }
                            next = self.member.events.try_recv().ok();
                        }
                        if self.socket.flush().await.is_err() {
                            return End::Gone;
                        }
                    }
                    None => return End::Close(close::TOO_SLOW, "too slow: resume with since"),
                },
                _ = ping.tick() => {
                    if last_seen.elapsed() > interval * 2 {
                        return End::Close(close::GOING_AWAY, "no answer to ping");
                    }
                    if self.socket.send(Message::Ping(Default::default())).await.is_err() {
                        return End::Gone;
                    }
                }
            }
        }
    }

    async fn send_json(&mut self, message: &Outgoing<'_>) -> Result<(), End> {
        self.socket
            .send(Message::Text(message.to_json().into()))
            .await
            .map_err(|_| End::Gone)
    }

    async fn refuse(&mut self, refusal: &Refusal) -> Result<(), End> {
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
            Ok(Incoming::Subscribe { topics, since }) => self.subscribe(topics, since).await,
            Ok(Incoming::Unsubscribe { topics }) => {
                self.ctx.hub.unsubscribe(self.member.id(), &topics);
                self.topics = self.topics.saturating_sub(topics.len());
                self.send_json(&Outgoing::Unsubscribed { topics: &topics })
                    .await
            }
            Ok(Incoming::Auth { .. }) => {
                self.refuse(&Refusal {
                    code: ErrorCode::BadRequest,
                    message: "this server has no authentication configured".into(),
                })
                .await
            }
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
            } else if self.topics + accepted.len() >= self.ctx.session.max_topics {
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
        let Some(head) =
            self.ctx
                .hub
                .subscribe(self.member.id(), accepted.iter().cloned(), replay.is_some())
        else {
            return Err(End::Close(close::TOO_SLOW, "too slow: resume with since"));
        };
        self.topics += accepted.len();
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

    /// Sends the log's events on `topics` with `since < pos <= head`, then goes live,
    /// re-reading as long as the hub's head moved during the read.
    async fn replay(&mut self, topics: Vec<String>, since: i64, mut head: i64) -> Result<(), End> {
        let mut read = since;
        loop {
            if read < head
                && let Err(err) = self.replay_range(&topics, read, head).await
            {
                return Err(match err {
                    ReplayError::Db(err) => {
                        tracing::warn!(error = %err, "replay failed");
                        End::Close(close::INTERNAL, "replay failed: reconnect and resume")
                    }
                    ReplayError::Send => End::Gone,
                });
            }
            read = read.max(head);
            match self.ctx.hub.go_live(self.member.id(), read) {
                Ok(()) => break,
                Err(newer) => head = newer,
            }
        }
        self.cursor = self.cursor.max(read);
        Ok(())
    }

    async fn replay_range(
        &mut self,
        topics: &[String],
        mut after: i64,
        upto: i64,
    ) -> Result<(), ReplayError> {
        let page = self.ctx.session.replay_page;
        loop {
            // A pooled connection is held for one read only, not while a slow client
            // is being written to.
            let rows = {
                let client = self.ctx.pool.get().await.map_err(DbError::from)?;
                let stmt = client
                    .prepare_cached(log::RANGE_FOR_TOPICS_SQL)
                    .await
                    .map_err(DbError::from)?;
                db::with_timeout(
                    REPLAY_READ_TIMEOUT,
                    log::read_range_for_topics(&client, &stmt, after, upto, topics, page),
                )
                .await?
            };
            let short = (rows.len() as i64) < page;
            for row in rows {
                match row {
                    Ok(change) => {
                        after = change.pos;
                        let published = tail::publishable(&change);
                        self.socket
                            .send(Message::Text(published.frame.clone()))
                            .await
                            .map_err(|_| ReplayError::Send)?;
                    }
                    Err(err) => {
                        after = err.pos;
                        tracing::error!(error = %err, "skipping unreadable log row in replay");
                    }
                }
            }
            if short {
                return Ok(());
            }
        }
    }
}

enum ReplayError {
    Db(DbError),
    Send,
}

impl From<DbError> for ReplayError {
    fn from(err: DbError) -> Self {
        ReplayError::Db(err)
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
