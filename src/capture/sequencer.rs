//! The sequencer: gives committed events their gap-free positions.
//!
//! Every replica runs one. It waits on a dedicated connection for the capture
//! trigger's wake-up (`rowcast_wake`), a short re-check timer or a fallback timer (tables
//! in `poll` mode send no wake-up), then calls `rowcast.sequence_step_changes()` (one
//! batch of `rowcast.sequence_step()`, returning what it sequenced for this replica's
//! tailer) until a batch comes back short.
//!
//! Why not simply read `where id > last_id`: ids and transaction ids are handed out
//! when a transaction writes, not when it commits, so a transaction holding an early id
//! can commit after a later one was read, and an id-following reader skips it forever.
//! `rowcast.sequence()` instead compares each event's transaction id with the snapshot
//! of its previous batch: whatever became visible since then is new, whatever is still
//! in progress waits for a later batch, and rolled-back work never becomes visible.
//! Within a batch it orders by id, which keeps each row's changes in order (a second
//! change to a row waits for the first one's commit, so its id is larger). See the
//! comment on `rowcast.sequence` in `migrations/` for the whole argument.
//!
//! Leadership is the counter row's lock, taken per batch with `skip locked`: a replica
//! that finds it taken does nothing. The lock belongs to the batch's transaction, so a
//! dead connection cannot hold it past `idle_in_transaction_session_timeout`.
//!
//! # Wake-up
//!
//! NOTIFY serialises the commits of the transactions that send it, so writers to
//! `notify` tables do not send one each. They share a one-row unlogged flag,
//! `rowcast.wake`:
//!
//! - a writer inserts its event, then reads the flag's hint, a sequence
//!   (`rowcast.wake_hint`, read by a function call, so no query and no lock). Set: it
//!   does nothing more. Clear: it tries to take the flag row with `for update skip
//!   locked`; if it gets it and the flag is clear, it sets the flag and the hint and
//!   NOTIFYs (on commit); if the row is locked (another writer just set it and has not
//!   committed, or the sequencer is clearing it) or already set, it goes on without. No
//!   writer ever waits on the flag. The hint is not transactional: one left set by a
//!   writer that then rolled back is cleared by the next round, like the flag.
//! - before every batch the sequencer clears the flag and the hint, in a transaction of
//!   its own that commits before the batch's snapshot is taken (`rowcast.rearm()`,
//!   pipelined with the batch: one round trip), so the first writer after that read
//!   sends the next NOTIFY.
//!
//! The race: a writer that saw the flag set before the clear, and commits after the
//! batch's snapshot, sends no NOTIFY and is not in the batch. Such a writer was in
//! progress (with a transaction id, taken by its event insert) when the snapshot was
//! taken, so the batch reports `in_progress` and the sequencer reads again after
//! [`SequencerConfig::recheck_min`], doubling up to [`SequencerConfig::recheck_max`]
//! while transactions stay in progress (a backoff, since the open transactions may be
//! anyone's), back to the minimum whenever a batch finds events. The same short re-check
//! runs when the flag could not be cleared (its row locked by a writer) and when another
//! replica held the counter row (its batch may predate this clear).
//!
//! Latency bound, from commit to position, with the sequencer idle and connected:
//! - the writer that set the flag: one NOTIFY delivery plus one batch;
//! - a writer that found the flag set or locked and committed after the read: at most
//!   the current re-check interval, so at most `recheck_max` (10 ms by default), and
//!   `recheck_min` (1 ms) while events keep coming;
//! - a writer that found the row locked by a writer that then *rolled back* (so no
//!   NOTIFY came) and committed while no re-check was pending: the fallback timer,
//!   [`SequencerConfig::poll_interval`]. `poll` tables always wait for this timer.
//!
//! Writers outside read committed NOTIFY every transaction (their snapshot may show a
//! stale flag, and locking a row changed since would fail them); a crash empties the
//! unlogged flag table, writers NOTIFY every transaction until `rearm()` re-seeds it on
//! the sequencer's next round.

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
    pub recheck_min: Duration,
    /// Longest re-check delay: the re-check doubles up to it while transactions stay in
    /// progress and no events come.
    #[serde(with = "humantime_serde")]
    pub recheck_max: Duration,
    /// Most events per batch (one transaction).
    pub batch_limit: i32,
    /// Longest time one batch may take before the connection is considered dead.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// PostgreSQL ends a sequencer session that stays idle inside a transaction this
    /// long (`idle_in_transaction_session_timeout`), so a sequencer whose link went
    /// silent mid-batch cannot hold the counter row: another replica takes over.
    #[serde(with = "humantime_serde")]
    pub abandon_after: Duration,
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
pub async fn run(
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
    let step = listener.client.prepare(STEP_SQL).await?;
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
        let Step {
            sequenced: n,
            in_progress,
            changes,
        } = Step::from_rows(&rows)?;
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
const STEP_SQL: &str = "select * from rowcast.sequence_step_changes($1, $2)";

/// What one batch did.
struct Step {
    /// Events sequenced, or -1 when another replica held the counter row.
    sequenced: i64,
    /// The batch's snapshot showed transactions in progress (or a pass is unfinished).
    in_progress: bool,
    /// The first changes it sequenced, in position order.
    changes: Changes,
}

impl Step {
    fn from_rows(rows: &[tokio_postgres::Row]) -> Result<Step, DbError> {
        let (summary, changes) = rows.split_last().ok_or(DbError::Unexpected(
            "rowcast.sequence_step_changes() returned no rows",
        ))?;
        if summary.try_get::<_, Option<i64>>(0)?.is_some() {
            return Err(DbError::Unexpected(
                "rowcast.sequence_step_changes() did not end with its summary row",
            ));
        }
        Ok(Step {
            sequenced: summary.try_get(8)?,
            in_progress: summary.try_get(9)?,
            changes: changes.iter().map(log::change_from_row).collect(),
        })
    }
}
