//! Events: what a captured change means, and the one wire frame every subscriber gets.
//!
//! A [`Change`] read from the log becomes an [`Event`] (its name, such as `row.updated`)
//! and is serialised once, by [`frame`], into the `event` message of the wire protocol.
//! Every session receives the same bytes.

pub mod generic;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::capture::log::{Change, Op};

pub use generic::RowEvent;

/// A typed event derived from a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A change to a table without a domain: `row.inserted`, `row.updated`, `row.deleted`.
    Row(RowEvent),
    /// The table was truncated: `table.truncated`.
    TableTruncated,
}

impl Event {
    /// Derives the event of a change. Never fails: a change without a more specific
    /// meaning is a generic row event.
    pub fn of(change: &Change) -> Event {
        match change.op {
            Op::Truncate => Event::TableTruncated,
            op => Event::Row(RowEvent::of(op)),
        }
    }

    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Row(row) => row.name(),
            Event::TableTruncated => "table.truncated",
        }
    }
}

/// The `event` message of the wire protocol, borrowed from a change.
#[derive(Serialize)]
struct WireEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    pos: i64,
    event: &'a str,
    table: &'a str,
    op: &'static str,
    topics: &'a [String],
    ts: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<&'a RawValue>,
}

/// Serialises a change as the wire protocol's `event` message, once for all sessions.
pub fn frame(change: &Change, event: &Event) -> String {
    let wire = WireEvent {
        kind: "event",
        pos: change.pos,
        event: event.name(),
        table: &change.table,
        op: change.op.as_str(),
        topics: &change.topics,
        ts: &change.ts,
        data: change.data.as_deref(),
        old: change.old.as_deref(),
    };
    // Serialising borrowed strings and already-valid JSON cannot fail.
    serde_json::to_string(&wire).expect("an event frame always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: Op, data: Option<&str>, old: Option<&str>) -> Change {
        Change {
            pos: 9_007_199_254_740_993,
            table: "bookings".into(),
            op,
            topics: vec!["bookings".into(), "booking:1".into()],
            ts: "2026-11-22T10:00:00.123Z".into(),
            data: data.map(|d| RawValue::from_string(d.into()).unwrap()),
            old: old.map(|d| RawValue::from_string(d.into()).unwrap()),
        }
    }

    #[test]
    fn frame_keeps_row_json_byte_for_byte() {
        let c = change(
            Op::Update,
            Some(r#"{"id": 9007199254740993, "amount": 12345678901234567890.123}"#),
            Some(r#"{"status": "PENDING"}"#),
        );
        let text = frame(&c, &Event::of(&c));
        assert_eq!(
            text,
            r#"{"type":"event","pos":9007199254740993,"event":"row.updated","table":"bookings","op":"UPDATE","topics":["bookings","booking:1"],"ts":"2026-11-22T10:00:00.123Z","data":{"id": 9007199254740993, "amount": 12345678901234567890.123},"old":{"status": "PENDING"}}"#
        );
    }

    #[test]
    fn truncate_frame_has_no_row() {
        let c = change(Op::Truncate, None, None);
        let text = frame(&c, &Event::of(&c));
        assert!(text.contains(r#""event":"table.truncated""#));
        assert!(!text.contains("data"));
    }
}
