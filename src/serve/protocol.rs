//! Wire protocol v1: the JSON messages a client sends and the server's replies
//! (the `event` message itself is built once per event in [`crate::events::frame`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest topic accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 200;

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Add topics; with `since`, replay the events after that position first.
    Subscribe {
        /// Topics to add.
        topics: Vec<String>,
        /// Exclusive position to resume after.
        since: Option<i64>,
    },
    /// Remove topics.
    Unsubscribe {
        /// Topics to remove.
        topics: Vec<String>,
    },
    /// Application-level ping; answered with `pong`.
    Ping,
    /// Replace the session's token.
    Auth {
        /// The new token.
        token: String,
    },
}

/// Error codes: of the `error` message, of HTTP error bodies, and of the refusals
/// metric, spelled one way everywhere ([`ErrorCode::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message is malformed or a value is invalid.
    BadRequest,
    /// The token does not allow this.
    Forbidden,
    /// The message's `type` is not known.
    UnknownType,
    /// The connection would hold more topics than allowed.
    TooManyTopics,
    /// Too many requests.
    RateLimited,
    /// The server cannot answer now (HTTP 503); retry later.
    Unavailable,
    /// No valid token (HTTP 401).
    Unauthorized,
    /// The browser's Origin is not allowed (HTTP 403).
    OriginNotAllowed,
    /// The server, or this address, holds as many connections as allowed.
    TooManyConnections,
    /// `/ws` is turned off (`session.websocket = false`).
    WebsocketDisabled,
    /// A request's headers did not arrive in time.
    HandshakeTimeout,
    /// A kept-alive connection stayed idle too long.
    IdleTimeout,
}

impl ErrorCode {
    /// The code as sent on the wire.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TooManyTopics => "too_many_topics",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::WebsocketDisabled => "websocket_disabled",
            ErrorCode::HandshakeTimeout => "handshake_timeout",
            ErrorCode::IdleTimeout => "idle_timeout",
        }
    }

    /// Every code.
    #[cfg(test)]
    pub(crate) const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::Forbidden,
        ErrorCode::UnknownType,
        ErrorCode::TooManyTopics,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Unauthorized,
        ErrorCode::OriginNotAllowed,
        ErrorCode::TooManyConnections,
        ErrorCode::WebsocketDisabled,
        ErrorCode::HandshakeTimeout,
        ErrorCode::IdleTimeout,
    ];
}

/// A client message that could not be accepted, with the error to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error code.
    pub code: ErrorCode,
    /// What was wrong, for a human.
    pub message: String,
}

impl Refusal {
    /// A `bad_request` refusal.
    pub(crate) fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal {
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: Option<Value>,
    topics: Option<Value>,
    since: Option<Value>,
    token: Option<Value>,
}

/// Parses a client text frame.
pub fn parse(text: &str) -> Result<Incoming, Refusal> {
    // A derived struct also deserialises from a JSON array of its fields in order
    // (`["ping",null,null,null]`); messages are objects only.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(Refusal::bad_request("the message is not a JSON object"));
    }
    let envelope: Envelope = serde_json::from_str(text)
        .map_err(|err| Refusal::bad_request(format!("the message is not a JSON object: {err}")))?;
    let kind = match envelope.kind {
        Some(Value::String(kind)) => kind,
        Some(_) => return Err(Refusal::bad_request("\"type\" must be a string")),
        None => return Err(Refusal::bad_request("the message has no \"type\"")),
    };
    match kind.as_str() {
        "subscribe" => Ok(Incoming::Subscribe {
            topics: topic_list(envelope.topics)?,
            since: since(envelope.since)?,
        }),
        "unsubscribe" => Ok(Incoming::Unsubscribe {
            topics: topic_list(envelope.topics)?,
        }),
        "ping" => Ok(Incoming::Ping),
        "auth" => match envelope.token {
            Some(Value::String(token)) => Ok(Incoming::Auth { token }),
            _ => Err(Refusal::bad_request("\"auth\" needs a \"token\" string")),
        },
        other => Err(Refusal {
            code: ErrorCode::UnknownType,
            message: format!(
                "unknown message type {:?}: expected subscribe, unsubscribe, ping or auth",
                truncate(other)
            ),
        }),
    }
}

fn topic_list(value: Option<Value>) -> Result<Vec<String>, Refusal> {
    let Some(Value::Array(items)) = value else {
        return Err(Refusal::bad_request(
            "\"topics\" must be an array of strings",
        ));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(topic) => Ok(topic),
            _ => Err(Refusal::bad_request(
                "\"topics\" must be an array of strings",
            )),
        })
        .collect()
}

