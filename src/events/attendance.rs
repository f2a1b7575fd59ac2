//! The attendance domain: meetings, who attended them, and the court cards issued.
//!
//! A [`Captured`] change of a table mapped as `meeting`, `attendance` or `court_card`
//! becomes an [`AttendanceEvent`] through `TryFrom`. Meetings and attendance are named
//! after their time columns: `started_at` / `ended_at` set is `meeting.started` /
//! `meeting.ended`, an attendance row inserted is `participant.joined` and its `left_at`
//! set is `participant.left`.

use crate::capture::log::Op;
use crate::events::fields::{Captured, Id, Status, Time};
use crate::events::mapping::{Kind, MapError};

/// A meeting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Meeting {
    /// The meeting's id.
    pub id: Id,
    /// When it started (`None`: not yet).
    pub started_at: Option<Time>,
    /// When it ended (`None`: not yet).
    pub ended_at: Option<Time>,
    /// The court representative in charge, when the table has the field.
    pub court_rep_id: Option<Id>,
    /// The organization holding it, when the table has the field.
    pub organization_id: Option<Id>,
}

/// One participant's attendance at a meeting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attendance {
    /// The attendance row's id.
    pub id: Id,
    /// The meeting.
    pub meeting_id: Option<Id>,
    /// The participant.
    pub participant_id: Option<Id>,
    /// When they joined, when the table has the field.
    pub joined_at: Option<Time>,
    /// When they left (`None`: still there).
    pub left_at: Option<Time>,
    /// The app's attendance status, when the table has the field.
    pub status: Option<Status>,
}

/// A court card issued to a participant of a meeting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CourtCard {
    /// The card's id.
    pub id: Id,
    /// The meeting.
    pub meeting_id: Option<Id>,
    /// The participant.
    pub participant_id: Option<Id>,
    /// The court representative.
    pub court_rep_id: Option<Id>,
    /// The card's status (ISSUED, SIGNED, VOID in the demo).
    pub status: Option<Status>,
}

/// An event of the attendance domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttendanceEvent {
    /// `meeting.created`: a meeting was inserted.
    MeetingCreated(Meeting),
    /// `meeting.started`: `started_at` went from null to a time.
    MeetingStarted(Meeting),
    /// `meeting.ended`: `ended_at` went from null to a time.
    MeetingEnded(Meeting),
    /// `meeting.updated`: any other update.
    MeetingUpdated(Meeting),
    /// `meeting.deleted`: a meeting was deleted.
    MeetingDeleted(Meeting),
    /// `participant.joined`: an attendance row was inserted.
    ParticipantJoined(Attendance),
    /// `participant.left`: `left_at` went from null to a time.
    ParticipantLeft(Attendance),
    /// `attendance.updated`: any other update of an attendance row.
    AttendanceUpdated(Attendance),
    /// `attendance.deleted`: an attendance row was deleted.
    AttendanceDeleted(Attendance),
    /// `court_card.created`: a court card was issued.
    CourtCardCreated(CourtCard),
    /// `court_card.updated`: a court card changed (signed, voided, ...).
    CourtCardUpdated(CourtCard),
    /// `court_card.deleted`: a court card was deleted.
    CourtCardDeleted(CourtCard),
}

impl AttendanceEvent {
    /// Every event name of the domain.
    pub const NAMES: &'static [&'static str] = &[
        "meeting.created",
        "meeting.started",
        "meeting.ended",
        "meeting.updated",
        "meeting.deleted",
        "participant.joined",
        "participant.left",
        "attendance.updated",
        "attendance.deleted",
        "court_card.created",
        "court_card.updated",
        "court_card.deleted",
    ];

    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            AttendanceEvent::MeetingCreated(_) => "meeting.created",
            AttendanceEvent::MeetingStarted(_) => "meeting.started",
            AttendanceEvent::MeetingEnded(_) => "meeting.ended",
            AttendanceEvent::MeetingUpdated(_) => "meeting.updated",
            AttendanceEvent::MeetingDeleted(_) => "meeting.deleted",
            AttendanceEvent::ParticipantJoined(_) => "participant.joined",
            AttendanceEvent::ParticipantLeft(_) => "participant.left",
            AttendanceEvent::AttendanceUpdated(_) => "attendance.updated",
            AttendanceEvent::AttendanceDeleted(_) => "attendance.deleted",
            AttendanceEvent::CourtCardCreated(_) => "court_card.created",
            AttendanceEvent::CourtCardUpdated(_) => "court_card.updated",
            AttendanceEvent::CourtCardDeleted(_) => "court_card.deleted",
        }
    }
}

