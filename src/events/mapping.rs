//! Domain mappings: which column of an app's table holds each field of a kind of row.
//!
//! The DBA names the kind in the table's registration (`rowcast.watch(..., domain =>
//! 'booking', columns => '{"status": "state"}')`); `watch` checks the columns against
//! `rowcast.domain_fields` and stores the resolved mapping as an immutable row of
//! `rowcast.mappings`. The capture trigger records its id on every event, so the
//! service reads each event with the mapping it was captured with, on every replica and
//! in every replay. [`Mappings`] caches them by id and loads the ones it has not seen
//! yet before a batch of changes is published.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::capture::log::{Change, MalformedRow};
use crate::db::DbError;

use TypeClass::{Id, Status, Time};

/// The three domains rowcast names events for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// Meetings, attendance, court cards.
    Attendance,
    /// Bookings, payments, payouts.
    Booking,
    /// Courses.
    Course,
}

/// The kind of row a watched table holds, as `watch(..., domain => kind)` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `meeting` (attendance domain).
    Meeting,
    /// `attendance`: one participant's presence at a meeting.
    Attendance,
    /// `court_card` (attendance domain).
    CourtCard,
    /// `booking`.
    Booking,
    /// `payment` (booking domain).
    Payment,
    /// `payout` (booking domain).
    Payout,
    /// `course`.
    Course,
}

/// What a field's column may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeClass {
    /// `id`: integer types, numeric, text, varchar or uuid.
    Id,
    /// `status`: text, varchar or an enum.
    Status,
    /// `time`: timestamptz, timestamp or date.
    Time,
}

impl TypeClass {
    /// The name used in `rowcast.domain_fields.type_class`.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeClass::Id => "id",
            TypeClass::Status => "status",
            TypeClass::Time => "time",
        }
    }
}

/// One field of a kind of row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// The field's name (and its key in typed events' `data` and `old`).
    pub name: &'static str,
    /// Whether a table of this kind must have it.
    pub required: bool,
    /// What its column may hold.
    pub class: TypeClass,
}

const fn req(name: &'static str, class: TypeClass) -> FieldSpec {
    FieldSpec {
        name,
        required: true,
        class,
    }
}

const fn opt(name: &'static str, class: TypeClass) -> FieldSpec {
    FieldSpec {
        name,
        required: false,
        class,
    }
}

