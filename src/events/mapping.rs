//! Mappings: a table's event rules as the service holds them.
//!
//! `rowcast.watch()` resolves a table's rules (its own, then its domain preset's) and
//! stores them as an immutable row of `rowcast.mappings`; the capture trigger's
//! registration names it on every event, so the service names each event with the rules
//! it was captured with, on every replica and in every replay. [`Mappings`] caches them
//! by id and loads the ones it has not seen yet before a batch of changes is published.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::events::Change;
use crate::events::rules::{Columns, Rule};

/// Why a change could not be named by its table's rules. The messages name columns,
/// never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The change has no row, or its row is not a JSON object.
    #[error("the captured row is not a JSON object")]
    NotAnObject,
    /// A column a rule reads is not in the row (dropped since the rules were made).
    #[error("column {column:?}, which the rule for {event} reads, is missing from the row")]
    Missing {
        /// The column.
        column: String,
        /// The event of the rule that reads it.
        event: Arc<str>,
    },
    /// The change was captured with rules the service cannot load or read.
    #[error("mapping {0} is unknown or unreadable")]
    UnknownMapping(i32),
    /// The event name stored for the change is not one (see [`is_event_name`]).
    #[error("{0:?} is not an event name")]
    NotAnEventName(String),
}

/// Whether `name` is an event name as the database checks it (`rowcast.is_event_name()`):
/// dot-separated parts of ASCII letters, digits and underscores, at most 100 characters,
/// and not a name a named SSE stream gives its own messages (`subscribed`, `reset`). The service checks again what it reads from the log, so that a row that
/// got past the database's checks can never put a line break into an SSE `event:` line
/// or pass for the stream's own message.
pub fn is_event_name(name: &str) -> bool {
    name.len() <= 100
        && name != "subscribed"
        && name != "reset"
        && name.split('.').all(|part| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// A table's event rules, as one immutable row of `rowcast.mappings` holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// Its id in `rowcast.mappings`.
    pub id: i32,
    /// The rules, in the order they are tried.
    pub(crate) rules: Vec<Rule>,
}

impl Mapping {
    /// A mapping of `rules`.
    pub fn new(id: i32, rules: Vec<Rule>) -> Mapping {
        Mapping { id, rules }
    }

    /// The name the rules give a change: `Ok(None)` when no rule holds (the change is a
    /// generic `row.*` event); an error when the row cannot be read, including when a
    /// column some rule reads is missing from it (a schema change broke the rules: every
    /// row is then generic, and counted, until the table is watched again).
    pub(crate) fn event_of(&self, change: &Change) -> Result<Option<&Arc<str>>, MapError> {
        let data = change.data.as_deref().ok_or(MapError::NotAnObject)?;
        let row = Columns::of(data).ok_or(MapError::NotAnObject)?;
        if let Some(rule) = self
            .rules
            .iter()
            .find(|rule| rule.when.column().is_some_and(|c| row.get(c).is_none()))
        {
            return Err(MapError::Missing {
                column: rule.when.column().unwrap_or_default().to_string(),
                event: rule.event.clone(),
            });
        }
        let old = match change.old.as_deref() {
            Some(old) => Columns::of(old).ok_or(MapError::NotAnObject)?,
            None => Columns::default(),
        };
        Ok(self
            .rules
            .iter()
            .find(|rule| rule.holds(change.op, &row, &old))
            .map(|rule| &rule.event))
    }
}

static UNMAPPED: AtomicU64 = AtomicU64::new(0);

/// How many changes of tables with event rules were delivered as generic `row.*` events
/// because their row could not be read through the rules, since the process started.
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
            table = ?change.table,
            pos = change.pos,
            error = %err,
            not_logged_since_last_warning = not_logged,
            "row cannot be named by its table's event rules; delivered as row.*"
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

    /// The ids among `ids` this cache holds nothing for, each once.
    pub(crate) fn missing(&self, ids: impl IntoIterator<Item = i32>) -> Vec<i32> {
        let by_id = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        let mut missing: Vec<i32> = ids
            .into_iter()
            .filter(|id| !by_id.contains_key(id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    /// Remembers what was loaded for `id`: its rules, or `None` when they cannot be used.
    pub(crate) fn remember(&self, id: i32, mapping: Option<Mapping>) {
        let mut by_id = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        by_id.entry(id).or_insert(mapping.map(Arc::new));
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
