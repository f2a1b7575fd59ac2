//! Retention: deletes old events from the log, by position and age.
//!
//! Every replica runs a prune task; each run calls `rowcast.prune()` (SQL, in
//! `migrations/`) batch after batch. A position goes once it is both more than
//! `keep_events` behind the last one and was *sequenced* more than `max_age` ago (the
//! time of sequencing, not of the change: a long transaction's events are old when they
//! get a position). Event rows are deleted only through the log rows that point to them,
//! so an event without a position, whose transaction is still open or not yet sequenced,
//! is never touched. Only one session prunes at a time; the others skip the round.
//!
//! Every batch raises `rowcast.sequencer.pruned_pos` in the same transaction as its
//! deletes; readers compare a resume's `since` with it and answer `reset` (WebSocket,
//! SSE) or 410 (HTTP) instead of leaving a silent gap.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

use crate::capture::log;
use crate::db::{self, DbError};

/// Longest one prune batch may take.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

const PRUNE_SQL: &str = "select rowcast.prune($1, make_interval(secs => $2), $3)";

/// How much of the log to keep.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// The last this many positions are always kept (`i64::MAX`: keep everything).
    pub keep_events: i64,
    /// Positions sequenced less than this long ago are always kept.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Time between prune runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most log rows deleted per batch (one transaction).
    pub batch: i32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep_events: 1_000_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
            interval: Duration::from_secs(60),
            batch: 10_000,
        }
    }
}

/// What a prune run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Log rows (and as many event rows) deleted.
    pub deleted: i64,
    /// Every position at or below this one is gone.
    pub pruned_pos: i64,
}

/// Prunes everything retention allows now, batch after batch, on `client`.
pub async fn prune_once(client: &Client, config: &RetentionConfig) -> Result<Pruned, DbError> {
    let stmt = client.prepare(PRUNE_SQL).await?;
    prune_batches(client, &stmt, config, &CancellationToken::new()).await
}

/// Runs batches until one comes back short or `stop` is cancelled.
async fn prune_batches(
    client: &Client,
    stmt: &Statement,
    config: &RetentionConfig,
    stop: &CancellationToken,
) -> Result<Pruned, DbError> {
    let mut deleted = 0;
    while !stop.is_cancelled() {
        let n = batch(client, stmt, config).await?;
        deleted += n.max(0);
        if n < i64::from(config.batch) {
            break;
        }
    }
    let pruned_pos = log::pruned_position(client).await?;
    Ok(Pruned {
        deleted,
        pruned_pos,
    })
}

/// One batch: the number of log rows deleted, or -1 if another session was pruning.
async fn batch(
    client: &Client,
    stmt: &Statement,
    config: &RetentionConfig,
) -> Result<i64, DbError> {
    let row = db::with_timeout(
        BATCH_TIMEOUT,
        client.query_one(
            stmt,
            &[
                &config.keep_events.max(0),
                &config.max_age.as_secs_f64(),
                &config.batch.max(1),
            ],
        ),
    )
    .await?;
    Ok(row.get(0))
}

/// Prunes every `interval` until `shutdown`, on pooled connections. Failures are logged
/// and retried at the next interval; a run stops between batches at shutdown.
pub(crate) async fn run(pool: Pool, config: RetentionConfig, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(config.interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match run_once(&pool, &config, &shutdown).await {
            Ok(pruned) if pruned.deleted > 0 => {
                tracing::info!(
                    deleted = pruned.deleted,
                    pruned_pos = pruned.pruned_pos,
                    "pruned the log"
                );
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "pruning the log failed; retrying at the next interval");
            }
        }
    }
}

async fn run_once(
    pool: &Pool,
    config: &RetentionConfig,
    shutdown: &CancellationToken,
) -> Result<Pruned, DbError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(PRUNE_SQL).await?;
    prune_batches(&client, &stmt, config, shutdown).await
}
