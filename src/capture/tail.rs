//! The tailer: follows the sequenced log and publishes every event to the hub.
//!
//! Every replica runs one, on a dedicated connection: LISTEN on `rowcast_seq` first, then
//! read `pos > cursor`, so no wake-up is missed; it also reads every `poll_interval`,
//! which doubles as the probe of a silently dead connection. The local sequencer hands
//! its batches over through a [`Feed`], saving a NOTIFY and a read. A replica that fell
//! behind retention drops its sessions rather than feed them a gap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_postgres::Statement;
use tokio_util::sync::CancellationToken;

use crate::capture::log::{self, Changes, position};
use crate::db::{self, DbError, Listener};
use crate::events::Mappings;
use crate::hub::Hub;

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

/// How many offers may wait for the tailer; more are dropped (the tailer then reads).
const FEED_DEPTH: usize = 16;

/// The sequencer's end of the hand-off to this replica's tailer (see the module docs).
#[derive(Clone)]
pub struct Feed {
    batch: i64,
    offers: mpsc::Sender<Changes>,
    round: Arc<Round>,
    hub: Arc<Hub>,
}

/// The tailer's end of the hand-off.
pub struct Offers {
    received: mpsc::Receiver<Changes>,
    /// False once no [`Feed`] is left (no sequencer in this process).
    open: bool,
    round: Arc<Round>,
}

/// Whether the local sequencer is in a round, whose read may bring what a NOTIFY
/// announced (so the tailer waits for it rather than read the same rows itself).
#[derive(Default)]
struct Round {
    running: AtomicBool,
    ended: Notify,
}

/// Longest wait for the local sequencer's round before the tailer reads for itself.
const ROUND_WAIT: Duration = Duration::from_millis(50);

/// A round of the local sequencer, from [`Feed::round`]: it ends when dropped, so
/// [`RoundGuard::offer`] (which ends it) always comes before its end.
pub struct RoundGuard<'a>(&'a Feed);

impl RoundGuard<'_> {
    /// Offers changes a batch sequenced (committed, in position order) and ends the
    /// round. Never waits: if the tailer is behind, the offer is dropped and the tailer
    /// reads.
    pub fn offer(self, changes: Changes) {
        if !changes.is_empty() {
            let _ = self.0.offers.try_send(changes);
        }
    }
}

impl Drop for RoundGuard<'_> {
    fn drop(&mut self) {
        let round = &self.0.round;
        round.running.store(false, Ordering::Release);
        round.ended.notify_waiters();
    }
}

/// A hand-off from this replica's sequencer to its tailer.
pub fn feed(config: &TailConfig, hub: Arc<Hub>) -> (Feed, Offers) {
    let (offers, received) = mpsc::channel(FEED_DEPTH);
    let round = Arc::new(Round::default());
    let feed = Feed {
        batch: config.batch,
        offers,
        round: round.clone(),
        hub,
    };
    let offers = Offers {
        received,
        open: true,
        round,
    };
    (feed, offers)
}

impl Offers {
    /// Offers that will never come: for a tailer without a local sequencer.
    pub fn none() -> Offers {
        Offers {
            received: mpsc::channel(1).1,
            open: false,
            round: Arc::default(),
        }
    }
}

impl Feed {
    /// Most changes to hand over in one offer.
    pub(crate) fn batch(&self) -> i64 {
        self.batch
    }

    /// The tailer's head: an offer is of use when it starts right after it.
    pub(crate) fn head(&self) -> i64 {
        self.hub.head()
    }

    /// Starts a round: until it ends, a tailer woken by a NOTIFY waits for this
    /// round's offer before it reads.
    pub fn round(&self) -> RoundGuard<'_> {
        self.round.running.store(true, Ordering::Release);
        RoundGuard(self)
    }
}

