//! The sequencer: gives committed events their gap-free positions.
//!
//! Every replica runs one, on a dedicated connection. It waits for the capture trigger's
//! wake-up (`rowcast_wake`), a short re-check timer or the fallback timer (`poll` tables
//! send no wake-up), then runs batches of `rowcast.sequence_step_changes()` until one
//! comes back short, and offers what each sequenced to this replica's tailer. The counter
//! row's lock, taken per batch with `skip locked`, is the leadership; the wake-up flag
//! (`rowcast.rearm()`) keeps writers from sending a NOTIFY each. docs/architecture.md
//! ("Sequencing", "The wake-up") has the reasoning and the latency bound.

use std::time::Duration;

use futures_util::TryFutureExt;
use tokio_util::sync::CancellationToken;

use crate::capture::log::{self, Changes};
use crate::capture::tail::Feed;
use crate::db::{self, DbError, Listener};

/// Settings of the sequencer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SequencerConfig {
    /// Longest wait between batches without a wake-up (the latency of `poll` tables).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// First re-check delay after a batch whose snapshot showed transactions in progress
    /// (a writer among them may have sent no wake-up).
    #[serde(with = "humantime_serde")]
    pub(crate) recheck_min: Duration,
    /// Longest re-check delay: the re-check doubles up to it while transactions stay in
    /// progress and no events come.
    #[serde(with = "humantime_serde")]
    pub(crate) recheck_max: Duration,
    /// Most events per batch (one transaction).
    pub(crate) batch_limit: i32,
    /// Longest time one batch may take before the connection is considered dead.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// PostgreSQL ends a sequencer session that stays idle inside a transaction this
    /// long (`idle_in_transaction_session_timeout`), so a sequencer whose link went
    /// silent mid-batch cannot hold the counter row: another replica takes over.
    #[serde(with = "humantime_serde")]
    pub(crate) abandon_after: Duration,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig {
            poll_interval: Duration::from_millis(100),
            recheck_min: Duration::from_millis(1),
            recheck_max: Duration::from_millis(10),
            batch_limit: 10_000,
            statement_timeout: Duration::from_secs(30),
            abandon_after: Duration::from_secs(10),
        }
    }
}

/// Runs the sequencer until `shutdown` is cancelled, reconnecting with backoff.
/// A batch in flight when shutdown comes is finished first. With a `feed`, every round
/// also reads the log after the local tailer's head and offers it what it read (see
/// [`crate::capture::tail`]).
pub(crate) async fn run(
    pg: tokio_postgres::Config,
    config: SequencerConfig,
    feed: Option<Feed>,
    shutdown: CancellationToken,
) {
    let mut backoff = db::reconnect_backoff();
    while !shutdown.is_cancelled() {
        match session(&pg, &config, feed.as_ref(), &shutdown, &mut backoff).await {
            Ok(()) => return,
            Err(err) => {
                metrics::counter!(crate::metrics::RECONNECTS, "role" => "sequencer").increment(1);
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %err, retry_in = ?delay, "sequencer connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// One connection's life: returns `Ok` on shutdown, `Err` when the connection fails.
async fn session(
    pg: &tokio_postgres::Config,
    config: &SequencerConfig,
    feed: Option<&Feed>,
    shutdown: &CancellationToken,
    backoff: &mut backon::ExponentialBackoff,
) -> Result<(), DbError> {
    let listener = Listener::connect(pg, &["rowcast_wake"]).await?;
    // A backend whose client vanished mid-batch must not keep the counter row locked.
    listener
        .client
        .batch_execute(&format!(
            "set idle_in_transaction_session_timeout = {}; set statement_timeout = {}",
            config.abandon_after.as_millis(),
            config.statement_timeout.as_millis()
        ))
        .await?;
    let rearm = listener.client.prepare("select rowcast.rearm()").await?;
    let step = listener.client.prepare(BATCH_SQL).await?;
    tracing::info!("sequencer connected");
    *backoff = db::reconnect_backoff();
    let mut recheck = config.recheck_min;
    let limit = config.batch_limit;
    // How many of a batch's changes it returns: what the local tailer takes in one offer.
    let changes_limit = feed.map_or(0, |feed| i32::try_from(feed.batch()).unwrap_or(i32::MAX));
    loop {
        // Clear the flag (committed), then sequence: one round trip, two statements each
        // in its own transaction. With a local tailer the batch also returns what it
        // sequenced, for the hand-off.
        let round = feed.map(Feed::round);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&limit, &changes_limit];
        let started = std::time::Instant::now();
        let result = db::with_timeout(config.statement_timeout, async {
            tokio::try_join!(
                listener
                    .client
                    .query_one(&rearm, &[])
                    .map_err(DbError::from),
                listener.client.query(&step, &params).map_err(DbError::from),
            )
        })
        .await;
        // Failed and timed-out rounds too: they are the slow ones.
        metrics::histogram!(crate::metrics::SEQUENCER_ROUND).record(started.elapsed());
        let (armed, rows) = result?;
        let Batch {
            sequenced: n,
            in_progress,
            changes,
        } = Batch::from_rows(&rows)?;
        if let Some(round) = round {
            round.offer(changes);
        }
        let armed: bool = armed.get(0);
        if n > 0 {
            metrics::counter!(crate::metrics::EVENTS_SEQUENCED).increment(n as u64);
            tracing::debug!(events = n, "sequenced");
        }
        if n >= i64::from(config.batch_limit) {
            continue;
        }
        if n > 0 {
            recheck = config.recheck_min;
        }
        // A short re-check while a writer may have committed without a wake-up (see the
        // module docs); otherwise the next wake-up, or the fallback timer.
        let wait = if n < 0 || in_progress || !armed {
            let wait = recheck;
            recheck = (recheck * 2).min(config.recheck_max);
            wait
        } else {
            recheck = config.recheck_min;
            config.poll_interval
        };
        tokio::select! {
            _ = listener.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = listener.closed() => return Err(DbError::Closed),
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// One batch: `rowcast.sequence_step_changes(batch_limit, changes_limit)`, which returns
/// the first `changes_limit` changes it sequenced (in [`log::RANGE_SQL`]'s columns),
/// then a row whose position is null with how many it sequenced and whether its snapshot
/// showed transactions in progress.
const BATCH_SQL: &str = "select * from rowcast.sequence_step_changes($1, $2)";

/// What one batch did.
struct Batch {
    /// Events sequenced, or -1 when another replica held the counter row.
    sequenced: i64,
    /// The batch's snapshot showed transactions in progress (or a pass is unfinished).
    in_progress: bool,
    /// The first changes it sequenced, in position order.
    changes: Changes,
}

impl Batch {
    fn from_rows(rows: &[tokio_postgres::Row]) -> Result<Batch, DbError> {
        let (summary, changes) = rows.split_last().ok_or(DbError::Unexpected(
            "rowcast.sequence_step_changes() returned no rows",
        ))?;
        if summary.try_get::<_, Option<i64>>("pos")?.is_some() {
            return Err(DbError::Unexpected(
                "rowcast.sequence_step_changes() did not end with its summary row",
            ));
        }
        Ok(Batch {
            sequenced: summary.try_get("sequenced")?,
            in_progress: summary.try_get("in_progress")?,
            changes: changes.iter().map(log::change_from_row).collect(),
        })
    }
}
