//! A change as read from the log: what the event mapping takes.

use serde_json::value::RawValue;

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Op {
    /// A row was inserted.
    Insert,
    /// A row was updated (and something visible changed).
    Update,
    /// A row was deleted.
    Delete,
    /// The table was truncated.
    Truncate,
    /// An application published an event of its own (`rowcast.publish()`).
    Publish,
}

impl Op {
    /// The SQL name, as sent on the wire (`INSERT`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
            Op::Publish => "PUBLISH",
        }
    }

    /// The operation named `s` (`INSERT`, ...).
    pub(crate) fn parse(s: &str) -> Option<Op> {
        match s {
            "INSERT" => Some(Op::Insert),
            "UPDATE" => Some(Op::Update),
            "DELETE" => Some(Op::Delete),
            "TRUNCATE" => Some(Op::Truncate),
            "PUBLISH" => Some(Op::Publish),
            _ => None,
        }
    }
}

/// One sequenced change, as stored by the capture trigger. It is carried as JSON on the
/// bus, its values as read from the log (`crate::capture::bus`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// Gap-free global position.
    pub pos: i64,
    /// The watched table (`schema.table` outside `public`).
    pub table: String,
    /// What happened.
    pub op: Op,
    /// Every topic the event is published on (computed when it was sequenced).
    pub topics: Vec<String>,
    /// Time of the change, RFC 3339 in UTC with milliseconds.
    pub ts: String,
    /// New row (INSERT, UPDATE) or old row (DELETE), minus excluded columns.
    pub data: Option<Box<RawValue>>,
    /// Previous values of the changed columns (UPDATE only).
    pub old: Option<Box<RawValue>>,
    /// The event rules the change was captured with (`rowcast.mappings`), if its table
    /// has rules.
    pub mapping_id: Option<i32>,
    /// For an UPDATE that moved the row off some topics (an old routing value, an old
    /// primary key): how many of `topics`, from the first, get the whole event. The rest
    /// are the topics the row left, which get [`Change::left_key`] only. `None` when
    /// every topic gets the whole event.
    pub kept: Option<usize>,
    /// The row's primary key as it was, for the topics it left (`row.left`).
    pub left_key: Option<Box<RawValue>>,
}
