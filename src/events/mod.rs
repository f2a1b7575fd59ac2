//! Events: what a captured change means, and the one wire frame every subscriber gets.
//!
//! A [`Change`] read from the log, with the event rules its table was watched with
//! ([`Mapping`], from [`rules`]), becomes an [`Event`]: the name of the first rule that
//! holds, or a generic `row.*` name. It is serialised once, by [`frame`], into the
//! `event` message of the wire protocol; every session receives the same bytes. `data`
//! and `old` are always the app's row exactly as captured, under its own column names.
//! `docs/events.md` lists the rule language and the presets.

pub(crate) mod change;
pub mod mapping;
pub(crate) mod rules;

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

pub use change::{Change, Op};
pub use mapping::{MapError, Mapping, Mappings};
pub use rules::{Rule, When};

/// The event of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A rule of the table's registration named it (`booking.accepted`).
    Named(Arc<str>),
    /// No rule named it, the table has none, or its row could not be read through them:
    /// `row.inserted`, `row.updated`, `row.deleted`.
    Row(Op),
    /// The table was truncated: `table.truncated`.
    TableTruncated,
    /// An UPDATE moved the row off this topic (a routing value or its key changed): the
    /// topic gets `row.left` with the row's key only.
    Left,
}

/// What `rowcast.publish()` stores beside an application's payload.
#[derive(serde::Deserialize)]
struct Published<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
}

impl Event {
    /// The generic event names.
    pub const GENERIC: [&'static str; 4] = [
        "row.inserted",
        "row.updated",
        "row.deleted",
        "table.truncated",
    ];

    /// Derives the event of a change captured with `mapping`. Never fails: a change
    /// without rules, or that no rule names, is a generic row event, and so is a row the
    /// rules cannot read, which is counted and logged ([`mapping::unmapped_rows`]).
    pub fn of(change: &Change, mapping: Result<Option<&Mapping>, MapError>) -> Event {
        match change.op {
            Op::Truncate => return Event::TableTruncated,
            Op::Publish => {
                // The name the application gave, checked when it was stored.
                let name = change.old.as_deref().and_then(|meta| {
                    serde_json::from_str::<Published>(meta.get())
                        .ok()
                        .map(|p| p.event)
                });
                return match name {
                    Some(name) if mapping::is_event_name(&name) => {
                        Event::Named(Arc::from(name.as_ref()))
                    }
                    Some(name) => {
                        let err = MapError::NotAnEventName(name.into_owned());
                        mapping::record_unmapped(change, &err);
                        Event::Row(Op::Publish)
                    }
                    None => {
                        mapping::record_unmapped(change, &MapError::NotAnObject);
                        Event::Row(Op::Publish)
                    }
                };
            }
            _ => {}
        }
        let named = mapping.and_then(|mapping| match mapping {
            Some(mapping) => mapping.event_of(change).map(|name| name.cloned()),
            None => Ok(None),
        });
        match named {
            Ok(Some(name)) if mapping::is_event_name(&name) => Event::Named(name),
            Ok(Some(name)) => {
                mapping::record_unmapped(change, &MapError::NotAnEventName(name.to_string()));
                Event::Row(change.op)
            }
            Ok(None) => Event::Row(change.op),
            Err(err) => {
                mapping::record_unmapped(change, &err);
                Event::Row(change.op)
            }
        }
    }

