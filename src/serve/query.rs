//! What `/sse` and `/events` share: their query parameters and their JSON errors.
//!
//! Parameters arrive as strings and are checked here, so every bad value gets a 400 with
//! the same body as a WebSocket `error` message (`{"type":"error","code":...}`) instead
//! of a framework's plain-text rejection.

use axum::extract::rejection::QueryRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::protocol::{self, ErrorCode, Outgoing, Refusal};
use super::replay::SINCE_TOO_OLD;
use crate::db::DbError;

/// The query parameters of `/sse`, `/events` and `/snapshot` (others are ignored).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Params {
    /// Comma-separated topics: `topics=bookings,user:7`.
    pub(crate) topics: Option<String>,
    /// Exclusive position to resume after.
    pub(crate) since: Option<String>,
    /// Most events per response (`/events` only).
    pub(crate) limit: Option<String>,
    /// `/snapshot` only: where the next page starts, as the previous page gave it.
    pub(crate) cursor: Option<String>,
    /// The token, for clients that cannot send `Authorization` (may reach proxy logs).
    pub(crate) token: Option<String>,
    /// `/sse` only: `unnamed=1` sends events without an `event:` field, so that an
    /// EventSource delivers every event, whatever its name, to `onmessage`.
    pub(crate) unnamed: Option<String>,
}

/// Why an HTTP request was answered with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// A parameter is missing or invalid: 400.
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// `since` is older than what the log retains: 410 with a `reset` body.
    #[error("since is older than what the log retains")]
    SinceTooOld {
        /// Where the client continues after refetching its state.
        head: i64,
    },
    /// Refused before anything was read: origin, token, limits (401, 403, 429, 503).
    #[error("request refused")]
    Admission(super::admission::HttpRefusal),
    /// The database failed: 503 (the cause is logged, not sent).
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<super::admission::HttpRefusal> for HttpError {
    fn from(refusal: super::admission::HttpRefusal) -> Self {
        HttpError::Admission(refusal)
    }
}

/// Refuses (403) the first topic the principal may not follow.
pub(crate) fn check_allowed(
    principal: &super::auth::Principal,
    topics: &[String],
) -> Result<(), HttpError> {
    match topics.iter().find(|t| !principal.allows(t)) {
        None => Ok(()),
        Some(topic) => Err(HttpError::Admission(super::admission::HttpRefusal::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("topic {topic} is not allowed for this token"),
        ))),
    }
}

impl HttpError {
    /// A 400 with code `bad_request`.
    pub(crate) fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::Refused(Refusal::bad_request(message))
    }

    /// A 400 for query parameters that could not be decoded.
    pub(crate) fn from_rejection(rejection: QueryRejection) -> HttpError {
        HttpError::bad_request(format!(
            "invalid query parameters: {}",
            rejection.body_text()
        ))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            HttpError::Admission(refusal) => return refusal.into_response(),
            HttpError::Refused(refusal) => (
                StatusCode::BAD_REQUEST,
                Outgoing::Error {
                    code: refusal.code,
                    message: &refusal.message,
                }
                .to_json(),
            ),
            HttpError::SinceTooOld { head } => (
                StatusCode::GONE,
                Outgoing::Reset {
                    reason: SINCE_TOO_OLD,
                    head,
                }
                .to_json(),
            ),
            HttpError::Db(err) => {
                tracing::warn!(error = %err, "request failed: database error");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Outgoing::Error {
                        code: ErrorCode::Unavailable,
                        message: "the database is unavailable; retry later",
                    }
                    .to_json(),
                )
            }
        };
        json(status, body)
    }
}

/// A JSON response that caches must not keep.
pub(crate) fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Parses `topics=a,b`: required, each a valid topic, duplicates folded, at most `max`.
pub(crate) fn topics(raw: Option<&str>, max: usize) -> Result<Vec<String>, HttpError> {
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        return Err(HttpError::bad_request(
            "topics is required: ?topics=bookings,user:7",
        ));
    }
    let mut topics: Vec<String> = Vec::new();
    for topic in raw.split(',') {
        protocol::check_topic(topic).map_err(HttpError::Refused)?;
        if !topics.iter().any(|t| t == topic) {
            topics.push(topic.to_string());
        }
    }
    if topics.len() > max {
        return Err(HttpError::Refused(Refusal {
            code: ErrorCode::TooManyTopics,
            message: format!("a request may name at most {max} topics"),
        }));
    }
    Ok(topics)
}

/// Parses a non-negative integer parameter (`since`, `limit`, `Last-Event-ID`).
pub(crate) fn position(name: &str, raw: &str) -> Result<i64, HttpError> {
    match raw.trim().parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => Err(HttpError::bad_request(format!(
            "{name} must be a non-negative integer position"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_split_checked_and_deduplicated() {
        assert_eq!(
            topics(Some("bookings,user:7,bookings"), 10).unwrap(),
            vec!["bookings".to_string(), "user:7".to_string()]
        );
        for bad in [None, Some(""), Some("a,,b"), Some("a b"), Some("a,")] {
            assert!(topics(bad, 10).is_err(), "{bad:?}");
        }
        assert!(matches!(
            topics(Some("a,b,c"), 2),
            Err(HttpError::Refused(Refusal {
                code: ErrorCode::TooManyTopics,
                ..
            }))
        ));
    }

    #[test]
    fn positions_are_non_negative_integers() {
        assert_eq!(position("since", "12").unwrap(), 12);
        assert_eq!(position("since", "0").unwrap(), 0);
        for bad in ["-1", "1.5", "x", "", "99999999999999999999"] {
            assert!(position("since", bad).is_err(), "{bad:?}");
        }
    }
}
