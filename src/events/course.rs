//! The course domain: courses requested by organizations and given by instructors.
//!
//! A [`Captured`] change of a table mapped as `course` becomes a [`CourseEvent`] through
//! `TryFrom`. An update is named by the first rule that holds, in this order: the status
//! became completed (`course.completed`) or cancelled (`course.cancelled`), the
//! instructor was set or changed (`course.assigned`), the scheduled date was set or
//! changed (`course.rescheduled`); otherwise it is `course.updated`.

use crate::capture::log::Op;
use crate::events::fields::{Captured, Id, Status, StatusClass, Time};
use crate::events::mapping::{Kind, MapError};

/// A course.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Course {
    /// The course's id.
    pub id: Id,
    /// Its status (REQUESTED, ASSIGNED, SCHEDULED, COMPLETED, CANCELLED in the demo).
    pub status: Option<Status>,
    /// The instructor (`None`: not assigned yet).
    pub instructor_id: Option<Id>,
    /// When it is scheduled (`None`: not scheduled yet).
    pub scheduled_for: Option<Time>,
    /// The organization that requested it, when the table has the field.
    pub organization_id: Option<Id>,
    /// Who requested it, when the table has the field.
    pub requested_by: Option<Id>,
}

/// A course whose status changed to completed or cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CourseStatusChange {
    /// The course after the change.
    pub course: Course,
    /// The status before it.
    pub previous: Option<Status>,
}

/// A course whose instructor was set or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CourseAssigned {
    /// The course after the change; `instructor_id` is set.
    pub course: Course,
    /// The instructor before (`None`: there was none).
    pub previous_instructor_id: Option<Id>,
}

/// A course whose scheduled date was set or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CourseRescheduled {
    /// The course after the change; `scheduled_for` is set.
    pub course: Course,
    /// The date before (`None`: it was not scheduled).
    pub previous_scheduled_for: Option<Time>,
}

/// An event of the course domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CourseEvent {
    /// `course.requested`: a course was inserted.
    Requested(Course),
    /// `course.assigned`: the instructor was set or changed.
    Assigned(CourseAssigned),
    /// `course.rescheduled`: the scheduled date was set or changed.
    Rescheduled(CourseRescheduled),
    /// `course.completed`: the status became COMPLETED or DONE.
    Completed(CourseStatusChange),
    /// `course.cancelled`: the status became CANCELLED or CANCELED.
    Cancelled(CourseStatusChange),
    /// `course.updated`: any other update.
    Updated(Course),
    /// `course.deleted`: a course was deleted.
    Deleted(Course),
}

impl CourseEvent {
    /// Every event name of the domain.
    pub const NAMES: &'static [&'static str] = &[
        "course.requested",
        "course.assigned",
        "course.rescheduled",
        "course.completed",
        "course.cancelled",
        "course.updated",
        "course.deleted",
    ];

    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            CourseEvent::Requested(_) => "course.requested",
            CourseEvent::Assigned(_) => "course.assigned",
            CourseEvent::Rescheduled(_) => "course.rescheduled",
            CourseEvent::Completed(_) => "course.completed",
            CourseEvent::Cancelled(_) => "course.cancelled",
            CourseEvent::Updated(_) => "course.updated",
            CourseEvent::Deleted(_) => "course.deleted",
        }
    }
}

fn course(c: &Captured<'_>) -> Result<Course, MapError> {
    Ok(Course {
        id: c.row.id("id")?,
        status: c.row.status("status")?,
        instructor_id: c.row.nullable_id("instructor_id")?,
        scheduled_for: c.row.time("scheduled_for")?,
        organization_id: c.row.opt_id("organization_id")?,
        requested_by: c.row.opt_id("requested_by")?,
    })
}

fn update(c: &Captured<'_>) -> Result<CourseEvent, MapError> {
    let course = course(c)?;
    if let Some(previous) = c.status_change("status", course.status.as_ref())? {
        let was = previous.as_ref().map(Status::class);
        match course.status.as_ref().map(Status::class) {
            Some(StatusClass::Completed) if was != Some(StatusClass::Completed) => {
                return Ok(CourseEvent::Completed(CourseStatusChange {
                    course,
                    previous,
                }));
            }
            Some(StatusClass::Cancelled) if was != Some(StatusClass::Cancelled) => {
                return Ok(CourseEvent::Cancelled(CourseStatusChange {
                    course,
                    previous,
                }));
            }
            _ => {}
        }
    }
    if c.old.has("instructor_id") && course.instructor_id.is_some() {
        let previous_instructor_id = c.old.opt_id("instructor_id")?;
        return Ok(CourseEvent::Assigned(CourseAssigned {
            course,
            previous_instructor_id,
        }));
    }
    if c.old.has("scheduled_for") && course.scheduled_for.is_some() {
        let previous_scheduled_for = c.old.opt_time("scheduled_for")?;
        return Ok(CourseEvent::Rescheduled(CourseRescheduled {
            course,
            previous_scheduled_for,
        }));
    }
    Ok(CourseEvent::Updated(course))
}

