//! DBA operations run by the CLI over an admin connection: watch, unwatch, status,
//! uninstall, and the SQL-only install script.
//!
//! `watch`/`unwatch` create and drop triggers, which needs the table owner's rights; the
//! service itself never calls these and runs as a least-privilege role.

use serde::Serialize;
use tokio_postgres::Client;

use crate::migrate;

/// The SQL that removes rowcast: every capture trigger, then the schema. App tables and
/// their data are untouched.
pub(crate) const UNINSTALL_SQL: &str = include_str!("../sql/uninstall.sql");

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// PostgreSQL refused (the message is PostgreSQL's, e.g. an unknown column).
    #[error("{0}")]
    Db(String),
    /// An argument is malformed.
    #[error("{0}")]
    Usage(String),
}

impl From<tokio_postgres::Error> for AdminError {
    fn from(err: tokio_postgres::Error) -> Self {
        match err.as_db_error() {
            Some(db) => AdminError::Db(db.message().to_string()),
            None => AdminError::Db(crate::db::describe_pg(&err)),
        }
    }
}

/// Fails with [`migrate::MigrateError::NotInstalled`]'s advice when the schema `rowcast`
/// is missing, rather than with PostgreSQL's "relation does not exist".
async fn require_installed(client: &Client) -> Result<(), AdminError> {
    let installed: bool = client
        .query_one(
            "select exists (select from pg_catalog.pg_namespace where nspname = 'rowcast')",
            &[],
        )
        .await?
        .get(0);
    if installed {
        Ok(())
    } else {
        Err(AdminError::Db(
            migrate::MigrateError::NotInstalled.to_string(),
        ))
    }
}

/// Checks a `KEY=VALUE` argument (`--route`, `--column`) as the command line is parsed,
/// so a malformed one is a usage error (exit code 2).
pub(crate) fn key_value(item: &str) -> Result<String, String> {
    match item.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => Ok(item.to_string()),
        _ => Err(format!("{item:?} must look like key=value")),
    }
}

/// A `watch` registration, as given on the command line.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct WatchSpec {
    /// The table, as `schema.table` or a name on the search path.
    pub(crate) table: String,
    /// Row topic prefix (default: the table name).
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// Routing column and its topic prefix, e.g. `--route client_id=user` (repeatable).
    #[arg(long = "route", value_name = "COLUMN=PREFIX", value_parser = key_value)]
    pub(crate) routes: Vec<String>,
    /// A column that must never leave the database (repeatable).
    #[arg(long = "exclude", value_name = "COLUMN")]
    pub(crate) exclude: Vec<String>,
    /// Kind of row for typed events (booking, payment, payout, meeting, attendance, court_card, course).
    #[arg(long)]
    pub(crate) domain: Option<String>,
    /// Domain field and this table's column, e.g. `--column status=state` (repeatable).
    #[arg(long = "column", value_name = "FIELD=COLUMN", value_parser = key_value)]
    pub(crate) columns: Vec<String>,
    /// `notify` (wake the sequencer at commit) or `poll` (no NOTIFY from writers).
    #[arg(long, value_parser = ["notify", "poll"])]
    pub(crate) wake: Option<String>,
    /// An event rule, tried in order before the domain's: `WHEN => EVENT`, e.g.
    /// `--rule 'timecompleted set => course.completed'` (repeatable; docs/events.md).
    #[arg(long = "rule", value_name = "WHEN => EVENT")]
    pub(crate) rules: Vec<String>,
    /// Let `GET /snapshot` return the table's current rows (the service role then needs
    /// `select` on it; see docs/dba.md).
    #[arg(long)]
    pub(crate) snapshot: bool,
}

