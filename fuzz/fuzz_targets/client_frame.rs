//! Client text frames: arbitrary bytes, as UTF-8, through `protocol::parse`, and every
//! topic of a parsed (un)subscribe through `check_topic`.
//!
//! Invariants: nothing panics; only a JSON object is ever accepted; a parsed `since`
//! is non-negative; what was parsed agrees with a plain JSON reading of the text; a
//! topic accepted by `check_topic` has the documented shape, and the refusal of an
//! unknown type or a bad topic quotes a bounded part of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rowcast::serve::protocol::{self, ErrorCode, Incoming, MAX_TOPIC_LEN};
use serde_json::Value;

/// Longest refusal message: the fixed text plus at most 64 characters of the input,
/// quoted with `{:?}`, which writes a character as up to 10 bytes (`\u{10ffff}`).
const MAX_MESSAGE_LEN: usize = 200 + 64 * 10;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = protocol::parse(text);
    assert_eq!(parsed, protocol::parse(text), "parse is deterministic");
    let message = match parsed {
        Err(refusal) => {
            assert!(
                matches!(refusal.code, ErrorCode::BadRequest | ErrorCode::UnknownType),
                "parse refuses with bad_request or unknown_type, not {:?}",
                refusal.code
            );
            // The type is quoted truncated; a JSON error may quote more of the input
            // (serde_json's own message), which goes back to the same client only.
            if refusal.code == ErrorCode::UnknownType {
                assert!(
                    refusal.message.len() <= MAX_MESSAGE_LEN,
                    "refusal message of {} bytes",
                    refusal.message.len()
                );
            }
            return;
        }
        Ok(message) => message,
    };

    // Only a JSON object is a message (JSON whitespace is exactly these four).
    assert!(
        text.trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{'),
        "accepted a message that is not a JSON object: {text:?}"
    );
    // Where the text also reads as a plain JSON value (it may not: lone surrogate
    // escapes in ignored fields are skipped by `parse` but refused by `Value`), the
    // message must say what the object says.
    let plain = serde_json::from_str::<Value>(text).ok();
    if let Some(plain) = &plain {
        let object = plain.as_object().expect("an accepted message is an object");
        let kind = object.get("type").and_then(Value::as_str);
        let expected = match &message {
            Incoming::Subscribe { .. } => "subscribe",
            Incoming::Unsubscribe { .. } => "unsubscribe",
            Incoming::Ping => "ping",
            Incoming::Auth { .. } => "auth",
        };
        assert_eq!(kind, Some(expected));
    }

    let topics = match &message {
        Incoming::Subscribe { topics, since } => {
            if let Some(since) = since {
                assert!(*since >= 0, "since {since} is negative");
            }
            if let Some(plain) = &plain {
                match since {
                    Some(since) => assert_eq!(plain["since"].as_i64(), Some(*since)),
                    None => assert!(plain["since"].is_null()),
                }
            }
            topics
        }
        Incoming::Unsubscribe { topics } => topics,
        Incoming::Auth { token } => {
            if let Some(plain) = &plain {
                assert_eq!(plain["token"].as_str(), Some(token.as_str()));
            }
            return;
        }
        Incoming::Ping => return,
    };
    if let Some(plain) = &plain {
        let listed: Vec<&str> = plain["topics"]
            .as_array()
            .expect("topics is an array")
            .iter()
            .map(|t| t.as_str().expect("every topic is a string"))
            .collect();
        assert_eq!(listed, *topics);
    }
    for topic in topics {
        match protocol::check_topic(topic) {
            Ok(()) => {
                assert!(!topic.is_empty());
                assert!(topic.len() <= MAX_TOPIC_LEN);
                assert!(
                    !topic
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == ','),
                    "accepted topic {topic:?}"
                );
            }
            Err(refusal) => {
                assert_eq!(refusal.code, ErrorCode::BadRequest);
                assert!(
                    refusal.message.len() <= MAX_MESSAGE_LEN,
                    "refusal message of {} bytes",
                    refusal.message.len()
                );
            }
        }
    }
});
