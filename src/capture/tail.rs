//! The tailer: follows the sequenced log and publishes every event to the hub.
//!
//! Every replica runs one, on a dedicated connection: it LISTENs on `rowcast_seq` first
//! and only then reads `pos > cursor`, so a wake-up sent between the read and the wait
//! cannot be missed. Notifications sent while it is disconnected are lost, which does
//! not matter: after every (re)connect it reads everything after its cursor.
//!
//! Without a wake-up it reads anyway every `poll_interval`; that read, bounded by
//! `probe_timeout`, is also the probe that notices a silently dead connection.
//!
//! If retention pruned positions this replica had not read yet (it fell further behind
//! than `keep_events`), its sessions are dropped rather than fed a stream with a gap.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Statement;
use tokio_util::sync::CancellationToken;

use crate::capture::log::{self, Change};
use crate::db::{self, DbError, Listener};
use crate::events::{self, Event, Mappings};
use crate::hub::{Hub, Published};

/// Settings of the tailer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TailConfig {
    /// Longest wait between reads without a wake-up.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest time a read may take before the connection is considered dead.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Most events per read.
    pub batch: i64,
}

impl Default for TailConfig {
    fn default() -> Self {
        TailConfig {
            poll_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(5),
            batch: 2_000,
        }
    }
}

/// Turns a change into what the hub sends: its event, serialised once. The change's
/// mapping must be in `mappings` ([`Mappings::load_missing`] before a batch); a change
/// whose mapping is not is delivered as a generic event, counted and logged.
pub fn publishable(change: &Change, mappings: &Mappings) -> Arc<Published> {
    let mapping = mappings.for_change(change);
    let event = Event::of(
        change,
        mapping.as_ref().map(Option::as_deref).map_err(Clone::clone),
    );
    let mapping = mapping.ok().flatten();
    Arc::new(Published {
        pos: change.pos,
        event: event.name(),
        topics: change.topics.clone(),
        frame: events::frame(change, &event, mapping.as_deref()).into(),
    })
}

/// Follows the log from the hub's head until `shutdown`, reconnecting with backoff.
pub async fn run(
    pg: tokio_postgres::Config,
    config: TailConfig,
    hub: Arc<Hub>,
    mappings: Arc<Mappings>,
    shutdown: CancellationToken,
) {
    let mut backoff = db::reconnect_backoff();
    while !shutdown.is_cancelled() {
        match session(&pg, &config, &hub, &mappings, &shutdown, &mut backoff).await {
            Ok(()) => return,
            Err(err) => {
                hub.set_feed_live(false);
                metrics::counter!(crate::metrics::RECONNECTS, "role" => "tailer").increment(1);
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %err, retry_in = ?delay, "tailer connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

async fn session(
    pg: &tokio_postgres::Config,
    config: &TailConfig,
    hub: &Hub,
    mappings: &Mappings,
    shutdown: &CancellationToken,
    backoff: &mut backon::ExponentialBackoff,
) -> Result<(), DbError> {
    let listener = Listener::connect(pg, &["rowcast_seq"]).await?;
    let stmt = listener.client.prepare(log::RANGE_SQL).await?;
    tracing::info!(head = hub.head(), "tailer connected");
    *backoff = db::reconnect_backoff();
    loop {
        catch_up(&listener, &stmt, config, hub, mappings).await?;
        hub.set_feed_live(true);
        tokio::select! {
            _ = listener.notified() => {}
            _ = tokio::time::sleep(config.poll_interval) => {}
            _ = listener.closed() => return Err(DbError::Closed),
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Reads and publishes everything after the hub's head.
async fn catch_up(
    listener: &Listener,
    stmt: &Statement,
    config: &TailConfig,
    hub: &Hub,
    mappings: &Mappings,
) -> Result<(), DbError> {
    loop {
        let cursor = hub.head();
        let rows = db::with_timeout(
            config.probe_timeout,
            log::read_range(&listener.client, stmt, cursor, i64::MAX, config.batch),
        )
        .await?;
        db::with_timeout(
            config.probe_timeout,
            mappings.load_missing(&listener.client, &rows),
        )
        .await?;
        let full = rows.len() as i64 >= config.batch;
        // Positions are gap-free and become visible a whole batch at a time, so a first
        // row past `cursor + 1` means retention pruned what this replica had not read
        // yet. Its live sessions would miss those events without knowing: drop them all,
        // and their clients resume with `since` and get a `reset`.
        let first = rows.first().map(|row| match row {
            Ok(change) => change.pos,
            Err(err) => err.pos,
        });
        if let Some(first) = first
            && first > cursor + 1
        {
            let dropped = hub.drop_all();
            tracing::warn!(
                cursor,
                first,
                dropped,
                "the log was pruned past this replica's head: dropping every session so clients resume"
            );
        }
        let mut batch = Vec::with_capacity(rows.len());
        let mut last = cursor;
        for row in rows {
            match row {
                Ok(change) => {
                    last = change.pos;
                    batch.push(publishable(&change, mappings));
                }
                // Only a hand-edited log can get here; the position is skipped loudly.
                Err(err) => {
                    last = err.pos;
                    tracing::error!(error = %err, "skipping unreadable log row");
                }
            }
        }
        metrics::counter!(crate::metrics::EVENTS_PUBLISHED).increment(batch.len() as u64);
        hub.publish(&batch, last);
        if !full {
            return Ok(());
        }
    }
}
