//! The log's read side, shared by the tailer and replay: `rowcast.log` (positions) joined
//! with `rowcast.events` (the captured rows) into [`Change`]s, the event rules they were
//! captured with ([`load_rules`]), and what the hub publishes for each ([`publishable`]).
//!
//! Rows come back with their JSON as text, unparsed ([`RawValue`]), so numbers beyond
//! 2^53 and every other value reach clients exactly as PostgreSQL rendered them.

use std::sync::Arc;

use serde_json::value::RawValue;
use tokio_postgres::{Client, Row, Statement};

use crate::capture::changed::changed_columns;
use crate::db::DbError;
use crate::events::{self, Change, Event, Mapping, Mappings, Op};
use crate::hub::{Frame, Published};

/// A row of the log that could not be read (a corrupt or hand-edited log row).
#[derive(Debug, thiserror::Error)]
#[error("log row at position {pos} is malformed: {reason}")]
pub struct MalformedRow {
    /// Position of the row.
    pub(crate) pos: i64,
    /// What is wrong with it.
    pub(crate) reason: String,
}

macro_rules! select_changes {
    ($where:literal) => {
        concat!(
            "select l.pos, coalesce(r.table_name, ''), e.op, l.topics, ",
            "to_char(e.ts at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), ",
            // An event of no registration (appended by hand) is never read back whole; an
            // application's own event (PUBLISH) has none.
            "case when r.id is not null or e.op = 'PUBLISH' then e.data::text end, ",
            "case when r.id is not null or e.op = 'PUBLISH' then e.old::text end, ",
            "r.mapping_id, l.kept::int, ",
            "case when l.kept is not null then rowcast.left_key(r, l.kept, e.data, e.old) end ",
            "from rowcast.log l join rowcast.events e on e.txid = l.txid and e.id = l.event_id ",
            "left join rowcast.routings r on r.id = l.routing_id ",
            $where
        )
    };
}

/// Changes with `$1 < pos <= $2`, in position order, at most `$3`.
/// Prepare it once per connection and read with [`read_range`].
pub(crate) const RANGE_SQL: &str =
    select_changes!("where l.pos > $1 and l.pos <= $2 order by l.pos limit $3");

/// Like [`RANGE_SQL`], but only changes published on one of the topics `$3`; at most
/// `$4`. The topic test is written so that it cannot use the index on topics: the read
/// goes through `$1 < pos <= $2` in position order and stops at the limit, so its cost
/// follows the range, which replay keeps short (`serve::replay`). Read with
/// [`read_range_for_topics`].
pub(crate) const RANGE_FOR_TOPICS_SQL: &str = select_changes!(
    "where l.pos > $1 and l.pos <= $2 and coalesce(l.topics && $3::text[], false) \
     order by l.pos limit $4"
);

/// A read of the log: every row, each either a change or why it could not be read.
pub(crate) type Changes = Vec<Result<Change, MalformedRow>>;

/// The position of a row read from the log, whether it could be read or not.
pub(crate) fn position(row: &Result<Change, MalformedRow>) -> i64 {
    match row {
        Ok(change) => change.pos,
        Err(err) => err.pos,
    }
}

/// Reads up to `limit` changes with `after < pos <= upto`; `stmt` is [`RANGE_SQL`].
pub(crate) async fn read_range(
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
pub(crate) async fn read_range_for_topics(
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
pub(crate) async fn last_position(client: &Client) -> Result<i64, DbError> {
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
pub(crate) async fn pruned_position(client: &Client) -> Result<i64, DbError> {
    let row = client
        .query_one("select pruned_pos from rowcast.sequencer", &[])
        .await?;
    Ok(row.get(0))
}

/// A row of [`RANGE_SQL`]'s columns (position, table, op, topics, time, data, old,
/// mapping id, kept, left key), or of any query returning the same first ten.
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
        kept: row
            .get::<_, Option<i32>>(8)
            .map(|kept| usize::try_from(kept).map_err(|_| bad(format!("kept is {kept}"))))
            .transpose()?,
        left_key: raw(9)?,
    })
}

/// Loads the rules rows of `rowcast.mappings`.
const RULES_SQL: &str = "select id, rules::text from rowcast.mappings where id = any($1)";

/// Loads, through `client`, the event rules of every change in `rows` that `mappings`
/// does not hold yet. Rules rows never change, so an entry never goes stale; one that
/// cannot be read is remembered as unusable, and its changes are delivered as `row.*`.
pub(crate) async fn load_rules(
    client: &Client,
    mappings: &Mappings,
    rows: &Changes,
) -> Result<(), DbError> {
    let missing = mappings.missing(rows.iter().filter_map(|c| c.as_ref().ok()?.mapping_id));
    if missing.is_empty() {
        return Ok(());
    }
    let found = client.query(RULES_SQL, &[&missing]).await?;
    for row in &found {
        let (id, rules): (i32, Option<String>) = (row.get(0), row.get(1));
        let mapping = rules
            .as_deref()
            .and_then(events::Rule::parse_all)
            .map(|rules| Mapping::new(id, rules));
        if mapping.is_none() {
            tracing::error!(
                mapping = id,
                "unreadable event rules; the table's events are delivered as row.*"
            );
        }
        mappings.remember(id, mapping);
    }
    for id in missing {
        if !found.iter().any(|row| row.get::<_, i32>(0) == id) {
            tracing::error!(
                mapping = id,
                "event rules not found; the table's events are delivered as row.*"
            );
            mappings.remember(id, None);
        }
    }
    Ok(())
}

/// Turns a change into what the hub sends: its event, serialised once. The change's
/// rules must be in `mappings` ([`load_rules`] before a batch); a change whose rules are
/// not is delivered as a generic event, counted and logged.
pub fn publishable(change: &Change, mappings: &Mappings) -> Arc<Published> {
    let mapping = mappings.for_change(change);
    let event = Event::of(
        change,
        mapping.as_ref().map(Option::as_deref).map_err(Clone::clone),
    );
    let left = events::left_frame(change).map(|(topics, frame)| {
        Arc::new(Published {
            pos: change.pos,
            event: Event::Left,
            topics,
            frame: Frame::new(frame),
            kept: None,
            left: None,
        })
    });
    Arc::new(Published {
        pos: change.pos,
        frame: Frame::new(events::frame(change, &event)),
        event,
        topics: change.topics.clone(),
        kept: left.as_ref().and(change.kept),
        left,
    })
}
