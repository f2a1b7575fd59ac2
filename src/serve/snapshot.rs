//! The first screen at `GET /snapshot?topics=a,b&limit=N&cursor=C`: the current rows
//! behind the topics a token may follow, and the position to resume from.
//!
//! The answer is `{"rows":[{"topic","table","data"},...],"head":H,"next":C}`. Each page
//! is read in one repeatable-read transaction with `rowcast.head()`; `H` is the head of
//! the first page (every page repeats it), and a client that applies the events after
//! `H`, in position order, to the rows of every page ends with the topics' current rows.
//! `next` is the cursor of the following page, or `null` after the last. Rows come from
//! the tables watched with `snapshot => true` (`rowcast.snapshot_rows()` reads them with
//! the service role's own rights, never their excluded columns); a topic none of them
//! serves is refused. docs/protocol.md has the recipe.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio_postgres::IsolationLevel;
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
    let page = db::with_timeout(READ_TIMEOUT, read(&ctx, &topics, cursor.as_ref(), limit))
        .await
        .map_err(refusal)?;
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

/// A page as read.
struct Page {
    head: i64,
    rows: Vec<Row>,
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
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // The head first: it takes the snapshot the rows are read in.
    let head: i64 = tx.query_one("select rowcast.head()", &[]).await?.get(0);
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
            head,
            rows: Vec::new(),
            unserved,
        });
    }
    let limit = i32::try_from(limit).unwrap_or(i32::MAX);
    let (source, key) = match cursor {
        Some(c) => (c.source, Some(c.key.clone())),
        None => (1, None),
    };
    let found = tx
        .query(
            "select source, topic, table_name, data, key from rowcast.snapshot_rows($1, $2, $3, $4)",
            &[&topics, &source, &key, &limit],
        )
        .await?;
    tx.commit().await?;
    let rows = found
        .iter()
        .map(|row| Row {
            source: row.get(0),
            topic: row.get(1),
            table: row.get(2),
            data: row.get(3),
            key: row.get(4),
        })
        .collect();
    Ok(Page {
        head,
        rows,
        unserved: None,
    })
}

/// What the client is told when a read fails: a cursor that does not fit is its error
/// (400); a table the service may not read, or one it must not, is the DBA's to fix
/// (503, with what to do, which is also logged); anything else is the database's.
fn refusal(err: DbError) -> HttpError {
    let DbError::Postgres(pg) = &err else {
        return err.into();
    };
    let Some(db) = pg.as_db_error() else {
        return err.into();
    };
    let message = match db.hint() {
        Some(hint) => format!("{} ({hint})", db.message()),
        None => db.message().to_string(),
    };
    match *db.code() {
        SqlState::INVALID_PARAMETER_VALUE => HttpError::bad_request(message),
        SqlState::INSUFFICIENT_PRIVILEGE | SqlState::FEATURE_NOT_SUPPORTED => {
            tracing::warn!(%message, "snapshot refused");
            HttpError::Admission(admission::HttpRefusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                message,
            ))
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
