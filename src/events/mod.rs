//! Events: what a captured change means, and the one wire frame every subscriber gets.
//!
//! A [`Change`] read from the log, with the [`Mapping`] it was captured with (if its
//! table has a domain), becomes an [`Event`]: a typed domain event of
//! [`attendance`], [`booking`] or [`course`], built through `TryFrom` of the change read
//! by field ([`fields::Captured`]), or a generic [`RowEvent`]. It is serialised once, by
//! [`frame`], into the `event` message of the wire protocol; every session receives the
//! same bytes. `data` and `old` are always the app's row exactly as captured, under its
//! own column names. `docs/events.md` lists every event.

pub mod attendance;
pub mod booking;
pub mod course;
pub mod fields;
pub mod generic;
pub mod mapping;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::capture::log::{Change, Op};

pub use attendance::AttendanceEvent;
pub use booking::BookingEvent;
pub use course::CourseEvent;
pub use generic::RowEvent;
pub use mapping::{Kind, MapError, Mapping, Mappings};

use fields::Captured;
use mapping::Domain;

/// A typed event derived from a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A change to a meeting, an attendance row or a court card.
    Attendance(AttendanceEvent),
    /// A change to a booking, a payment or a payout.
    Booking(BookingEvent),
    /// A change to a course.
    Course(CourseEvent),
    /// A change to a table without a domain, or a row its mapping cannot read:
    /// `row.inserted`, `row.updated`, `row.deleted`.
    Row(RowEvent),
    /// The table was truncated: `table.truncated`.
    TableTruncated,
}

impl TryFrom<&Captured<'_>> for Event {
    type Error = MapError;

    fn try_from(c: &Captured<'_>) -> Result<Event, MapError> {
        Ok(match c.kind.domain() {
            Domain::Attendance => Event::Attendance(c.try_into()?),
            Domain::Booking => Event::Booking(c.try_into()?),
            Domain::Course => Event::Course(c.try_into()?),
        })
    }
}

impl Event {
    /// Every event name, generic ones included.
    pub fn names() -> impl Iterator<Item = &'static str> {
        AttendanceEvent::NAMES
            .iter()
            .chain(BookingEvent::NAMES)
            .chain(CourseEvent::NAMES)
            .chain(RowEvent::NAMES)
            .chain(&["table.truncated"])
            .copied()
    }

    /// Derives the event of a change captured with `mapping`. Never fails: a change
    /// without a domain is a generic row event, and so is a row the mapping cannot
    /// read, which is counted and logged ([`mapping::unmapped_rows`]).
    pub fn of(change: &Change, mapping: Result<Option<&Mapping>, MapError>) -> Event {
        let generic = |change: &Change| match change.op {
            Op::Truncate => Event::TableTruncated,
            op => Event::Row(RowEvent::of(op)),
        };
        if change.op == Op::Truncate {
            return Event::TableTruncated;
        }
        let typed = mapping.and_then(|mapping| match mapping {
            Some(mapping) => Captured::new(change, mapping)
                .and_then(|c| Event::try_from(&c))
                .map(Some),
            None => Ok(None),
        });
        match typed {
            Ok(Some(event)) => event,
            Ok(None) => generic(change),
            Err(err) => {
                mapping::record_unmapped(change, &err);
                generic(change)
            }
        }
    }

    /// Whether the event is a domain event (its rows use the domain's field names).
    pub fn is_typed(&self) -> bool {
        matches!(
            self,
            Event::Attendance(_) | Event::Booking(_) | Event::Course(_)
        )
    }

    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Attendance(event) => event.name(),
            Event::Booking(event) => event.name(),
            Event::Course(event) => event.name(),
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
/// `data` and `old` are the app's rows exactly as captured, under the app's own column
/// names, whatever the event's domain.
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