fn meeting(c: &Captured<'_>) -> Result<Meeting, MapError> {
    Ok(Meeting {
        id: c.row.id("id")?,
        started_at: c.row.time("started_at")?,
        ended_at: c.row.time("ended_at")?,
        court_rep_id: c.row.opt_id("court_rep_id")?,
        organization_id: c.row.opt_id("organization_id")?,
    })
}

fn attendance(c: &Captured<'_>) -> Result<Attendance, MapError> {
    Ok(Attendance {
        id: c.row.id("id")?,
        meeting_id: c.row.nullable_id("meeting_id")?,
        participant_id: c.row.nullable_id("participant_id")?,
        joined_at: c.row.opt_time("joined_at")?,
        left_at: c.row.time("left_at")?,
        status: c.row.opt_status("status")?,
    })
}

fn court_card(c: &Captured<'_>) -> Result<CourtCard, MapError> {
    Ok(CourtCard {
        id: c.row.id("id")?,
        meeting_id: c.row.opt_id("meeting_id")?,
        participant_id: c.row.opt_id("participant_id")?,
        court_rep_id: c.row.opt_id("court_rep_id")?,
        status: c.row.opt_status("status")?,
    })
}

impl TryFrom<&Captured<'_>> for AttendanceEvent {
    type Error = MapError;

    fn try_from(c: &Captured<'_>) -> Result<AttendanceEvent, MapError> {
        use AttendanceEvent as E;
        Ok(match (c.kind, c.op) {
            (Kind::Meeting, Op::Insert) => E::MeetingCreated(meeting(c)?),
            (Kind::Meeting, Op::Update) => {
                let row = meeting(c)?;
                // Both set at once: the meeting is over, which says more.
                if c.was_set("ended_at") {
                    E::MeetingEnded(row)
                } else if c.was_set("started_at") {
                    E::MeetingStarted(row)
                } else {
                    E::MeetingUpdated(row)
                }
            }
            (Kind::Meeting, _) => E::MeetingDeleted(meeting(c)?),
            (Kind::Attendance, Op::Insert) => E::ParticipantJoined(attendance(c)?),
            (Kind::Attendance, Op::Update) => {
                let row = attendance(c)?;
                if c.was_set("left_at") {
                    E::ParticipantLeft(row)
                } else {
                    E::AttendanceUpdated(row)
                }
            }
            (Kind::Attendance, _) => E::AttendanceDeleted(attendance(c)?),
            (Kind::CourtCard, Op::Insert) => E::CourtCardCreated(court_card(c)?),
            (Kind::CourtCard, Op::Update) => E::CourtCardUpdated(court_card(c)?),
            (Kind::CourtCard, _) => E::CourtCardDeleted(court_card(c)?),
            (kind, _) => return Err(MapError::OtherDomain(kind)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use crate::events::testing::{named, typed};

    const T: &str = "\"2026-11-22T10:00:00+00:00\"";
    const T2: &str = "\"2026-11-22T11:00:00+00:00\"";

    fn meeting_row(started: &str, ended: &str) -> String {
        format!(
            r#"{{"id": 5, "title": "m", "court_rep_id": 2, "organization_id": 3, "started_at": {started}, "ended_at": {ended}}}"#
        )
    }

    #[test]
    fn meeting_time_columns_name_the_event() {
        let m = |started: &str, ended: &str, old: &str| {
            named(
                Kind::Meeting,
                Op::Update,
                &meeting_row(started, ended),
                Some(old),
            )
        };
        assert_eq!(m(T, "null", r#"{"started_at": null}"#), "meeting.started");
        assert_eq!(m(T, T2, r#"{"ended_at": null}"#), "meeting.ended");
        assert_eq!(
            m(T, T2, r#"{"started_at": null, "ended_at": null}"#),
            "meeting.ended"
        );
        // moved, cleared, or another column: an update
        assert_eq!(
            m(T2, "null", &format!(r#"{{"started_at": {T}}}"#)),
            "meeting.updated"
        );
        assert_eq!(
            m("null", "null", &format!(r#"{{"started_at": {T}}}"#)),
            "meeting.updated"
        );
        assert_eq!(m(T, "null", r#"{"title": "old"}"#), "meeting.updated");
        let row = meeting_row("null", "null");
        assert_eq!(
            named(Kind::Meeting, Op::Insert, &row, None),
            "meeting.created"
        );
        assert_eq!(
            named(Kind::Meeting, Op::Delete, &row, None),
            "meeting.deleted"
        );
    }

    #[test]
    fn a_started_meeting_carries_its_times_and_people() {
        let event = typed(
            Kind::Meeting,
            Op::Update,
            &meeting_row(T, "null"),
            Some(r#"{"started_at": null}"#),
        )
        .unwrap();
        let Event::Attendance(AttendanceEvent::MeetingStarted(m)) = event else {
            panic!("{event:?}")
        };
        assert_eq!(m.started_at.unwrap().as_str(), "2026-11-22T10:00:00+00:00");
        assert_eq!(m.ended_at, None);
        assert_eq!(m.court_rep_id.unwrap().as_json(), "2");
    }

    fn attendance_row(left: &str) -> String {
        format!(
            r#"{{"id": 1, "meeting_id": 5, "participant_id": 11, "joined_at": {T}, "left_at": {left}, "minutes": 0, "status": "JOINED"}}"#
        )
    }

    #[test]
    fn attendance_inserts_join_and_left_at_set_leaves() {
        let a = |left: &str, old: Option<&str>, op: Op| {
            named(Kind::Attendance, op, &attendance_row(left), old)
        };
        assert_eq!(a("null", None, Op::Insert), "participant.joined");
        assert_eq!(
            a(
                T2,
                Some(r#"{"left_at": null, "status": "JOINED"}"#),
                Op::Update
            ),
            "participant.left"
        );
        assert_eq!(
            a("null", Some(&format!(r#"{{"left_at": {T2}}}"#)), Op::Update),
            "attendance.updated"
        );
        assert_eq!(
            a(T2, Some(r#"{"minutes": 3}"#), Op::Update),
            "attendance.updated"
        );
        assert_eq!(a(T2, None, Op::Delete), "attendance.deleted");
        let event = typed(Kind::Attendance, Op::Insert, &attendance_row("null"), None).unwrap();
        let Event::Attendance(AttendanceEvent::ParticipantJoined(row)) = event else {
            panic!("{event:?}")
        };
        assert_eq!(row.participant_id.unwrap().as_json(), "11");
        assert_eq!(row.left_at, None);
    }

    #[test]
    fn court_cards_are_created_updated_deleted() {
        let card = r#"{"id": 1, "meeting_id": 5, "participant_id": 11, "court_rep_id": 2, "status": "ISSUED"}"#;
        assert_eq!(
            named(Kind::CourtCard, Op::Insert, card, None),
            "court_card.created"
        );
        assert_eq!(
            named(
                Kind::CourtCard,
                Op::Update,
                card,
                Some(r#"{"status": "SIGNED"}"#)
            ),
            "court_card.updated"
        );
        assert_eq!(
            named(Kind::CourtCard, Op::Delete, card, None),
            "court_card.deleted"
        );
        // Optional fields may be missing altogether.
        assert_eq!(
            named(Kind::CourtCard, Op::Insert, r#"{"id": 1}"#, None),
            "court_card.created"
        );
    }

    #[test]
    fn unreadable_attendance_rows_become_row_events() {
        // left_at is required: missing, or not a string
        let missing = r#"{"id": 1, "meeting_id": 5, "participant_id": 11}"#;
        assert_eq!(
            named(Kind::Attendance, Op::Insert, missing, None),
            "row.inserted"
        );
        let number = r#"{"id": 1, "meeting_id": 5, "participant_id": 11, "left_at": 5}"#;
        assert_eq!(
            named(Kind::Attendance, Op::Update, number, Some("{}")),
            "row.updated"
        );
        // NULL meeting and participant are readable
        let nulls = r#"{"id": 1, "meeting_id": null, "participant_id": null, "left_at": null}"#;
        assert_eq!(
            named(Kind::Attendance, Op::Delete, nulls, None),
            "attendance.deleted"
        );
    }
}
