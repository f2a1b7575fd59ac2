//! The first screen at `GET /snapshot?topics=a,b&limit=N&cursor=C`: the current rows
//! behind the topics a token may follow, and the position to resume from.
//!
//! The answer is `{"rows":[{"topic","table","data"},...],"head":H,"next":C}`. Each page
//! is read in one statement with `rowcast.head()`, so in one snapshot; `H` is the head of
//! the first page (every page repeats it), and a client that applies the events after
//! `H`, in position order, to the rows of every page ends with the topics' current rows.
//! `next` is the cursor of the following page, or `null` after the last. Rows come from
//! the tables watched with `snapshot => true`: `rowcast.lock_for_snapshot()` keeps DDL
//! off them for the read, and `rowcast.snapshot_rows()` reads them with the service
//! role's own rights, never their excluded columns, and refuses (reports in `skipped`,
//! with the reason in the log) a table whose owner's code could run. A topic none of
//! them serves is refused. Reads hold a lock and a connection, so few run at once
//! ([`MAX_READS`]), each bounded by [`LOCK_TIMEOUT`] and [`READ_LIMIT`] in PostgreSQL.
//! docs/protocol.md has the recipe.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_postgres::error::SqlState;

use super::protocol::ErrorCode;
use super::query::{self, HttpError, Params};
use super::replay::READ_TIMEOUT;
use super::{AppContext, admission};
use crate::db::{self, DbError};

/// Rows per page when `limit` is not given.
pub(crate) const DEFAULT_LIMIT: i64 = 1000;

/// Largest `limit` accepted.
pub(crate) const MAX_LIMIT: i64 = 10_000;

/// Snapshot reads at once, per replica: each holds a pooled connection and locks.
pub(crate) const MAX_READS: usize = 4;

/// How long a read waits for its turn before the client is told to retry.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// How long a read waits for a table's lock in PostgreSQL (a long DDL holds it).
const LOCK_TIMEOUT: &str = "3s";

/// The longest one page may take in PostgreSQL.
const READ_LIMIT: &str = "15s";

fn reads() -> &'static Semaphore {
    static READS: OnceLock<Semaphore> = OnceLock::new();
    READS.get_or_init(|| Semaphore::new(MAX_READS))
}

/// Routes of this module.
pub(crate) fn router() -> Router<AppContext> {
    Router::new().route("/snapshot", get(snapshot))
}

/// Where a page starts: the first page's head, the source, and the key after which to
/// read, as text. Sent as `H.S.K`, `K` the key's JSON array in unpadded base64url.
#[derive(Debug, PartialEq)]
struct Cursor {
    head: i64,
    source: i32,
    key: Vec<String>,
}

impl Cursor {
    fn encode(&self) -> String {
        let key = serde_json::to_vec(&self.key).expect("strings always serialise");
        format!(
            "{}.{}.{}",
            self.head,
            self.source,
            URL_SAFE_NO_PAD.encode(key)
        )
    }

    fn decode(raw: &str) -> Option<Cursor> {
        let mut parts = raw.splitn(3, '.');
        let head = parts.next()?.parse().ok().filter(|h: &i64| *h >= 0)?;
        let source = parts.next()?.parse().ok().filter(|s: &i32| *s >= 1)?;
        let key = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
        let key: Vec<String> = serde_json::from_slice(&key).ok()?;
        (!key.is_empty()).then_some(Cursor { head, source, key })
    }
}

async fn snapshot(
    State(ctx): State<AppContext>,
    headers: HeaderMap,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(params) = params.map_err(HttpError::from_rejection)?;
    let principal = admission::authenticate(&ctx, &headers, params.token.as_deref())?;
    let topics = query::topics(params.topics.as_deref(), ctx.session.max_topics)?;
    query::check_allowed(&principal, &topics)?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(raw) => match query::position("limit", raw)? {
            n @ 1..=MAX_LIMIT => n,
            _ => {
                return Err(HttpError::bad_request(format!(
                    "limit must be between 1 and {MAX_LIMIT}"
                )));
            }
        },
    };
    let cursor = params
        .cursor
        .as_deref()
        .map(|raw| {
            Cursor::decode(raw).ok_or_else(|| {
                HttpError::bad_request(
                    "cursor is not one a /snapshot page gave: ask for the first page again",
                )
            })
        })
        .transpose()?;
    let Ok(Ok(_turn)) = tokio::time::timeout(QUEUE_WAIT, reads().acquire()).await else {
        return Err(busy());
    };
    let page = db::with_timeout(READ_TIMEOUT, read(&ctx, &topics, cursor.as_ref(), limit))
        .await
        .map_err(refusal)?;
    for skipped in &page.skipped {
        tracing::warn!(table = ?skipped.table, topic = ?skipped.topic, reason = %skipped.reason,
                       "snapshot: a table was not read");
    }
    let head = cursor.as_ref().map_or(page.head, |c| c.head);
    if cursor.is_none()
        && let Some(topic) = page.unserved
    {
        return Err(HttpError::bad_request(format!(
            "topic {topic} has no snapshot: no table watched with snapshot => true publishes on it"
        )));
    }
    let mut body =
        String::with_capacity(page.rows.iter().map(|r| r.data.len() + 64).sum::<usize>() + 64);
    body.push_str("{\"rows\":[");
    for (i, row) in page.rows.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"topic\":");
        body.push_str(&serde_json::to_string(&row.topic).expect("a string serialises"));
        body.push_str(",\"table\":");
        body.push_str(&serde_json::to_string(&row.table).expect("a string serialises"));
        body.push_str(",\"data\":");
        body.push_str(&row.data);
        body.push('}');
    }
    body.push_str("],\"head\":");
    body.push_str(&head.to_string());
    if !page.skipped.is_empty() {
        // Which tables were not read (why is in the log, for the operator).
        body.push_str(",\"skipped\":");
        let skipped: Vec<serde_json::Value> = page
            .skipped
            .iter()
            .map(|s| serde_json::json!({"topic": s.topic, "table": s.table}))
            .collect();
        body.push_str(&serde_json::Value::Array(skipped).to_string());
    }
    body.push_str(",\"next\":");
    match page.rows.last() {
        Some(last) if page.rows.len() as i64 >= limit => {
            let next = Cursor {
                head,
                source: last.source,
                key: last.key.clone(),
            };
            body.push_str(&serde_json::to_string(&next.encode()).expect("a string serialises"));
        }
        _ => body.push_str("null"),
    }
    body.push('}');
    Ok(query::json(StatusCode::OK, body))
}