const MEETING_FIELDS: &[FieldSpec] = &[
    req("id", Id),
    req("started_at", Time),
    req("ended_at", Time),
    opt("court_rep_id", Id),
    opt("organization_id", Id),
];
const ATTENDANCE_FIELDS: &[FieldSpec] = &[
    req("id", Id),
    req("meeting_id", Id),
    req("participant_id", Id),
    opt("joined_at", Time),
    req("left_at", Time),
    opt("status", Status),
];
const COURT_CARD_FIELDS: &[FieldSpec] = &[
    req("id", Id),
    opt("meeting_id", Id),
    opt("participant_id", Id),
    opt("court_rep_id", Id),
    opt("status", Status),
];
const BOOKING_FIELDS: &[FieldSpec] = &[
    req("id", Id),
    req("status", Status),
    opt("client_id", Id),
    opt("provider_id", Id),
];
const PAYMENT_FIELDS: &[FieldSpec] = &[
    req("id", Id),
    req("status", Status),
    opt("booking_id", Id),
    opt("client_id", Id),
    opt("provider_id", Id),
];
const PAYOUT_FIELDS: &[FieldSpec] = &[
    req("id", Id),
    req("status", Status),
    opt("payment_id", Id),
    opt("provider_id", Id),
];
const COURSE_FIELDS: &[FieldSpec] = &[
    req("id", Id),
    req("status", Status),
    req("instructor_id", Id),
    req("scheduled_for", Time),
    opt("organization_id", Id),
    opt("requested_by", Id),
];

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 7] = [
        Kind::Meeting,
        Kind::Attendance,
        Kind::CourtCard,
        Kind::Booking,
        Kind::Payment,
        Kind::Payout,
        Kind::Course,
    ];

    /// The kind named `name` in a registration.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The kind's name in registrations.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Meeting => "meeting",
            Kind::Attendance => "attendance",
            Kind::CourtCard => "court_card",
            Kind::Booking => "booking",
            Kind::Payment => "payment",
            Kind::Payout => "payout",
            Kind::Course => "course",
        }
    }

    /// The domain the kind belongs to.
    pub fn domain(self) -> Domain {
        match self {
            Kind::Meeting | Kind::Attendance | Kind::CourtCard => Domain::Attendance,
            Kind::Booking | Kind::Payment | Kind::Payout => Domain::Booking,
            Kind::Course => Domain::Course,
        }
    }

    /// The kind's fields; the same list as the seed of `rowcast.domain_fields`.
    pub fn fields(self) -> &'static [FieldSpec] {
        match self {
            Kind::Meeting => MEETING_FIELDS,
            Kind::Attendance => ATTENDANCE_FIELDS,
            Kind::CourtCard => COURT_CARD_FIELDS,
            Kind::Booking => BOOKING_FIELDS,
            Kind::Payment => PAYMENT_FIELDS,
            Kind::Payout => PAYOUT_FIELDS,
            Kind::Course => COURSE_FIELDS,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a change could not be read as its domain's event. The messages name fields and
/// columns, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The change has no row, or its row is not a JSON object.
    #[error("the captured row is not a JSON object")]
    NotAnObject,
    /// The mapping has no column for a field the kind needs.
    #[error("the {kind} mapping has no column for field {field}")]
    Unmapped {
        /// The kind.
        kind: Kind,
        /// The field.
        field: &'static str,
    },
    /// A required field's column is not in the row (excluded, or dropped since).
    #[error("field {field} (column {column:?}) is missing from the row")]
    Missing {
        /// The field.
        field: &'static str,
        /// Its column.
        column: String,
    },
    /// A field's value has the wrong JSON type.
    #[error("field {field} (column {column:?}) is not {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// Its column.
        column: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The row's id is null.
    #[error("field {field} (column {column:?}) is null")]
    NullId {
        /// The field.
        field: &'static str,
        /// Its column.
        column: String,
    },
    /// The change was captured with a mapping the service cannot load or read.
    #[error("mapping {0} is unknown or unreadable")]
    UnknownMapping(i32),
    /// A domain was asked to read a kind of another domain.
    #[error("a {0} row is not of this domain")]
    OtherDomain(Kind),
}

/// A resolved mapping of a kind onto one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// Its id in `rowcast.mappings`.
    pub id: i32,
    /// The kind of row the table holds.
    pub kind: Kind,
    /// Field -> column, for the fields the table has.
    fields: Vec<(&'static str, String)>,
}

impl Mapping {
    /// A mapping of `kind` with `fields` (field -> column); names that are not fields of
    /// the kind are ignored.
    pub fn new<'a>(
        id: i32,
        kind: Kind,
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Mapping {
        let fields = fields
            .into_iter()
            .filter_map(|(field, column)| {
                let spec = kind.fields().iter().find(|spec| spec.name == field)?;
                Some((spec.name, column.to_string()))
            })
            .collect();
        Mapping { id, kind, fields }
    }

    /// The same-named mapping of a table whose columns are the kind's field names.
    pub fn identity(id: i32, kind: Kind) -> Mapping {
        Mapping::new(id, kind, kind.fields().iter().map(|f| (f.name, f.name)))
    }

    /// The column holding `field`.
    pub fn column(&self, field: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(name, _)| *name == field)
            .map(|(_, column)| column.as_str())
    }

    /// Reads a `rowcast.mappings` row.
    fn from_row(id: i32, kind: &str, fields: &str) -> Option<Mapping> {
        let kind = Kind::parse(kind)?;
        let fields: HashMap<String, String> = serde_json::from_str(fields).ok()?;
        Some(Mapping::new(
            id,
            kind,
            fields.iter().map(|(f, c)| (f.as_str(), c.as_str())),
        ))
    }
}

static UNMAPPED: AtomicU64 = AtomicU64::new(0);

/// How many changes of tables with a domain were delivered as generic `row.*` events
/// because their row could not be read through the mapping, since the process started.
pub fn unmapped_rows() -> u64 {
    UNMAPPED.load(Ordering::Relaxed)
}

/// Shortest time between two warnings about unmapped rows. A mapping broken by a schema
/// change makes every row of its table unmappable: one warning per row would flood the
/// log at the table's write rate.
const UNMAPPED_LOG_INTERVAL: Duration = Duration::from_secs(10);