/// The `rules` argument of `rowcast.watch` from `--rule WHEN => EVENT` options (`null`
/// when there are none, so that `watch` keeps the domain's preset alone).
fn rules(items: &[String]) -> Result<Option<serde_json::Value>, AdminError> {
    if items.is_empty() {
        return Ok(None);
    }
    items
        .iter()
        .map(|item| match item.rsplit_once("=>") {
            Some((when, event)) if !when.trim().is_empty() && !event.trim().is_empty() => {
                Ok(serde_json::json!({"when": when.trim(), "event": event.trim()}))
            }
            _ => Err(AdminError::Usage(format!(
                "--rule {item:?} must look like 'WHEN => EVENT', e.g. 'status -> accepted => booking.accepted'"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|rules| Some(serde_json::Value::Array(rules)))
}

fn pairs(what: &str, items: &[String]) -> Result<serde_json::Value, AdminError> {
    let mut map = serde_json::Map::new();
    for item in items {
        key_value(item).map_err(|err| AdminError::Usage(format!("{what} {err}")))?;
        let (key, value) = item.split_once('=').unwrap_or_default();
        map.insert(
            key.to_string(),
            serde_json::Value::String(value.to_string()),
        );
    }
    Ok(serde_json::Value::Object(map))
}

/// Registers (or updates) a watched table. Returns the name events will carry.
pub async fn watch(client: &Client, spec: &WatchSpec) -> Result<String, AdminError> {
    let routes = pairs("--route", &spec.routes)?;
    let columns = pairs("--column", &spec.columns)?;
    let rules = rules(&spec.rules)?;
    require_installed(client).await?;
    let row = client
        .query_one(
            "select rowcast.watch($1::text, topic => $2, routes => $3, exclude => $4, \
             domain => $5, columns => $6, wake => coalesce($7, 'notify'), rules => $8, \
             snapshot => $9)",
            &[
                &spec.table,
                &spec.topic,
                &routes,
                &spec.exclude,
                &spec.domain,
                &columns,
                &spec.wake,
                &rules,
                &spec.snapshot,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Stops watching a table. Returns whether it was watched.
pub async fn unwatch(client: &Client, table: &str) -> Result<bool, AdminError> {
    require_installed(client).await?;
    Ok(client
        .query_one("select rowcast.unwatch($1::text)", &[&table])
        .await?
        .get(0))
}

/// Removes every capture trigger and the schema `rowcast`.
pub async fn uninstall(client: &Client) -> Result<(), AdminError> {
    client.batch_execute(UNINSTALL_SQL).await?;
    Ok(())
}

/// One watched table, for `status`.
#[derive(Debug, Serialize)]
pub struct Watched {
    /// The table.
    pub table: String,
    /// Row topic prefix.
    pub topic: String,
    /// Routing columns and prefixes.
    pub routes: serde_json::Value,
    /// Excluded columns.
    pub exclude: Vec<String>,
    /// Kind of row, if typed.
    pub domain: Option<String>,
    /// `notify` or `poll`.
    pub wake: String,
    /// Whether its trigger is enabled and its registration fits the table.
    pub active: bool,
    /// What a schema change broke, if anything.
    pub problem: Option<String>,
}

/// What `rowcast status` reports from the database.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Schema version installed.
    pub schema_version: i64,
    /// Watched tables.
    pub watched: Vec<Watched>,
    /// Last position handed out.
    pub head: i64,
    /// Committed events that the sequencer has not given a position yet (committed since
    /// its last batch).
    pub unsequenced: i64,
    /// Seconds since the oldest of them was captured (0 when none waits). Growing while
    /// `head` stays put: sequencing has stalled (`/readyz` says so past
    /// `sequencer.stall_limit`).
    pub oldest_unsequenced_seconds: f64,
    /// Events retained in the log.
    pub retained: i64,
    /// Fraction of the NOTIFY queue in use.
    pub notify_queue_usage: f64,
    /// Sessions of the service connected to this database (dedicated connections).
    pub service_connections: i64,
}

/// Reads the status of rowcast in this database.
pub async fn status(client: &Client) -> Result<Status, AdminError> {
    require_installed(client).await?;
    let version: i64 = client
        .query_one(
            &format!(
                "select coalesce(max(version), 0)::bigint from {}",
                migrate::HISTORY_TABLE
            ),
            &[],
        )
        .await?
        .get(0);
    let watched = client
        .query(
            "select \"table\"::text, topic, routes, exclude, domain, wake, active, problem \
             from rowcast.watched order by 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| Watched {
            table: r.get(0),
            topic: r.get(1),
            routes: r.get(2),
            exclude: r.get(3),
            domain: r.get(4),
            wake: r.get(5),
            active: r.get(6),
            problem: r.get(7),
        })
        .collect();
    let row = client
        .query_one(
            "select s.last_pos, \
                    (select count(*) from rowcast.events e \
                      where e.txid >= pg_snapshot_xmax(s.snap)) \
                    + (select count(*) from rowcast.events e \
                      where e.txid = any (array(select pg_snapshot_xip(s.snap)))), \
                    (select count(*) from rowcast.log), \
                    pg_notification_queue_usage(), \
                    (select count(*) from pg_stat_activity \
                      where datname = current_database() and application_name = 'rowcast'), \
                    (select coalesce(extract(epoch from clock_timestamp() - u.oldest)::float8, 0) \
                      from rowcast.unsequenced() u) \
             from rowcast.sequencer s",
            &[],
        )
        .await?;
    Ok(Status {
        schema_version: version,
        watched,
        head: row.get(0),
        unsequenced: row.get(1),
        retained: row.get(2),
        notify_queue_usage: row.get(3),
        service_connections: row.get(4),
        oldest_unsequenced_seconds: row.get(5),
    })
}

/// Asks a running service for its live numbers (`GET /api/stats`: connected clients,
/// topics, head, lag), over a plain HTTP/1.0 request.
pub async fn server_stats(addr: std::net::SocketAddr) -> Result<serde_json::Value, AdminError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let unreachable = |err: std::io::Error| {
        AdminError::Usage(format!(
            "cannot reach rowcast at {addr}: {err} (is it running?)"
        ))
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET /api/stats HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
        .map_err(unreachable)?;
    let text = String::from_utf8_lossy(&response);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default();
    serde_json::from_str(body)
        .map_err(|_| AdminError::Usage(format!("{addr} did not answer /api/stats like rowcast")))
}

/// The SQL-only install script: every migration, then the history rows that make
/// `rowcast migrate` recognise the result. `sql/install.sql` is this text.
pub fn install_sql() -> String {
    let mut out = String::from(
        "-- rowcast: SQL-only install, generated from migrations/ and sql/functions/ by `rowcast install-sql`.\n\
         -- Run as a role that may create schemas: psql -v ON_ERROR_STOP=1 -f sql/install.sql\n\
         begin;\n\
         create schema if not exists rowcast;\n",
    );
    out.push_str(&format!(
        "create table if not exists {} (version int4 primary key, name varchar(255), \
         applied_on varchar(255), checksum varchar(255));\n",
        migrate::HISTORY_TABLE
    ));
    for m in migrate::embedded_migrations() {
        out.push_str(&format!("\n-- migration V{}__{}\n", m.version(), m.name()));
        out.push_str(m.sql().unwrap_or_default());
        out.push_str(&format!(
            "\ninsert into {} (version, name, applied_on, checksum) values ({}, '{}', \
             to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '{}');\n",
            migrate::HISTORY_TABLE,
            m.version(),
            m.name(),
            m.checksum()
        ));
    }
    for (name, sql) in migrate::FUNCTIONS {
        out.push_str(&format!("\n-- sql/functions/{name}\n"));
        out.push_str(sql);
    }
    out.push('\n');
    out.push_str(&migrate::record_functions_sql());
    out.push_str("\ncommit;\n");
    out
}
