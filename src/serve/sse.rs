//! Server-sent events at `GET /sse?topics=a,b`.
//!
//! The stream opens with a `subscribed` event (no id) carrying the head, then sends every
//! event as `id: <pos>` / `event: <name>` / `data: <the WebSocket event message>`. A
//! client that reconnects sends `Last-Event-ID` (browsers do it by themselves) and gets
//! what it missed, replayed exactly as on the WebSocket ([`super::replay`]); `?since=P`
//! does the same for a first connect, and `Last-Event-ID` wins when both are present. A
//! resume older than retention gets a `reset` event, whose id is the head the stream
//! continues after. Quiet streams carry `: keepalive` comments.
//!
//! The session's hub queue is the only buffer: the stream is pulled by the HTTP body,
//! so a client that reads too slowly fills the queue, the hub drops the session and the
//! stream ends; the client reconnects with `Last-Event-ID`. The stream also ends at
//! shutdown. Bad topics or positions are refused with a 400 before the stream starts.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream;

use super::AppContext;
use super::admission::{self, Permit};
use super::protocol::Outgoing;
use super::query::{self, HttpError, Params};
use super::replay::{self, Replay, Step};
use crate::hub::{Membership, Published};

/// The header a reconnecting `EventSource` sends.
pub(crate) const LAST_EVENT_ID: &str = "last-event-id";

/// Routes of this module.
pub(crate) fn router() -> Router<AppContext> {
    Router::new().route("/sse", get(open))
}

async fn open(
    State(ctx): State<AppContext>,
    headers: HeaderMap,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(params) = params.map_err(HttpError::from_rejection)?;
    let (principal, permit) = admission::admit_session(&ctx, &headers, params.token.as_deref())?;
    let topics = query::topics(params.topics.as_deref(), ctx.session.max_topics)?;
    query::check_allowed(&principal, &topics)?;
    let since = resume_position(&headers, params.since.as_deref())?;
    let named = match params.unnamed.as_deref() {
        None | Some("0") | Some("false") => true,
        Some("1") | Some("true") => false,
        Some(_) => return Err(HttpError::bad_request("unnamed must be 1 or 0")),
    };

    let member = ctx.hub.join(ctx.session.queue);
    let head = ctx
        .hub
        .subscribe(member.id(), topics.iter().cloned(), since.is_some())
        .expect("a session that just joined is in the hub");
    let subscribed = Event::default().event("subscribed").data(
        Outgoing::Subscribed {
            topics: &topics,
            head,
        }
        .to_json(),
    );
    let replay = since.map(|since| Replay::new(&ctx, member.id(), topics, since, head));
    let keepalive = KeepAlive::new()
        .interval(ctx.session.sse_keepalive)
        .text("keepalive");
    tracing::debug!(session = member.id(), since, "sse session opened");
    let expires = tokio::time::Instant::now()
        + principal
            .expires_in()
            .unwrap_or(std::time::Duration::from_secs(365 * 24 * 3600));
    let session = Session {
        ctx,
        member,
        expires,
        _permit: permit,
        cursor: 0,
        replay,
        pending: VecDeque::from([subscribed]),
        named,
    };
    let events = stream::unfold(session, |mut session| async move {
        let event = session.next().await?;
        Some((Ok::<_, Infallible>(event), session))
    });
    Ok(Sse::new(events).keep_alive(keepalive).into_response())
}

/// `Last-Event-ID` if present (and not empty), else `?since`.
fn resume_position(headers: &HeaderMap, since: Option<&str>) -> Result<Option<i64>, HttpError> {
    if let Some(value) = headers.get(LAST_EVENT_ID) {
        let value = value
            .to_str()
            .map_err(|_| HttpError::bad_request("Last-Event-ID must be a position"))?;
        if !value.trim().is_empty() {
            return query::position("Last-Event-ID", value).map(Some);
        }
    }
    since.map(|raw| query::position("since", raw)).transpose()
}

struct Session {
    ctx: AppContext,
    member: Membership,
    /// The stream ends when the token expires; the client reconnects with a new one.
    expires: tokio::time::Instant,
    _permit: Permit,
    /// Last position sent; anything at or below it is not sent again.
    cursor: i64,
    /// Until the session is live.
    replay: Option<Replay>,
    /// Events ready to send.
    pending: VecDeque<Event>,
    /// Whether events carry their name in the `event:` field.
    named: bool,
}

impl Session {
    /// The next SSE event, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if let Some(replay) = self.replay.as_mut() {
                let step = tokio::select! {
                    biased;
                    _ = self.ctx.shutdown.cancelled() => return None,
                    step = replay.next() => step,
                };
                match step {
                    Ok(Step::Events(events)) => {
                        for event in events {
                            if event.pos > self.cursor {
                                self.cursor = event.pos;
                                self.pending.push_back(sse_event(&event, self.named));
                            }
                        }
                    }
                    Ok(Step::Reset { head }) => {
                        self.cursor = self.cursor.max(head);
                        self.pending.push_back(reset_event(head));
                    }
                    Ok(Step::Live { upto }) => {
                        self.cursor = self.cursor.max(upto);
                        self.replay = None;
                    }
                    Err(err) => {
                        tracing::warn!(session = self.member.id(), error = %err, "sse replay failed: ending the stream");
                        return None;
                    }
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => return None,
                _ = tokio::time::sleep_until(self.expires) => {
                    tracing::debug!(session = self.member.id(), "sse token expired: ending the stream");
                    return None;
                }
                event = self.member.events.recv() => match event {
                    Some(event) if event.pos > self.cursor => {
                        self.cursor = event.pos;
                        return Some(sse_event(&event, self.named));
                    }
                    Some(_) => {}
                    None => {
                        tracing::info!(session = self.member.id(), "sse client too slow: ending the stream");
                        return None;
                    }
                },
            }
        }
    }
}

fn sse_event(event: &Published, named: bool) -> Event {
    let sse = Event::default().id(event.pos.to_string());
    let sse = if named {
        sse.event(event.event.name())
    } else {
        sse
    };
    sse.data(event.frame.as_str())
}

fn reset_event(head: i64) -> Event {
    Event::default().id(head.to_string()).event("reset").data(
        Outgoing::Reset {
            reason: replay::SINCE_TOO_OLD,
            head,
        }
        .to_json(),
    )
}
