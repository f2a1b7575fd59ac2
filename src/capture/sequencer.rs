//! The sequencer: gives committed events their gap-free positions.
//!
//! Every replica runs one, on a dedicated connection, and one at a time sequences: the
//! one holding a session advisory lock (the leader). The others stand by, checking every
//! `standby_check` whether the lock is free, and whether committed events have waited
//! with no position handed out ([`stall`]) for `takeover_after`: then the leader is frozen
//! or its link silent, and they end its backend (which frees the lock) and take over. The
//! leader waits for the capture trigger's wake-up (`rowcast_wake`), a short re-check timer
//! or the fallback timer (`poll` tables send no wake-up), runs batches of
//! `rowcast.sequence_step()` until one comes back short, and, in the same round trip once a
//! batch has committed, reads what it sequenced and offers it to this replica's tailer. The counter row's lock,
//! taken per batch with `skip locked`, is what keeps two sequencers from handing out a
//! position twice; a batch holds it only while it runs, never while a result is sent, so a
//! replica that stops reading cannot hold it. The wake-up flag (`rowcast.rearm()`) keeps
//! writers from sending a NOTIFY each. docs/architecture.md ("Sequencing", "The wake-up")
//! has the reasoning and the bounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::TryFutureExt;
use tokio_util::sync::CancellationToken;

use crate::capture::log::{self, Changes};
use crate::capture::stall::{self, StallWatch};
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
    /// long (`idle_in_transaction_session_timeout`), so a session that took the counter
    /// row by hand and went silent cannot hold it.
    #[serde(with = "humantime_serde")]
    pub(crate) abandon_after: Duration,
    /// How often a standing-by sequencer checks whether it should sequence.
    #[serde(with = "humantime_serde")]
    pub(crate) standby_check: Duration,
    /// How long committed events may wait with no position handed out before a
    /// standing-by replica ends the leader's session and takes over.
    #[serde(with = "humantime_serde")]
    pub takeover_after: Duration,
    /// How long committed events may wait with no position handed out before `/readyz`
    /// fails (no replica sequences).
    #[serde(with = "humantime_serde")]
    pub stall_limit: Duration,
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
            standby_check: Duration::from_millis(500),
            takeover_after: Duration::from_secs(2),
            stall_limit: Duration::from_secs(5),
        }
    }
}

