//! Reading the sequenced log: `rowcast.log` (positions) joined with `rowcast.events`
//! (the captured rows).
//!
//! Rows come back with their JSON as text, unparsed ([`RawValue`]), so numbers beyond
//! 2^53 and every other value reach clients exactly as PostgreSQL rendered them.

use serde_json::value::RawValue;
use tokio_postgres::{Client, Row, Statement};

use crate::capture::changed::changed_columns;
use crate::db::DbError;

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A row was inserted.
    Insert,
    /// A row was updated (and something visible changed).
    Update,
    /// A row was deleted.
    Delete,
    /// The table was truncated.
    Truncate,
}

impl Op {
    /// The SQL name, as sent on the wire (`INSERT`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Op> {
        match s {
            "INSERT" => Some(Op::Insert),
            "UPDATE" => Some(Op::Update),
            "DELETE" => Some(Op::Delete),
            "TRUNCATE" => Some(Op::Truncate),
            _ => None,
        }
    }
}

/// One sequenced change, as stored by the capture trigger.
#[derive(Debug)]
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
    /// The domain mapping the change was captured with (`rowcast.mappings`), if its
    /// table has a domain.
    pub mapping_id: Option<i32>,
}

/// A row of the log that could not be read (a corrupt or hand-edited log row).
#[derive(Debug, thiserror::Error)]
#[error("log row at position {pos} is malformed: {reason}")]
pub struct MalformedRow {
    /// Position of the row.
    pub pos: i64,
    /// What is wrong with it.
    pub reason: String,
}

macro_rules! select_changes {
    ($where:literal) => {
        concat!(
            "select l.pos, coalesce(r.table_name, ''), e.op, l.topics, ",
            "to_char(e.ts at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), ",
            // An event of no registration (appended by hand) is never read back whole.
            "case when r.id is not null then e.data::text end, ",
            "case when r.id is not null then e.old::text end, ",
            "r.mapping_id ",
            "from rowcast.log l join rowcast.events e on e.txid = l.txid and e.id = l.event_id ",
            "left join rowcast.routings r on r.id = l.routing_id ",
            $where
        )
    };
}

/// Changes with `$1 < pos <= $2`, in position order, at most `$3`.
/// Prepare it once per connection and read with [`read_range`].
pub const RANGE_SQL: &str =
    select_changes!("where l.pos > $1 and l.pos <= $2 order by l.pos limit $3");

/// Like [`RANGE_SQL`], but only changes published on one of the topics `$3`; at most
/// `$4`. The topic test is written so that it cannot use the index on topics: the read
/// goes through `$1 < pos <= $2` in position order and stops at the limit, so its cost
/// follows the range, which replay keeps short (`serve::replay`). Read with
/// [`read_range_for_topics`].
pub const RANGE_FOR_TOPICS_SQL: &str = select_changes!(
    "where l.pos > $1 and l.pos <= $2 and coalesce(l.topics && $3::text[], false) \
     order by l.pos limit $4"
);

/// A read of the log: every row, each either a change or why it could not be read.
pub type Changes = Vec<Result<Change, MalformedRow>>;

/// The position of a row read from the log, whether it could be read or not.
pub fn position(row: &Result<Change, MalformedRow>) -> i64 {
    match row {
        Ok(change) => change.pos,
        Err(err) => err.pos,
    }
}

/// Reads up to `limit` changes with `after < pos <= upto`; `stmt` is [`RANGE_SQL`].
pub async fn read_range(
    client: &Client,
    stmt: &Statement,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Changes, DbError> {
    let rows = client.query(stmt, &[&after, &upto, &limit]).await?;
    Ok(rows.iter().map(change_from_row).collect())
}

/// Reads up to `limit` changes with `after < pos <= upto` published on one of `topics`;
/// `stmt` is [`RANGE_FOR_TOPICS_SQL`].
pub async fn read_range_for_topics(
    client: &Client,
    stmt: &Statement,
    after: i64,
    upto: i64,
    topics: &[String],
    limit: i64,
) -> Result<Changes, DbError> {
    let rows = client
        .query(stmt, &[&after, &upto, &topics, &limit])
        .await?;
    Ok(rows.iter().map(change_from_row).collect())
}

/// The last position handed out by the sequencer.
pub async fn last_position(client: &Client) -> Result<i64, DbError> {
    let row = client
        .query_one("select last_pos from rowcast.sequencer", &[])
        .await?;
    Ok(row.get(0))
}

/// The retention mark: every position at or below it has been pruned (0: none).
///
/// It moves in the same transaction as the deletes, so a reader that reads a range and
/// *then* this mark knows whether the range was whole: if the mark is still at or below
/// the range's start, nothing in the range had been deleted when it was read.
pub async fn pruned_position(client: &Client) -> Result<i64, DbError> {
    let row = client
        .query_one("select pruned_pos from rowcast.sequencer", &[])
        .await?;
    Ok(row.get(0))
}

/// A row of [`RANGE_SQL`]'s columns (position, table, op, topics, time, data, old,
/// mapping id), or of any query returning the same first eight.
pub(crate) fn change_from_row(row: &Row) -> Result<Change, MalformedRow> {
    let pos: i64 = row.get(0);
    let bad = |reason: String| MalformedRow { pos, reason };
    let op: String = row.get(2);
    let op = Op::parse(&op).ok_or_else(|| bad(format!("unknown op {op:?}")))?;
    let raw = |idx: usize| -> Result<Option<Box<RawValue>>, MalformedRow> {
        row.get::<_, Option<String>>(idx)
            .map(RawValue::from_string)
            .transpose()
            .map_err(|err| bad(format!("column {idx} is not JSON: {err}")))
    };
    let data = raw(5)?;
    let mut old = raw(6)?;
    // The trigger may have stored the whole old row (see `changed`).
    if op == Op::Update
        && let (Some(new), Some(prev)) = (&data, &old)
    {
        old = Some(
            changed_columns(new, prev)
                .ok_or_else(|| bad("an UPDATE's data and old are not both objects".into()))?,
        );
    }
    Ok(Change {
        pos,
        table: row.get(1),
        op,
        topics: row.get(3),
        ts: row.get(4),
        data,
        old,
        mapping_id: row.get(7),
    })
}
