//! HTTP polling at `GET /events?topics=a,b&since=N&limit=M`, for clients that can hold
//! neither a WebSocket nor an SSE stream.
//!
//! The answer is `{"events":[...],"head":H,"more":B}`: the frames the WebSocket sends,
//! byte for byte, for `pos > N`, at most `M` (default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]); `H` is the next `since`, and `more` says to poll again at once. A
//! `since` ahead of this replica waits up to `session.catch_up_wait`; one older than
//! retention is `410` with a `reset`; without `since` the poll starts live (no events, the
//! head). docs/protocol.md has the semantics.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;

use super::query::{self, HttpError, Params};
use super::replay::{self, ReadError};
use super::{AppContext, admission};
use crate::hub::Published;

/// Events per response when `limit` is not given.
pub(crate) const DEFAULT_LIMIT: i64 = 100;

/// Largest `limit` accepted.
pub(crate) const MAX_LIMIT: i64 = 1000;

/// Routes of this module.
pub(crate) fn router() -> Router<AppContext> {
    Router::new().route("/events", get(poll))
}

async fn poll(
    State(ctx): State<AppContext>,
    headers: HeaderMap,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(params) = params.map_err(HttpError::from_rejection)?;
    let principal = admission::authenticate(&ctx, &headers, params.token.as_deref())?;
    let topics = query::topics(params.topics.as_deref(), ctx.session.max_topics)?;
    query::check_allowed(&principal, &topics)?;
    let since = params
        .since
        .as_deref()
        .map(|raw| query::position("since", raw))
        .transpose()?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(raw) => match query::position("limit", raw)? {
            n @ 1..=MAX_LIMIT => n,
            _ => {
                return Err(HttpError::bad_request(format!(
                    "limit must be between 1 and {MAX_LIMIT}"
                )));
            }
        },
    };

    // Without `since` a poll starts live, like a WebSocket or SSE subscription: no
    // events, and this replica's head to poll on from.
    let Some(since) = since else {
        return Ok(page(&[], ctx.hub.head(), false));
    };
    // Everything up to the hub's head has been read by this replica's tailer, so it is
    // all in the log: a read bounded by it is complete.
    let mut head = ctx.hub.head();
    if since > head {
        head = tokio::select! {
            head = ctx.hub.wait_for_head(since, ctx.session.catch_up_wait) => head,
            _ = ctx.shutdown.cancelled() => ctx.hub.head(),
        };
    }
    let too_old = |pruned| HttpError::SinceTooOld {
        head: replay::reset_head(&ctx.hub, pruned),
    };
    let after = match replay::start(&ctx.pool, since).await {
        Ok(after) => after,
        Err(ReadError::TooOld { pruned, .. }) => return Err(too_old(pruned)),
        Err(ReadError::Db(err)) => return Err(err.into()),
    };
    if after >= head {
        // Nothing to read. `after` beyond the head is either a `since` this replica has
        // not reached (reported as its real head, never echoed) or, for `since = 0`, a
        // retention mark past the head (where the log continues).
        let reported = if since > head { head } else { after.max(head) };
        return Ok(page(&[], reported, false));
    }
    let read = match replay::read_page(&ctx.pool, &ctx.mappings, &topics, after, head, limit).await
    {
        Ok(read) => read,
        Err(ReadError::TooOld { pruned, .. }) => return Err(too_old(pruned)),
        Err(ReadError::Db(err)) => return Err(err.into()),
    };
    Ok(page(&read.events, read.last, read.last < head))
}

/// `{"events":[<frame>,...],"head":H,"more":B}`, with the frames spliced in as they are.
fn page(events: &[std::sync::Arc<Published>], head: i64, more: bool) -> Response {
    let size: usize = events.iter().map(|e| e.frame.as_bytes().len() + 1).sum();
    let mut body = String::with_capacity(size + 40);
    body.push_str("{\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(event.frame.as_str());
    }
    body.push_str("],\"head\":");
    body.push_str(&head.to_string());
    body.push_str(if more {
        ",\"more\":true}"
    } else {
        ",\"more\":false}"
    });
    query::json(StatusCode::OK, body)
}