/// Helpers for the unit tests of the domain modules.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A change of `table` with the given rows, captured with mapping 1.
    pub fn change(op: Op, data: Option<&str>, old: Option<&str>) -> Change {
        Change {
            pos: 7,
            table: "t".into(),
            op,
            topics: vec!["t".into()],
            ts: "2026-11-22T10:00:00.123Z".into(),
            data: data.map(|d| RawValue::from_string(d.into()).unwrap()),
            old: old.map(|d| RawValue::from_string(d.into()).unwrap()),
            mapping_id: Some(1),
        }
    }

    /// The typed event of a change to a table of `kind` whose columns are the field
    /// names, or why it cannot be read.
    pub fn typed(kind: Kind, op: Op, data: &str, old: Option<&str>) -> Result<Event, MapError> {
        let change = change(op, Some(data), old);
        let mapping = Mapping::identity(1, kind);
        let captured = Captured::new(&change, &mapping)?;
        Event::try_from(&captured)
    }

    /// The name of the event [`Event::of`] gives such a change (never fails).
    pub fn named(kind: Kind, op: Op, data: &str, old: Option<&str>) -> &'static str {
        let change = change(op, Some(data), old);
        let mapping = Mapping::identity(1, kind);
        Event::of(&change, Ok(Some(&mapping))).name()
    }
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
        }
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

    fn course_requests() -> Mapping {
        Mapping::new(
            3,
            Kind::Course,
            [
                ("id", "id"),
                ("status", "state"),
                ("instructor_id", "teacher_id"),
                ("scheduled_for", "starts_on"),
            ],
        )
    }

    #[test]
    fn a_typed_frame_keeps_the_apps_column_names_and_values_exact() {
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
        let Event::Course(CourseEvent::Completed(done)) = &event else {
            panic!("{event:?}")
        };
        assert_eq!(done.course.id.as_json(), "9007199254740993");
        assert_eq!(done.previous.as_ref().unwrap().as_str(), "SCHEDULED");
        assert_eq!(
            frame(&c, &event),
            r#"{"type":"event","pos":9007199254740993,"event":"course.completed","table":"course_requests","op":"UPDATE","topics":["bookings","booking:1"],"ts":"2026-11-22T10:00:00.123Z","data":{"id": 9007199254740993, "fee": 12345678901234567890.12, "state": "DONE", "starts_on": "2026-12-01", "teacher_id": 5},"old":{"state": "SCHEDULED"}}"#
        );
    }

    #[test]
    fn a_same_named_mapping_sends_rows_byte_for_byte() {
        let c = change(
            Op::Update,
            Some(r#"{"id": 1, "status": "CONFIRMED", "client_id": 7}"#),
            Some(r#"{"status": "PENDING"}"#),
        );
        let mapping = Mapping::identity(1, Kind::Booking);
        let event = Event::of(&c, Ok(Some(&mapping)));
        assert_eq!(event.name(), "booking.accepted");
        let text = frame(&c, &event);
        assert!(
            text.ends_with(r#""data":{"id": 1, "status": "CONFIRMED", "client_id": 7},"old":{"status": "PENDING"}}"#),
            "{text}"
        );
    }

    #[test]
    fn an_unreadable_row_is_delivered_as_row_event_with_its_columns_and_counted() {
        let before = mapping::unmapped_rows();
        // The status column is missing (excluded, or dropped since watch).
        let c = change(
            Op::Update,
            Some(r#"{"id": 1, "state": "X"}"#),
            Some(r#"{"state": "Y"}"#),
        );
        let mapping = course_requests();
        let event = Event::of(&c, Ok(Some(&mapping)));
        assert_eq!(event, Event::Row(RowEvent::Updated));
        let text = frame(&c, &event);
        assert!(text.contains(r#""data":{"id": 1, "state": "X"}"#), "{text}");
        // A mapping the service could not load: the same.
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
        mappings.insert(Mapping::identity(4, Kind::Booking));
        assert_eq!(
            mappings.for_change(&c).unwrap().unwrap().kind,
            Kind::Booking
        );
        c.mapping_id = None;
        assert!(mappings.for_change(&c).unwrap().is_none());
    }

    #[test]
    fn kinds_and_fields_match_the_sql_seed() {
        let sql = include_str!("../../migrations/V1__core.sql");
        let start = sql
            .find("insert into rowcast.domain_fields")
            .expect("the seed");
        let seed = &sql[start..start + sql[start..].find(";").unwrap()];
        let mut from_sql: Vec<String> = seed
            .lines()
            .filter_map(|line| line.trim().strip_prefix("('"))
            .map(|line| {
                line.trim_end_matches(',')
                    .trim_end_matches(')')
                    .replace(['\'', ' '], "")
            })
            .collect();
        let mut from_rust: Vec<String> = Kind::ALL
            .iter()
            .flat_map(|kind| {
                kind.fields()
                    .iter()
                    .map(move |f| format!("{kind},{},{},{}", f.name, f.required, f.class.as_str()))
            })
            .collect();
        from_sql.sort();
        from_rust.sort();
        assert_eq!(from_sql, from_rust);
    }

    /// An example frame of docs/events.md.
    #[derive(serde::Deserialize)]
    struct Example<'a> {
        pos: i64,
        event: String,
        table: String,
        op: String,
        topics: Vec<String>,
        ts: String,
        #[serde(borrow)]
        data: Option<&'a RawValue>,
        #[serde(borrow)]
        old: Option<&'a RawValue>,
    }

    /// The mapping the examples of a table were captured with.
    fn docs_mapping(table: &str) -> Option<Mapping> {
        let kind = match table {
            "meetings" => Kind::Meeting,
            "attendance" => Kind::Attendance,
            "court_cards" => Kind::CourtCard,
            "bookings" => Kind::Booking,
            "payments" => Kind::Payment,
            "payouts" => Kind::Payout,
            "courses" => Kind::Course,
            "course_requests" => {
                return Some(Mapping::new(
                    1,
                    Kind::Course,
                    [
                        ("id", "id"),
                        ("status", "state"),
                        ("instructor_id", "teacher_id"),
                        ("scheduled_for", "starts_on"),
                        ("organization_id", "org_id"),
                    ],
                ));
            }
            _ => return None,
        };
        Some(Mapping::identity(1, kind))
    }

    /// An example's row, as captured.
    fn captured_row(raw: Option<&RawValue>) -> Option<Box<RawValue>> {
        raw.map(|r| RawValue::from_string(r.get().to_string()).unwrap())
    }

    #[test]
    fn docs_examples_are_what_the_serialiser_sends() {
        let docs = include_str!("../../docs/events.md");
        let mut seen = std::collections::BTreeSet::new();
        for block in docs.split("```json\n").skip(1) {
            let text = block.split("\n```").next().unwrap();
            let example: Example =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            let mapping = docs_mapping(&example.table);
            let change = Change {
                pos: example.pos,
                table: example.table.clone(),
                op: Op::parse(&example.op).unwrap(),
                topics: example.topics.clone(),
                ts: example.ts.clone(),
                data: captured_row(example.data),
                old: captured_row(example.old),
                mapping_id: mapping.as_ref().map(|m| m.id),
            };
            let event = Event::of(&change, Ok(mapping.as_ref()));
            assert_eq!(event.name(), example.event, "{text}");
            assert_eq!(frame(&change, &event), text);
            seen.insert(example.event.clone());
        }
        let all: std::collections::BTreeSet<String> = Event::names().map(String::from).collect();
        assert_eq!(
            seen, all,
            "every event has an example, and no other name does"
        );
        for name in Event::names() {
            assert!(
                docs.contains(&format!("\n#### {name}\n")),
                "no section for {name}"
            );
        }
    }

    #[test]
    fn truncate_frame_has_no_row() {
        let c = change(Op::Truncate, None, None);
        let text = frame(&c, &Event::of(&c, Ok(None)));
        assert!(text.contains(r#""event":"table.truncated""#));
        assert!(!text.contains("data"));
    }
}