impl TryFrom<&Captured<'_>> for CourseEvent {
    type Error = MapError;

    fn try_from(c: &Captured<'_>) -> Result<CourseEvent, MapError> {
        Ok(match (c.kind, c.op) {
            (Kind::Course, Op::Insert) => CourseEvent::Requested(course(c)?),
            (Kind::Course, Op::Update) => update(c)?,
            (Kind::Course, _) => CourseEvent::Deleted(course(c)?),
            (kind, _) => return Err(MapError::OtherDomain(kind)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use crate::events::testing::{named, typed};

    fn course_row(status: &str, instructor: &str, scheduled: &str) -> String {
        format!(
            r#"{{"id": 9, "title": "t", "status": "{status}", "instructor_id": {instructor}, "scheduled_for": {scheduled}, "organization_id": 4, "requested_by": 7}}"#
        )
    }

    const D1: &str = "\"2026-12-01T09:00:00+00:00\"";
    const D2: &str = "\"2026-12-08T09:00:00+00:00\"";

    fn update(status: &str, instructor: &str, scheduled: &str, old: &str) -> &'static str {
        named(
            Kind::Course,
            Op::Update,
            &course_row(status, instructor, scheduled),
            Some(old),
        )
    }

    #[test]
    fn course_updates_follow_the_priority_of_rules() {
        let cases = [
            (
                "COMPLETED",
                "8",
                D1,
                r#"{"status": "SCHEDULED"}"#,
                "course.completed",
            ),
            (
                "done",
                "8",
                D1,
                r#"{"status": "SCHEDULED"}"#,
                "course.completed",
            ),
            (
                "CANCELLED",
                "8",
                D1,
                r#"{"status": "SCHEDULED"}"#,
                "course.cancelled",
            ),
            (
                "Canceled",
                "null",
                "null",
                r#"{"status": "REQUESTED"}"#,
                "course.cancelled",
            ),
            // completion wins over a new instructor in the same update
            (
                "COMPLETED",
                "8",
                D1,
                r#"{"status": "SCHEDULED", "instructor_id": 7}"#,
                "course.completed",
            ),
            (
                "ASSIGNED",
                "8",
                "null",
                r#"{"status": "REQUESTED", "instructor_id": null}"#,
                "course.assigned",
            ),
            (
                "ASSIGNED",
                "8",
                "null",
                r#"{"instructor_id": 7}"#,
                "course.assigned",
            ),
            // a new instructor wins over a new date
            (
                "SCHEDULED",
                "8",
                D2,
                &format!(r#"{{"instructor_id": 7, "scheduled_for": {D1}}}"#),
                "course.assigned",
            ),
            (
                "SCHEDULED",
                "8",
                D2,
                &format!(r#"{{"scheduled_for": {D1}}}"#),
                "course.rescheduled",
            ),
            (
                "SCHEDULED",
                "8",
                D1,
                r#"{"scheduled_for": null, "status": "ASSIGNED"}"#,
                "course.rescheduled",
            ),
            // cleared, another status or another column: an update
            (
                "ASSIGNED",
                "null",
                D1,
                r#"{"instructor_id": 8}"#,
                "course.updated",
            ),
            (
                "SCHEDULED",
                "8",
                "null",
                &format!(r#"{{"scheduled_for": {D1}}}"#),
                "course.updated",
            ),
            (
                "SCHEDULED",
                "8",
                D1,
                r#"{"status": "ASSIGNED"}"#,
                "course.updated",
            ),
            (
                "WHATEVER",
                "8",
                D1,
                r#"{"status": "ASSIGNED"}"#,
                "course.updated",
            ),
            (
                "SCHEDULED",
                "8",
                D1,
                r#"{"title": "old"}"#,
                "course.updated",
            ),
            (
                "COMPLETED",
                "8",
                D1,
                r#"{"title": "old"}"#,
                "course.updated",
            ),
        ];
        for (status, instructor, scheduled, old, name) in cases {
            assert_eq!(
                update(status, instructor, scheduled, old),
                name,
                "{status} {old}"
            );
        }
    }

    #[test]
    fn requested_and_deleted_courses() {
        let row = course_row("REQUESTED", "null", "null");
        assert_eq!(
            named(Kind::Course, Op::Insert, &row, None),
            "course.requested"
        );
        assert_eq!(
            named(Kind::Course, Op::Delete, &row, None),
            "course.deleted"
        );
    }

    #[test]
    fn events_carry_what_changed() {
        let event = typed(
            Kind::Course,
            Op::Update,
            &course_row("SCHEDULED", "8", D2),
            Some(&format!(r#"{{"scheduled_for": {D1}}}"#)),
        )
        .unwrap();
        let Event::Course(CourseEvent::Rescheduled(r)) = event else {
            panic!("{event:?}")
        };
        assert_eq!(
            r.previous_scheduled_for.unwrap().as_str(),
            &D1[1..D1.len() - 1]
        );
        assert_eq!(
            r.course.scheduled_for.unwrap().as_str(),
            &D2[1..D2.len() - 1]
        );
        let event = typed(
            Kind::Course,
            Op::Update,
            &course_row("ASSIGNED", "8", "null"),
            Some(r#"{"instructor_id": null}"#),
        )
        .unwrap();
        let Event::Course(CourseEvent::Assigned(a)) = event else {
            panic!("{event:?}")
        };
        assert_eq!(a.previous_instructor_id, None);
        assert_eq!(a.course.instructor_id.unwrap().as_json(), "8");
    }

    #[test]
    fn a_course_row_without_its_date_column_becomes_a_row_event() {
        let row = r#"{"id": 9, "status": "REQUESTED", "instructor_id": null}"#;
        assert_eq!(named(Kind::Course, Op::Insert, row, None), "row.inserted");
        assert!(matches!(
            typed(Kind::Course, Op::Insert, row, None),
            Err(MapError::Missing {
                field: "scheduled_for",
                ..
            })
        ));
    }
}
