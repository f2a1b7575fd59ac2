//! Connections to PostgreSQL.
//!
//! Two kinds: a pool (`deadpool-postgres`) for short queries such as replay reads, and
//! dedicated connections for the sequencer and the tailer, which LISTEN and therefore
//! cannot be pooled. A dedicated connection is driven by `poll_message`, so
//! notifications reach the owner instead of being dropped, and it reports its own death.
//! Both kinds use TCP keepalives so a half-open link is noticed.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::stream::{self, StreamExt};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;

/// Errors talking to PostgreSQL. Each says why in one line: PostgreSQL's own message
/// when it answered, else the network cause ([`describe_pg`]).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The connection string could not be parsed.
    #[error("invalid database url: {}", describe_pg(.0))]
    BadUrl(#[source] tokio_postgres::Error),
    /// A query or connection attempt failed.
    #[error("postgres: {}", describe_pg(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No pooled connection could be had.
    #[error("postgres: {}", describe_pool(.0))]
    Pool(deadpool_postgres::PoolError),
    /// The pool could not be built.
    #[error("postgres pool setup: {0}")]
    PoolBuild(#[from] deadpool_postgres::BuildError),
    /// A dedicated connection ended.
    #[error("postgres connection closed")]
    Closed,
    /// A query did not answer in time (a silent link, or an overloaded server).
    #[error("postgres did not answer within {0:?}")]
    Timeout(Duration),
    /// A query answered with rows of another shape than the schema promises.
    #[error("postgres answered unexpectedly: {0}")]
    Unexpected(&'static str),
}

// By hand rather than `#[from]`: the pool's own wording ("Error occurred while creating a
// new object: db error") is replaced by the cause, so it is not offered as a source.
impl From<deadpool_postgres::PoolError> for DbError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        DbError::Pool(err)
    }
}

/// A PostgreSQL error in one line: the server's message (with its detail and hint) when
/// the server answered, else what failed and its cause (`error connecting to server:
/// Connection refused (os error 111)`).
pub fn describe_pg(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut out = db.message().to_string();
        if let Some(detail) = db.detail() {
            out.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            out.push_str(&format!(" (hint: {hint})"));
        }
        return out;
    }
    let mut out = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(&format!(": {text}"));
        }
        source = cause.source();
    }
    out
}

/// Why the pool had no connection, in one line.
fn describe_pool(err: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::{HookError, PoolError, TimeoutType};
    match err {
        PoolError::Backend(err) | PoolError::PostCreateHook(HookError::Backend(err)) => {
            describe_pg(err)
        }
        PoolError::PostCreateHook(HookError::Message(message)) => message.to_string(),
        PoolError::Timeout(TimeoutType::Create) => "connecting timed out".into(),
        PoolError::Timeout(TimeoutType::Wait) => {
            "every pooled connection stayed busy (pool_size)".into()
        }
        PoolError::Timeout(TimeoutType::Recycle) => "checking a pooled connection timed out".into(),
        other => other.to_string(),
    }
}

/// Why a connection could not be made, in one line: PostgreSQL's answer when it gave one
/// (a missing database, a refused login), else the network cause and where to look.
pub fn connect_failure(err: &DbError) -> String {
    let answered = match err {
        DbError::Postgres(err) => err.as_db_error().is_some(),
        DbError::Pool(deadpool_postgres::PoolError::Backend(err)) => err.as_db_error().is_some(),
        _ => false,
    };
    let reason = match err {
        DbError::Postgres(err) => describe_pg(err),
        DbError::Pool(err) => describe_pool(err),
        other => other.to_string(),
    };
    if answered {
        reason
    } else {
        format!("{reason} (is it running, and is the url right?)")
    }
}

impl DbError {
    /// Whether PostgreSQL answered that a relation, schema or function does not exist:
    /// the rowcast schema is not installed (or was removed while the service ran).
    pub(crate) fn is_schema_missing(&self) -> bool {
        let err = match self {
            DbError::Postgres(err) => err,
            DbError::Pool(deadpool_postgres::PoolError::Backend(err)) => err,
            _ => return false,
        };
        use tokio_postgres::error::SqlState;
        err.code().is_some_and(|code| {
            [
                SqlState::UNDEFINED_TABLE,
                SqlState::INVALID_SCHEMA_NAME,
                SqlState::UNDEFINED_FUNCTION,
            ]
            .contains(code)
        })
    }
}

/// Parses a database URL (or libpq key=value string) and turns on what long-lived
/// connections need: TCP keepalives, a connect timeout and an application name.
pub fn pg_config(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(DbError::BadUrl)?;
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(15));
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_application_name().is_none() {
        config.application_name("rowcast");
    }
    Ok(config)
}