fn since(value: Option<Value>) -> Result<Option<i64>, Refusal> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(p) if p >= 0 => Ok(Some(p)),
            _ => Err(Refusal::bad_request(
                "\"since\" must be a non-negative integer position",
            )),
        },
        Some(_) => Err(Refusal::bad_request(
            "\"since\" must be a non-negative integer position",
        )),
    }
}

/// Checks a topic's shape: non-empty, at most [`MAX_TOPIC_LEN`] bytes, no whitespace,
/// commas or control characters.
pub fn check_topic(topic: &str) -> Result<(), Refusal> {
    let ok = !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && !topic
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',');
    if ok {
        Ok(())
    } else {
        Err(Refusal::bad_request(format!(
            "topic {:?} is not valid: 1 to {MAX_TOPIC_LEN} bytes, no spaces, commas or control characters",
            truncate(topic)
        )))
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((idx, _)) => &s[..idx],
        None => s,
    }
}

/// A message from the server (other than `event`).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Outgoing<'a> {
    /// Topics added by a `subscribe`, and the head at that moment.
    Subscribed {
        /// What this request added.
        topics: &'a [String],
        /// The last position this replica had delivered.
        head: i64,
    },
    /// Topics removed by an `unsubscribe`.
    Unsubscribed {
        /// What this request removed.
        topics: &'a [String],
    },
    /// Answer to `ping`.
    Pong,
    /// Answer to an accepted `auth`: the new token's expiry.
    Authed {
        /// Expiry of the new token (Unix seconds).
        exp: Option<i64>,
    },
    /// A refused request; the connection stays open.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: &'a str,
    },
    /// `since` is older than what the log retains: refetch state, then go on live.
    Reset {
        /// Why (`since_too_old`).
        reason: &'a str,
        /// The head the live stream continues after.
        head: i64,
    },
}

impl Outgoing<'_> {
    /// Serialises the message.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a server message always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_is_a_label_of_the_refusals_metric_from_start() {
        let labels = crate::metrics::label_values(crate::metrics::REFUSALS);
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(labels, codes);
    }

    #[test]
    fn subscribe_with_since_parses() {
        assert_eq!(
            parse(r#"{"type":"subscribe","topics":["bookings","user:7"],"since":12}"#),
            Ok(Incoming::Subscribe {
                topics: vec!["bookings".into(), "user:7".into()],
                since: Some(12)
            })
        );
    }

    #[test]
    fn since_must_be_a_non_negative_integer() {
        for bad in [r#""12""#, "-1", "1.5", "true", "[1]"] {
            let text = format!(r#"{{"type":"subscribe","topics":["a"],"since":{bad}}}"#);
            assert_eq!(
                parse(&text).unwrap_err().code,
                ErrorCode::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_and_unknown_messages_are_refused_with_their_code() {
        assert_eq!(parse("{not json").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(parse("[]").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(
            parse(r#"{"topics":[]}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","topics":"a"}"#)
                .unwrap_err()
                .code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse(r#"{"type":"dance"}"#).unwrap_err().code,
            ErrorCode::UnknownType
        );
    }

    #[test]
    fn arrays_of_the_fields_are_not_messages() {
        for text in [
            r#"["subscribe",[],null,null]"#,
            r#" ["ping",null,null,null]"#,
            r#"["auth",null,null,"t"]"#,
        ] {
            assert_eq!(
                parse(text).unwrap_err().code,
                ErrorCode::BadRequest,
                "{text}"
            );
        }
        assert_eq!(parse(" \n{\"type\":\"ping\"}"), Ok(Incoming::Ping));
    }

    #[test]
    fn topics_with_spaces_or_commas_are_invalid() {
        assert!(check_topic("user:7").is_ok());
        assert!(check_topic("pair:1:2").is_ok());
        for bad in ["", "a b", "a,b", "a\nb", &"x".repeat(MAX_TOPIC_LEN + 1)] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_messages_have_the_documented_shape() {
        let topics = vec!["bookings".to_string()];
        assert_eq!(
            Outgoing::Subscribed {
                topics: &topics,
                head: 7
            }
            .to_json(),
            r#"{"type":"subscribed","topics":["bookings"],"head":7}"#
        );
        assert_eq!(
            Outgoing::Error {
                code: ErrorCode::TooManyTopics,
                message: "m"
            }
            .to_json(),
            r#"{"type":"error","code":"too_many_topics","message":"m"}"#
        );
        assert_eq!(Outgoing::Pong.to_json(), r#"{"type":"pong"}"#);
    }
}
