//! The sequencer: gives committed events their gap-free positions.
//!
//! Every replica runs one. It waits on a dedicated connection for the capture
//! trigger's wake-up (`rowcast_wake`) or a fallback timer (tables in `poll` mode send no
//! wake-up), then calls `rowcast.sequence()` until a batch comes back short.
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

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::{self, DbError, Listener};

/// Settings of the sequencer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SequencerConfig {
    /// Longest wait between batches without a wake-up (the latency of `poll` tables).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
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
            batch_limit: 10_000,
            statement_timeout: Duration::from_secs(30),
            abandon_after: Duration::from_secs(10),
        }
    }
}

/// Runs the sequencer until `shutdown` is cancelled, reconnecting with backoff.
/// A batch in flight when shutdown comes is finished first.
pub async fn run(pg: tokio_postgres::Config, config: SequencerConfig, shutdown: CancellationToken) {
    let mut backoff = db::reconnect_backoff();
    while !shutdown.is_cancelled() {
        match session(&pg, &config, &shutdown, &mut backoff).await {
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
    let stmt = listener
        .client
        .prepare("select rowcast.sequence($1)")
        .await?;
    tracing::info!("sequencer connected");
    *backoff = db::reconnect_backoff();
    loop {
        // Sequence until a batch comes back short (or another replica holds the row).
        loop {
            let n: i64 = db::with_timeout(
                config.statement_timeout,
                listener.client.query_one(&stmt, &[&config.batch_limit]),
            )
            .await?
            .get(0);
            if n > 0 {
                metrics::counter!(crate::metrics::EVENTS_SEQUENCED).increment(n as u64);
                tracing::debug!(events = n, "sequenced");
            }
            if n < i64::from(config.batch_limit) {
                break;
            }
        }
        tokio::select! {
            _ = listener.notified() => {}
            _ = tokio::time::sleep(config.poll_interval) => {}
            _ = listener.closed() => return Err(DbError::Closed),
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}