/// Runs the sequencer until `shutdown` is cancelled, reconnecting with backoff.
/// A batch in flight when shutdown comes is finished first. With a `feed`, every round
/// also reads the log after the local tailer's head and offers it what it read (see
/// [`crate::capture::tail`]). `leading` is set while this replica sequences.
pub(crate) async fn run(
    pg: tokio_postgres::Config,
    config: SequencerConfig,
    feed: Option<Feed>,
    leading: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut backoff = db::reconnect_backoff();
    while !shutdown.is_cancelled() {
        let result = session(
            &pg,
            &config,
            feed.as_ref(),
            &leading,
            &shutdown,
            &mut backoff,
        )
        .await;
        leading.store(false, Ordering::Release);
        match result {
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

/// The session advisory lock whose holder sequences.
const LEADER_LOCK: i64 = 0x726f_7763_6173_7402;

/// Ends the backend holding [`LEADER_LOCK`] in this database (not the caller's own).
const END_LEADER_SQL: &str = "select pg_terminate_backend(l.pid) from pg_locks l \
     where l.locktype = 'advisory' and l.granted and l.pid <> pg_backend_pid() \
       and l.database = (select oid from pg_database where datname = current_database()) \
       and ((l.classid::int8 << 32) | l.objid::int8) = $1 and l.objsubid = 1";

/// One connection's life: returns `Ok` on shutdown, `Err` when the connection fails.
async fn session(
    pg: &tokio_postgres::Config,
    config: &SequencerConfig,
    feed: Option<&Feed>,
    leading: &AtomicBool,
    shutdown: &CancellationToken,
    backoff: &mut backon::ExponentialBackoff,
) -> Result<(), DbError> {
    let listener = Listener::connect(pg, &[]).await?;
    listener
        .client
        .batch_execute(&format!(
            "set idle_in_transaction_session_timeout = {}; set statement_timeout = {}",
            config.abandon_after.as_millis(),
            config.statement_timeout.as_millis()
        ))
        .await?;
    *backoff = db::reconnect_backoff();
    ::metrics::gauge!(crate::metrics::SEQUENCER_LEADING).set(0.0);
    tracing::info!("sequencer connected");
    if !stand_by(&listener, config, shutdown).await? {
        return Ok(());
    }
    ::metrics::gauge!(crate::metrics::SEQUENCER_LEADING).set(1.0);
    leading.store(true, Ordering::Release);
    tracing::info!("sequencing: this replica hands out positions");
    let result = lead(&listener, config, feed, shutdown).await;
    leading.store(false, Ordering::Release);
    ::metrics::gauge!(crate::metrics::SEQUENCER_LEADING).set(0.0);
    result
}

/// Stands by until this connection holds [`LEADER_LOCK`] (true) or shutdown (false):
/// tries the lock every `standby_check`, and ends the holder's session when committed
/// events have waited `takeover_after` with no position handed out.
async fn stand_by(
    listener: &Listener,
    config: &SequencerConfig,
    shutdown: &CancellationToken,
) -> Result<bool, DbError> {
    let try_lock = listener
        .client
        .prepare("select pg_try_advisory_lock($1)")
        .await?;
    let watch = StallWatch::default();
    let mut announced = false;
    loop {
        let led: bool = db::with_timeout(
            config.statement_timeout,
            listener.client.query_one(&try_lock, &[&LEADER_LOCK]),
        )
        .await?
        .get(0);
        if led {
            return Ok(true);
        }
        if !announced {
            tracing::info!("standing by: another replica sequences");
            announced = true;
        }
        let sample =
            db::with_timeout(config.statement_timeout, stall::sample(&listener.client)).await?;
        let now = Instant::now();
        watch.observe(sample, now);
        let stalled = watch.stalled_for(now);
        if stalled >= config.takeover_after {
            let ended = db::with_timeout(
                config.statement_timeout,
                listener.client.query(END_LEADER_SQL, &[&LEADER_LOCK]),
            )
            .await?;
            metrics::counter!(crate::metrics::SEQUENCER_TAKEOVERS).increment(1);
            tracing::warn!(
                stalled = ?stalled,
                ended = ended.len(),
                "the sequencing replica handed out no position while events waited: ending its session to take over"
            );
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(config.standby_check) => {}
            _ = listener.closed() => return Err(DbError::Closed),
            _ = shutdown.cancelled() => return Ok(false),
        }
    }
}

/// Sequences until shutdown (`Ok`) or the connection fails.
async fn lead(
    listener: &Listener,
    config: &SequencerConfig,
    feed: Option<&Feed>,
    shutdown: &CancellationToken,
) -> Result<(), DbError> {
    // LISTEN only while leading: the writers' wake-ups go to the one sequencer.
    listener.client.batch_execute("listen rowcast_wake").await?;
    let rearm = listener.client.prepare("select rowcast.rearm()").await?;
    let step = listener.client.prepare(BATCH_SQL).await?;
    let read = listener.client.prepare(log::RANGE_SQL).await?;
    let mut recheck = config.recheck_min;
    let limit = config.batch_limit;
    // The position right before the last hand-off to the tailer.
    let mut offered_after = i64::MIN;
    loop {
        // Clear the flag (committed), sequence, then read what was sequenced after the
        // local tailer's head: one round trip, three statements each in its own
        // transaction (tokio-postgres ends every query with a Sync), sent in this order
        // (all three are prepared, so each goes out on its first poll, and `biased`
        // polls them in order). The batch's result is one small row, sent after the
        // counter row is released, and the read sees the batch committed. While the
        // tailer has not yet published what came before the last hand-off, it is behind
        // and will read for itself: no read then, so a lagging tailer does not make every
        // round read the same rows again. (The last hand-off itself may still be on its
        // way: the read then repeats it, and the tailer skips what it already has.)
        let round = feed.map(Feed::round);
        let after = feed.map(Feed::head).filter(|&head| head >= offered_after);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&limit];
        let started = Instant::now();
        let result = db::with_timeout(config.statement_timeout, async {
            let sequenced = async {
                match (feed, after) {
                    (Some(feed), Some(after)) => {
                        log::read_range(&listener.client, &read, after, i64::MAX, feed.batch())
                            .await
                    }
                    _ => Ok(Changes::new()),
                }
            };
            tokio::try_join!(
                biased;
                listener
                    .client
                    .query_one(&rearm, &[])
                    .map_err(DbError::from),
                listener
                    .client
                    .query_one(&step, &params)
                    .map_err(DbError::from),
                sequenced,
            )
        })
        .await;
        let (armed, batch, changes) = result?;
        let n: i64 = batch.try_get(0)?;
        let in_progress: bool = batch.try_get(1)?;
        if let Some(first) = changes.first() {
            offered_after = log::position(first) - 1;
        }
        if let Some(round) = round {
            round.offer(changes);
        }
        // Failed and timed-out rounds too: they are the slow ones.
        metrics::histogram!(crate::metrics::SEQUENCER_ROUND).record(started.elapsed());
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

/// One batch: `rowcast.sequence_step(batch_limit)`, which returns how many events it
/// sequenced (-1 when another session held the counter row) and whether its snapshot
/// showed transactions in progress.
const BATCH_SQL: &str = "select sequenced, in_progress from rowcast.sequence_step($1)";
