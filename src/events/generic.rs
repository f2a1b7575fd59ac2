//! Generic events of tables without a domain: `row.inserted`, `row.updated`, `row.deleted`.

use crate::capture::log::Op;

/// A change to a row of a table without a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowEvent {
    /// `row.inserted`
    Inserted,
    /// `row.updated`
    Updated,
    /// `row.deleted`
    Deleted,
}

impl RowEvent {
    /// Every generic event name.
    pub const NAMES: &'static [&'static str] = &["row.inserted", "row.updated", "row.deleted"];

    /// The generic event of a row operation (TRUNCATE is not a row operation and maps
    /// to `row.deleted` only if called with it, which [`crate::events::Event::of`] never does).
    pub fn of(op: Op) -> RowEvent {
        match op {
            Op::Insert => RowEvent::Inserted,
            Op::Update => RowEvent::Updated,
            Op::Delete | Op::Truncate => RowEvent::Deleted,
        }
    }

    /// The event's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            RowEvent::Inserted => "row.inserted",
            RowEvent::Updated => "row.updated",
            RowEvent::Deleted => "row.deleted",
        }
    }
}