/// A row of a page.
struct Row {
    source: i32,
    topic: String,
    table: String,
    data: String,
    key: Vec<String>,
}

/// A table of a page's topics that was not read, and why.
struct Skipped {
    topic: String,
    table: String,
    reason: String,
}

/// A page as read.
struct Page {
    head: i64,
    rows: Vec<Row>,
    skipped: Vec<Skipped>,
    /// On a first page: a topic no snapshot source serves.
    unserved: Option<String>,
}

async fn read(
    ctx: &AppContext,
    topics: &[String],
    cursor: Option<&Cursor>,
    limit: i64,
) -> Result<Page, DbError> {
    let mut client = ctx.pool.get().await?;
    // Read committed: the lock is taken in one statement, and the rows and the head are
    // read in a later one, whose snapshot sees the tables as the lock keeps them.
    let tx = client.build_transaction().read_only(true).start().await?;
    tx.batch_execute(&format!(
        "set local lock_timeout = '{LOCK_TIMEOUT}'; set local statement_timeout = '{READ_LIMIT}'"
    ))
    .await?;
    let unserved = match cursor {
        Some(_) => None,
        None => tx
            .query_opt(
                "select t from unnest($1::text[]) t \
                 where t not in (select s.topic from rowcast.snapshot_sources($1) s) limit 1",
                &[&topics],
            )
            .await?
            .map(|row| row.get(0)),
    };
    if unserved.is_some() {
        return Ok(Page {
            head: 0,
            rows: Vec::new(),
            skipped: Vec::new(),
            unserved,
        });
    }
    tx.execute("select rowcast.lock_for_snapshot($1)", &[&topics])
        .await?;
    let limit = i32::try_from(limit).unwrap_or(i32::MAX);
    let (source, key) = match cursor {
        Some(c) => (c.source, Some(c.key.clone())),
        None => (1, None),
    };
    let found = tx
        .query(
            "select h.head, s.source, s.topic, s.table_name, s.data, s.key, s.refused \
             from (select rowcast.head() as head) h \
             left join lateral rowcast.snapshot_rows($1, $2, $3, $4) s on true",
            &[&topics, &source, &key, &limit],
        )
        .await?;
    tx.commit().await?;
    let head = found.first().map_or(0, |row| row.get(0));
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for row in &found {
        let Some(source) = row.get::<_, Option<i32>>(1) else {
            continue;
        };
        let (topic, table): (String, String) = (row.get(2), row.get(3));
        match row.get::<_, Option<String>>(6) {
            Some(reason) => skipped.push(Skipped {
                topic,
                table,
                reason,
            }),
            None => rows.push(Row {
                source,
                topic,
                table,
                data: row.get(4),
                key: row.get(5),
            }),
        }
    }
    Ok(Page {
        head,
        rows,
        skipped,
        unserved: None,
    })
}

/// The answer when too many snapshot reads are running, or a table's lock is held.
fn busy() -> HttpError {
    HttpError::Admission(admission::HttpRefusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        "snapshots are busy: retry shortly",
    ))
}

/// What the client is told when a read fails: a cursor that does not fit is its error
/// (400); a lock or a read that took too long is a busy server (503). The database's own
/// words never reach the client (they could name other tenants' tables): they are logged.
fn refusal(err: DbError) -> HttpError {
    let code = match &err {
        DbError::Postgres(pg) => pg.as_db_error().map(|db| db.code().clone()),
        _ => None,
    };
    match code {
        Some(SqlState::INVALID_PARAMETER_VALUE) => HttpError::bad_request(
            "the cursor is not one a page gave: ask for the first page again",
        ),
        Some(SqlState::LOCK_NOT_AVAILABLE) | Some(SqlState::QUERY_CANCELED) => {
            tracing::warn!(error = %err, "snapshot: a table's lock or the read took too long");
            busy()
        }
        _ => err.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written_and_garbage_is_refused() {
        let cursor = Cursor {
            head: 42,
            source: 3,
            key: vec!["7".into(), "a.b:c\"é".into()],
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in [
            "",
            "1",
            "1.2",
            "x.1.WyIxIl0",
            "1.0.WyIxIl0",
            "-1.1.WyIxIl0",
            "1.1.!!",
            "1.1.e30",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
