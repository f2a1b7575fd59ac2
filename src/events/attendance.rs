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