    /// The event's name on the wire.
    pub fn name(&self) -> &str {
        match self {
            Event::Named(name) => name,
            Event::Row(Op::Insert) => "row.inserted",
            Event::Row(Op::Update) => "row.updated",
            Event::Row(Op::Delete) => "row.deleted",
            Event::Row(Op::Truncate) | Event::TableTruncated => "table.truncated",
            Event::Row(Op::Publish) => "event.published",
            Event::Left => "row.left",
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
    table: Option<&'a str>,
    op: &'static str,
    topics: &'a [String],
    ts: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<&'a RawValue>,
}

/// Serialises a change as the wire protocol's `event` message, once for all sessions.
/// `data` and `old` are the app's rows exactly as captured, under the app's own column
/// names, whatever rules named the event. An application's own event has no table
/// (`null`) and no `old`; its `data` is the payload as published.
pub fn frame(change: &Change, event: &Event) -> String {
    let published = change.op == Op::Publish;
    let wire = WireEvent {
        kind: "event",
        pos: change.pos,
        event: event.name(),
        table: (!published).then_some(change.table.as_str()),
        op: change.op.as_str(),
        topics: &change.topics,
        ts: &change.ts,
        data: change.data.as_deref(),
        old: if published {
            None
        } else {
            change.old.as_deref()
        },
    };
    // Serialising borrowed strings and already-valid JSON cannot fail.
    serde_json::to_string(&wire).expect("an event frame always serialises")
}

/// The topics an UPDATE moved the row off, and the `row.left` message they get instead of
/// the row: `data` is the row's key as it was, `topics` only the topics it left, no
/// `old`. `None` when every topic of the change gets the whole event.
pub fn left_frame(change: &Change) -> Option<(Vec<String>, String)> {
    let kept = change.kept?;
    let left = change.topics.get(kept..).filter(|left| !left.is_empty())?;
    // A table without a primary key has no key to send.
    let empty;
    let key = match change.left_key.as_deref() {
        Some(key) => key,
        None => {
            empty = RawValue::from_string("{}".into()).expect("{} is JSON");
            &*empty
        }
    };
    let wire = WireEvent {
        kind: "event",
        pos: change.pos,
        event: Event::Left.name(),
        table: Some(change.table.as_str()),
        op: change.op.as_str(),
        topics: left,
        ts: &change.ts,
        data: Some(key),
        old: None,
    };
    let text = serde_json::to_string(&wire).expect("an event frame always serialises");
    Some((left.to_vec(), text))
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
            mapping_id: None,
            kept: None,
            left_key: None,
        }
    }

    /// The rules of a `course_requests` table whose status is `state`.
    fn course_requests() -> Mapping {
        Mapping::new(
            3,
            vec![
                Rule::new("course.requested", When::Op(Op::Insert)),
                Rule::new(
                    "course.completed",
                    When::Becomes("state".into(), vec!["completed".into(), "done".into()]),
                ),
                Rule::new("course.assigned", When::BecomesAny("teacher_id".into())),
                Rule::new("course.updated", When::Op(Op::Update)),
            ],
        )
    }