static UNMAPPED_LOG: LogLimiter = LogLimiter::new(UNMAPPED_LOG_INTERVAL);

/// Counts a change delivered as `row.*` instead of its domain's event, and logs it
/// unless another was logged less than [`UNMAPPED_LOG_INTERVAL`] ago; the next warning
/// says how many were not logged.
pub(crate) fn record_unmapped(change: &Change, err: &MapError) {
    UNMAPPED.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(crate::metrics::ROWS_UNMAPPED).increment(1);
    if let Some(not_logged) = UNMAPPED_LOG.admit(Instant::now()) {
        tracing::warn!(
            table = %change.table,
            pos = change.pos,
            error = %err,
            not_logged_since_last_warning = not_logged,
            "row cannot be read through its domain mapping; delivered as row.*"
        );
    }
}

/// Lets through at most one log line per interval and counts the others.
#[derive(Debug)]
struct LogLimiter {
    interval: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    /// When the last line was let through (`None`: never).
    last: Option<Instant>,
    /// Lines held back since then.
    held: u64,
}

impl LogLimiter {
    const fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            state: Mutex::new(LimiterState {
                last: None,
                held: 0,
            }),
        }
    }

    /// `Some(lines held back since the last one)` if a line may be logged at `now`.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                state.held += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.held))
            }
        }
    }
}

/// Loads the mappings with the given ids.
const MAPPINGS_SQL: &str = "select id, kind, fields::text from rowcast.mappings where id = any($1)";

/// The mappings the service has seen, by id. Rows of `rowcast.mappings` never change, so
/// an entry never goes stale; an id that cannot be read is remembered as unusable.
#[derive(Debug, Default)]
pub struct Mappings {
    by_id: RwLock<HashMap<i32, Option<Arc<Mapping>>>>,
}

impl Mappings {
    /// An empty cache.
    pub fn new() -> Arc<Mappings> {
        Arc::new(Mappings::default())
    }

    /// The mapping a change was captured with: `Ok(None)` for a generic table, an error
    /// when it has a mapping id this cache does not hold (not loaded, or unreadable).
    pub fn for_change(&self, change: &Change) -> Result<Option<Arc<Mapping>>, MapError> {
        let Some(id) = change.mapping_id else {
            return Ok(None);
        };
        let by_id = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        match by_id.get(&id) {
            Some(Some(mapping)) => Ok(Some(mapping.clone())),
            _ => Err(MapError::UnknownMapping(id)),
        }
    }

    /// Adds a mapping (tests, and mappings loaded elsewhere).
    pub fn insert(&self, mapping: Mapping) {
        let mut by_id = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        by_id.insert(mapping.id, Some(Arc::new(mapping)));
    }

    /// Loads, through `client`, every mapping the changes refer to that is not cached.
    pub async fn load_missing(
        &self,
        client: &Client,
        changes: &[Result<Change, MalformedRow>],
    ) -> Result<(), DbError> {
        let mut missing: Vec<i32> = {
            let by_id = self.by_id.read().unwrap_or_else(|e| e.into_inner());
            changes
                .iter()
                .filter_map(|c| c.as_ref().ok()?.mapping_id)
                .filter(|id| !by_id.contains_key(id))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let rows = client.query(MAPPINGS_SQL, &[&missing]).await?;
        let mut by_id = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            let (id, kind, fields): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
            let mapping = Mapping::from_row(id, &kind, &fields);
            if mapping.is_none() {
                tracing::error!(
                    mapping = id,
                    kind = %kind,
                    "unreadable domain mapping; its events are delivered as row.*"
                );
            }
            by_id.insert(id, mapping.map(Arc::new));
        }
        for id in missing {
            by_id.entry(id).or_insert_with(|| {
                tracing::error!(
                    mapping = id,
                    "domain mapping not found; its events are delivered as row.*"
                );
                None
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_limiter_lets_one_line_through_per_interval_and_counts_the_rest() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limiter.admit(start), Some(0));
        assert_eq!(limiter.admit(start + Duration::from_secs(1)), None);
        assert_eq!(limiter.admit(start + Duration::from_secs(9)), None);
        assert_eq!(limiter.admit(start + Duration::from_secs(10)), Some(2));
        assert_eq!(limiter.admit(start + Duration::from_secs(11)), None);
        assert_eq!(limiter.admit(start + Duration::from_secs(25)), Some(1));
    }
}