/// What every connection of the service sets first: its statements stay on the indexes.
///
/// The service prepares each statement once per connection, and from its sixth run
/// PostgreSQL may keep a generic plan, costed once against the tables as they were then.
/// A service that starts on a new installation prepares its log reads while
/// `rowcast.events` holds a handful of rows, where a hash join over a sequential scan of
/// the events looks cheapest, and kept that plan as the table grew: every read of a few
/// new events scanned all of them. Every query of the service on the log or the events
/// finds its rows through an index (the log by position, events by key), so sequential
/// scans are off; small tables without a usable index are still scanned. So
/// is JIT: a table with no index for a condition (the one-row wake-up flag) is still
/// scanned, at the planner's cost for a disabled scan, far above the threshold where
/// PostgreSQL compiles a query (measured: 100 ms a round).
///
/// Sent as statements, not as the `options` startup parameter, which connection poolers
/// refuse or drop. The pool recycles connections without `DISCARD ALL`, so they last.
pub(crate) const SESSION_SETUP: &str = "set enable_seqscan = off; set jit = off";

/// A pool for short queries; each connection runs [`SESSION_SETUP`] first.
pub fn pool(
    config: &tokio_postgres::Config,
    size: usize,
) -> Result<deadpool_postgres::Pool, DbError> {
    let manager = deadpool_postgres::Manager::from_config(
        config.clone(),
        NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let setup = deadpool_postgres::Hook::async_fn(|client, _| {
        Box::pin(async move {
            client
                .batch_execute(SESSION_SETUP)
                .await
                .map_err(deadpool_postgres::HookError::Backend)
        })
    });
    Ok(deadpool_postgres::Pool::builder(manager)
        .post_create(setup)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?)
}

/// A dedicated connection that LISTENs on some channels.
///
/// Every notification on any channel wakes [`Listener::notified`]; notifications are
/// wake-ups, and [`Listener::latest`] keeps the largest number any payload held.
/// [`Listener::closed`] resolves when the connection ends, whatever the cause.
pub struct Listener {
    /// The client for queries on this connection.
    pub(crate) client: Client,
    wake: Arc<Notify>,
    latest: Arc<AtomicI64>,
    closed: CancellationToken,
}

impl Listener {
    /// Connects, runs [`SESSION_SETUP`], and LISTENs on `channels` before returning, so
    /// no wake-up sent after this returns can be missed.
    pub async fn connect(
        config: &tokio_postgres::Config,
        channels: &[&str],
    ) -> Result<Self, DbError> {
        let (client, mut connection) = config.connect(NoTls).await?;
        let wake = Arc::new(Notify::new());
        let latest = Arc::new(AtomicI64::new(i64::MIN));
        let closed = CancellationToken::new();
        let messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        let (driver_wake, driver_latest, driver_closed) =
            (wake.clone(), latest.clone(), closed.clone());
        tokio::spawn(async move {
            let mut messages = std::pin::pin!(messages);
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(note)) => {
                        // A payload that is not a number counts as "anything may be new".
                        let number = note.payload().parse().unwrap_or(i64::MAX);
                        driver_latest.fetch_max(number, Ordering::Relaxed);
                        driver_wake.notify_one();
                    }
                    Ok(AsyncMessage::Notice(notice)) => {
                        tracing::debug!(notice = %notice.message(), "postgres notice");
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "dedicated postgres connection failed");
                        break;
                    }
                }
            }
            driver_closed.cancel();
        });
        let listener = Listener {
            client,
            wake,
            latest,
            closed,
        };
        listener.client.batch_execute(SESSION_SETUP).await?;
        for channel in channels {
            listener
                .client
                .batch_execute(&format!("listen {channel}"))
                .await?;
        }
        Ok(listener)
    }

    /// Resolves at the next notification (or at once if one arrived since the last call).
    pub async fn notified(&self) {
        self.wake.notified().await;
    }

    /// The largest number a notification's payload held so far (`i64::MAX` after a
    /// payload that is not a number, `i64::MIN` before any notification). The tailer's
    /// channel carries the last sequenced position.
    pub(crate) fn latest(&self) -> i64 {
        self.latest.load(Ordering::Relaxed)
    }

    /// Resolves when the connection has ended.
    pub(crate) async fn closed(&self) {
        self.closed.cancelled().await;
    }
}

/// Runs `fut` with a timeout, turning an elapsed timer into [`DbError::Timeout`].
pub(crate) async fn with_timeout<T, E: Into<DbError>>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(DbError::Timeout(limit)),
    }
}

/// Capped, jittered exponential backoff for reconnecting: 100 ms doubling to 5 s.
pub(crate) fn reconnect_backoff() -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}