    #[test]
    fn a_stored_event_name_that_is_not_one_is_sent_as_event_published_and_counted() {
        let before = mapping::unmapped_rows();
        let named = change(
            Op::Publish,
            Some("{}"),
            Some(r#"{"topic": "user:7", "event": "stats.updated_2"}"#),
        );
        assert_eq!(Event::of(&named, Ok(None)).name(), "stats.updated_2");
        for bad in [
            "a\ndata: x",
            "a..b",
            ".a",
            "a-b",
            "",
            "reset",
            "subscribed",
            &"x".repeat(101),
        ] {
            let meta = serde_json::json!({"topic": "user:7", "event": bad}).to_string();
            let c = change(Op::Publish, Some("{}"), Some(&meta));
            assert_eq!(Event::of(&c, Ok(None)).name(), "event.published", "{bad:?}");
        }
        assert!(mapping::unmapped_rows() >= before + 8);
    }

    #[test]
    fn frame_keeps_row_json_byte_for_byte() {
        let c = change(
            Op::Update,
            Some(r#"{"id": 9007199254740993, "amount": 12345678901234567890.123}"#),
            Some(r#"{"status": "PENDING"}"#),
        );
        let text = frame(&c, &Event::of(&c, Ok(None)));
        assert_eq!(
            text,
            r#"{"type":"event","pos":9007199254740993,"event":"row.updated","table":"bookings","op":"UPDATE","topics":["bookings","booking:1"],"ts":"2026-11-22T10:00:00.123Z","data":{"id": 9007199254740993, "amount": 12345678901234567890.123},"old":{"status": "PENDING"}}"#
        );
    }

    #[test]
    fn a_named_frame_keeps_the_apps_column_names_and_values_exact() {
        let mut c = change(
            Op::Update,
            Some(
                r#"{"id": 9007199254740993, "fee": 12345678901234567890.12, "state": "DONE", "starts_on": "2026-12-01", "teacher_id": 5}"#,
            ),
            Some(r#"{"state": "SCHEDULED"}"#),
        );
        c.table = "course_requests".into();
        let mapping = course_requests();
        let event = Event::of(&c, Ok(Some(&mapping)));
        assert_eq!(event.name(), "course.completed");
        assert_eq!(
            frame(&c, &event),
            r#"{"type":"event","pos":9007199254740993,"event":"course.completed","table":"course_requests","op":"UPDATE","topics":["bookings","booking:1"],"ts":"2026-11-22T10:00:00.123Z","data":{"id": 9007199254740993, "fee": 12345678901234567890.12, "state": "DONE", "starts_on": "2026-12-01", "teacher_id": 5},"old":{"state": "SCHEDULED"}}"#
        );
    }

    #[test]
    fn the_first_rule_that_holds_names_the_event_and_none_gives_a_generic_name() {
        let mapping = course_requests();
        let named = |op, data, old| Event::of(&change(op, Some(data), old), Ok(Some(&mapping)));
        // Completion comes before a new teacher in the same update.
        let both = named(
            Op::Update,
            r#"{"state": "done", "teacher_id": 8}"#,
            Some(r#"{"state": "open", "teacher_id": 7}"#),
        );
        assert_eq!(both.name(), "course.completed");
        let teacher = named(
            Op::Update,
            r#"{"state": "open", "teacher_id": 8}"#,
            Some(r#"{"teacher_id": null}"#),
        );
        assert_eq!(teacher.name(), "course.assigned");
        let other = named(
            Op::Update,
            r#"{"state": "open", "teacher_id": 8}"#,
            Some("{}"),
        );
        assert_eq!(other.name(), "course.updated");
        // No rule for DELETE: the generic name.
        let deleted = named(Op::Delete, r#"{"state": "open", "teacher_id": 8}"#, None);
        assert_eq!(deleted, Event::Row(Op::Delete));
        assert_eq!(deleted.name(), "row.deleted");
    }

    #[test]
    fn an_unreadable_row_is_delivered_as_row_event_with_its_columns_and_counted() {
        let before = mapping::unmapped_rows();
        // The teacher column, which a rule reads, is missing (dropped since watch).
        let c = change(
            Op::Update,
            Some(r#"{"id": 1, "state": "X"}"#),
            Some(r#"{"state": "Y"}"#),
        );
        let mapping = course_requests();
        assert_eq!(
            mapping.event_of(&c).unwrap_err(),
            MapError::Missing {
                column: "teacher_id".into(),
                event: "course.assigned".into()
            }
        );
        let event = Event::of(&c, Ok(Some(&mapping)));
        assert_eq!(event, Event::Row(Op::Update));
        let text = frame(&c, &event);
        assert!(text.contains(r#""data":{"id": 1, "state": "X"}"#), "{text}");
        // Rules the service could not load: the same.
        let event = Event::of(&c, Err(MapError::UnknownMapping(9)));
        assert_eq!(event.name(), "row.updated");
        assert!(mapping::unmapped_rows() >= before + 2);
    }

    #[test]
    fn an_unknown_mapping_id_is_an_error_not_a_panic() {
        let mappings = Mappings::new();
        let mut c = change(Op::Insert, Some(r#"{"id": 1}"#), None);
        c.mapping_id = Some(4);
        assert_eq!(
            mappings.for_change(&c).unwrap_err(),
            MapError::UnknownMapping(4)
        );
        mappings.insert(Mapping::new(
            4,
            vec![Rule::new("a.b", When::Op(Op::Insert))],
        ));
        assert_eq!(
            Event::of(
                &c,
                mappings
                    .for_change(&c)
                    .as_ref()
                    .map(Option::as_deref)
                    .map_err(Clone::clone)
            ),
            Event::Named("a.b".into())
        );
        c.mapping_id = None;
        assert!(mappings.for_change(&c).unwrap().is_none());
    }

    #[test]
    fn truncate_frame_has_no_row() {
        let c = change(Op::Truncate, None, None);
        let text = frame(&c, &Event::of(&c, Ok(None)));
        assert!(text.contains(r#""event":"table.truncated""#));
        assert!(!text.contains("data"));
    }
}