/// Follows the log from the hub's head until `shutdown`, reconnecting with backoff.
/// `offers` are the local sequencer's hand-offs ([`feed`]).
pub async fn run(
    pg: tokio_postgres::Config,
    config: TailConfig,
    hub: Arc<Hub>,
    mappings: Arc<Mappings>,
    mut offers: Offers,
    shutdown: CancellationToken,
) {
    let mut backoff = db::reconnect_backoff();
    while !shutdown.is_cancelled() {
        let tail = Tail {
            config: &config,
            hub: &hub,
            mappings: &mappings,
        };
        match tail
            .session(&pg, &mut offers, &shutdown, &mut backoff)
            .await
        {
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

struct Tail<'a> {
    config: &'a TailConfig,
    hub: &'a Hub,
    mappings: &'a Mappings,
}

impl Tail<'_> {
    async fn session(
        &self,
        pg: &tokio_postgres::Config,
        offers: &mut Offers,
        shutdown: &CancellationToken,
        backoff: &mut backon::ExponentialBackoff,
    ) -> Result<(), DbError> {
        let listener = Listener::connect(pg, &["rowcast_seq"]).await?;
        let stmt = listener.client.prepare(log::RANGE_SQL).await?;
        tracing::info!(head = self.hub.head(), "tailer connected");
        *backoff = db::reconnect_backoff();
        // Offers made while this connection was down were dropped or are stale: the
        // first read covers them.
        while offers.received.try_recv().is_ok() {}
        loop {
            self.catch_up(&listener, &stmt).await?;
            self.hub.set_feed_live(true);
            // The fallback read is also the probe of this connection, so it runs every
            // `poll_interval` even while offers keep coming.
            let probe = Instant::now() + self.config.poll_interval;
            loop {
                tokio::select! {
                    _ = listener.notified() => {
                        // A wake-up for positions handed off (or about to be) needs no read.
                        if !self.handed_off(&listener, offers).await? {
                            break;
                        }
                    }
                    offer = offers.received.recv(), if offers.open => match offer {
                        Some(changes) => {
                            if !self.take(&listener, changes).await? {
                                break;
                            }
                        }
                        // No sequencer in this process: NOTIFY and the timer only.
                        None => offers.open = false,
                    },
                    _ = tokio::time::sleep_until(probe) => break,
                    _ = listener.closed() => return Err(DbError::Closed),
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    }

    /// After a NOTIFY: takes the offers already made and, while the local sequencer is
    /// in a round, the one it is about to make (at most [`ROUND_WAIT`]). Returns whether
    /// everything the NOTIFY announced is published; false means read.
    async fn handed_off(&self, listener: &Listener, offers: &mut Offers) -> Result<bool, DbError> {
        let round = offers.round.clone();
        let ended = round.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        let mut waited = !round.running.load(Ordering::Acquire);
        let deadline = Instant::now() + ROUND_WAIT;
        loop {
            while let Ok(changes) = offers.received.try_recv() {
                if !self.take(listener, changes).await? {
                    return Ok(false);
                }
            }
            if listener.latest() <= self.hub.head() {
                return Ok(true);
            }
            if waited || !offers.open {
                return Ok(false);
            }
            tokio::select! {
                _ = ended.as_mut() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            waited = true;
        }
    }

    /// Publishes an offer from the local sequencer: the part after the head, if it
    /// starts right after it. Returns false when the log must be read instead (a gap).
    async fn take(&self, listener: &Listener, mut changes: Changes) -> Result<bool, DbError> {
        let head = self.hub.head();
        changes.retain(|row| position(row) > head);
        match changes.first().map(position) {
            None => Ok(true),
            Some(first) if first == head + 1 => {
                self.publish(listener, changes).await?;
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    /// Reads and publishes everything after the hub's head.
    async fn catch_up(&self, listener: &Listener, stmt: &Statement) -> Result<(), DbError> {
        let config = self.config;
        loop {
            let cursor = self.hub.head();
            let rows = db::with_timeout(
                config.probe_timeout,
                log::read_range(&listener.client, stmt, cursor, i64::MAX, config.batch),
            )
            .await?;
            let full = rows.len() as i64 >= config.batch;
            // Positions are gap-free and become visible a whole batch at a time, so a
            // first row past `cursor + 1` means retention pruned what this replica had not
            // read yet. Its live sessions would miss those events without knowing: drop
            // them all, and their clients resume with `since` and get a `reset`.
            if let Some(first) = rows.first().map(position)
                && first > cursor + 1
            {
                let dropped = self.hub.drop_all();
                tracing::warn!(
                    cursor,
                    first,
                    dropped,
                    "the log was pruned past this replica's head: dropping every session so clients resume"
                );
            }
            self.publish(listener, rows).await?;
            if !full {
                return Ok(());
            }
        }
    }

    /// Publishes changes that follow the head, in position order (loading the domain
    /// mappings they need first).
    async fn publish(&self, listener: &Listener, rows: Changes) -> Result<(), DbError> {
        db::with_timeout(
            self.config.probe_timeout,
            log::load_rules(&listener.client, self.mappings, &rows),
        )
        .await?;
        let mut batch = Vec::with_capacity(rows.len());
        let mut last = self.hub.head();
        for row in rows {
            match row {
                Ok(change) => {
                    last = change.pos;
                    batch.push(log::publishable(&change, self.mappings));
                }
                // Only a hand-edited log can get here; the position is skipped loudly.
                Err(err) => {
                    last = err.pos;
                    tracing::error!(error = %err, "skipping unreadable log row");
                }
            }
        }
        metrics::counter!(crate::metrics::EVENTS_PUBLISHED).increment(batch.len() as u64);
        self.hub.publish(&batch, last);
        Ok(())
    }
}
