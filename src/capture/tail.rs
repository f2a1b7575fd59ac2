//! The tailer: follows the sequenced log and publishes every event to the hub.
//!
//! Every replica runs one, on a dedicated connection: LISTEN on `rowcast_seq` first, then
//! read `pos > cursor`, so no wake-up is missed; it also reads every `poll_interval`,
//! which doubles as the probe of a silently dead connection. The local sequencer hands
//! its batches over through a [`Feed`], saving a NOTIFY and a read. A replica that fell
//! behind retention drops its sessions rather than feed them a gap.
//!
//! With a bus ([`crate::capture::bus`]), only the sequencing replica reads the log this
//! way, and it hands what it publishes to the bus's publisher; the others take the
//! changes from the bus: one right after the head is published, one at or below it is
//! skipped, and one past it makes them read the missing positions from PostgreSQL first.
//! They keep the LISTEN (and probe `last_pos` every `poll_interval`), and when the log
//! moves past their head with nothing from the bus for `bus.stall_after`, they read the
//! log from PostgreSQL until the bus brings the position after their head again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_postgres::Statement;
use tokio_util::sync::CancellationToken;

use crate::capture::bus::{self, Publisher};
use crate::capture::log::{self, Changes, position};
use crate::db::{self, DbError, Listener};
use crate::events::{Change, Mappings};
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

/// This replica's link to the bus: what the tailer publishes to it while this replica
/// sequences, and what it reads from it otherwise.
pub(crate) struct BusLink {
    /// Where this replica's changes go while it sequences.
    pub(crate) publisher: Publisher,
    /// Set while this replica's sequencer sequences.
    pub(crate) leading: Arc<AtomicBool>,
    /// Changes read from the stream ([`bus::reader`]).
    pub(crate) changes: mpsc::Receiver<Change>,
    /// How long the stream may stay silent while the log moves past the head.
    pub(crate) stall_after: Duration,
}

/// Follows the log from the hub's head until `shutdown`, reconnecting with backoff.
/// `offers` are the local sequencer's hand-offs ([`feed`]).
pub async fn run(
    pg: tokio_postgres::Config,
    config: TailConfig,
    hub: Arc<Hub>,
    mappings: Arc<Mappings>,
    offers: Offers,
    shutdown: CancellationToken,
) {
    run_with_bus(pg, config, hub, mappings, offers, None, shutdown).await;
}

/// [`run`], with a bus ([`BusLink`]) when one is configured.
pub(crate) async fn run_with_bus(
    pg: tokio_postgres::Config,
    config: TailConfig,
    hub: Arc<Hub>,
    mappings: Arc<Mappings>,
    mut offers: Offers,
    bus: Option<BusLink>,
    shutdown: CancellationToken,
) {
    let mut backoff = db::reconnect_backoff();
    let (outbound, mut inbound) = match bus {
        Some(link) => (
            Some(Outbound {
                publisher: link.publisher,
                leading: link.leading.clone(),
            }),
            Some(Inbound {
                changes: link.changes,
                leading: link.leading,
                stall_after: link.stall_after,
                on_bus: true,
                behind_since: None,
                heard: Instant::now(),
                last_pos: 0,
            }),
        ),
        None => (None, None),
    };
    set_source(false);
    while !shutdown.is_cancelled() {
        let tail = Tail {
            config: &config,
            hub: &hub,
            mappings: &mappings,
            outbound: outbound.as_ref(),
        };
        match tail
            .session(&pg, &mut offers, &mut inbound, &shutdown, &mut backoff)
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

/// The publishing side of a [`BusLink`].
struct Outbound {
    publisher: Publisher,
    leading: Arc<AtomicBool>,
}

/// The reading side of a [`BusLink`], and whether the tailer follows the bus.
struct Inbound {
    changes: mpsc::Receiver<Change>,
    leading: Arc<AtomicBool>,
    stall_after: Duration,
    /// The bus is believed live: follow it (unless this replica sequences).
    on_bus: bool,
    /// Since when the log has been past the head while following the bus.
    behind_since: Option<Instant>,
    /// When the bus last brought a change.
    heard: Instant,
    /// The last position handed out, as last probed.
    last_pos: i64,
}

impl Inbound {
    /// Whether the tailer takes its changes from the bus rather than PostgreSQL.
    fn following(&self) -> bool {
        self.on_bus && !self.leading.load(Ordering::Acquire)
    }

    /// Whether the stream has been silent for `stall_after` while the log (`latest`) was
    /// past the head.
    fn stalled(&mut self, latest: i64, head: i64) -> bool {
        if latest.max(self.last_pos) <= head {
            self.behind_since = None;
            return false;
        }
        let now = Instant::now();
        let since = *self.behind_since.get_or_insert(now);
        now.saturating_duration_since(since.max(self.heard)) >= self.stall_after
    }

    fn switch(&mut self, on_bus: bool, head: i64) {
        self.on_bus = on_bus;
        self.behind_since = None;
        if on_bus {
            tracing::info!(head, "following the log from the bus");
        } else {
            tracing::warn!(
                head,
                "the bus stalled or is unreachable: reading the log from postgres"
            );
        }
    }
}

/// Sets [`crate::metrics::FEED_SOURCE`].
fn set_source(bus: bool) {
    let (nats, postgres) = if bus { (1.0, 0.0) } else { (0.0, 1.0) };
    metrics::gauge!(crate::metrics::FEED_SOURCE, "source" => "nats").set(nats);
    metrics::gauge!(crate::metrics::FEED_SOURCE, "source" => "postgres").set(postgres);
}

/// How often a tailer following the bus checks whether it stalled.
const STALL_CHECK: Duration = Duration::from_millis(100);

/// What a change from the bus did.
enum FromBus {
    /// Nothing changes.
    Stay,
    /// The tailer changes source.
    Switch,
}

struct Tail<'a> {
    config: &'a TailConfig,
    hub: &'a Hub,
    mappings: &'a Mappings,
    outbound: Option<&'a Outbound>,
}

/// The next change from the bus, or never without one.
async fn from_bus(inbound: &mut Option<Inbound>) -> Option<Change> {
    match inbound {
        Some(inbound) => inbound.changes.recv().await,
        None => std::future::pending().await,
    }
}

impl Tail<'_> {
    async fn session(
        &self,
        pg: &tokio_postgres::Config,
        offers: &mut Offers,
        inbound: &mut Option<Inbound>,
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
        let mut stall_check = tokio::time::interval(STALL_CHECK);
        loop {
            let following = inbound.as_ref().is_some_and(Inbound::following);
            if let Some(inbound) = inbound.as_mut().filter(|_| following) {
                // The probe of this connection, and how far the log is.
                inbound.last_pos = db::with_timeout(
                    self.config.probe_timeout,
                    log::last_position(&listener.client),
                )
                .await?;
                if inbound.stalled(listener.latest(), self.hub.head()) {
                    inbound.switch(false, self.hub.head());
                }
            }
            let following = inbound.as_ref().is_some_and(Inbound::following);
            set_source(following);
            if !following {
                self.catch_up(&listener, &stmt).await?;
            }
            self.hub.set_feed_live(true);
            // The fallback read is also the probe of this connection, so it runs every
            // `poll_interval` even while offers keep coming.
            let probe = Instant::now() + self.config.poll_interval;
            loop {
                tokio::select! {
                    _ = listener.notified() => {
                        // A wake-up for positions handed off (or about to be) needs no read;
                        // following the bus, it only says how far the log is.
                        if !following && !self.handed_off(&listener, offers).await? {
                            break;
                        }
                    }
                    change = from_bus(inbound) => match change {
                        Some(change) => {
                            let inbound = inbound.as_mut().expect("a change came from the bus");
                            if let FromBus::Switch =
                                self.take_from_bus(&listener, &stmt, inbound, change).await?
                            {
                                break;
                            }
                        }
                        None => {
                            // The reader stopped (shutdown): PostgreSQL only.
                            *inbound = None;
                            break;
                        }
                    },
                    _ = stall_check.tick(), if inbound.is_some() => {
                        let inbound = inbound.as_mut().expect("checked");
                        if inbound.following() != following
                            || (following && inbound.stalled(listener.latest(), self.hub.head()))
                        {
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

    /// Takes a change from the bus (and whatever else is waiting there): what follows
    /// the head is published; a gap, while following the bus, is read from PostgreSQL.
    /// Not following (reading PostgreSQL), the bus is taken back as soon as it brings the
    /// head or the position after it.
    async fn take_from_bus(
        &self,
        listener: &Listener,
        stmt: &Statement,
        inbound: &mut Inbound,
        first: Change,
    ) -> Result<FromBus, DbError> {
        inbound.heard = Instant::now();
        let mut received = vec![first];
        while received.len() < self.config.batch as usize {
            match inbound.changes.try_recv() {
                Ok(change) => received.push(change),
                Err(_) => break,
            }
        }
        if inbound.leading.load(Ordering::Acquire) {
            // This replica reads PostgreSQL and publishes: what it reads from the bus is
            // its own.
            return Ok(FromBus::Stay);
        }
        let following = inbound.on_bus;
        let mut run = Changes::new();
        for change in received {
            let head = self.hub.head() + run.len() as i64;
            if change.pos <= head {
                if !following && change.pos == head {
                    inbound.switch(true, head);
                    return Ok(FromBus::Switch);
                }
                continue;
            }
            if change.pos == head + 1 {
                run.push(Ok(change));
                continue;
            }
            // A gap: the stream lacks positions (lost, purged, or from before this
            // replica followed it).
            if !following {
                continue;
            }
            if !run.is_empty() {
                self.publish(listener, std::mem::take(&mut run)).await?;
            }
            tracing::info!(
                head = self.hub.head(),
                next = change.pos,
                "the bus lacks positions: reading them from postgres"
            );
            self.catch_up(listener, stmt).await?;
            if change.pos == self.hub.head() + 1 {
                run.push(Ok(change));
            }
        }
        if run.is_empty() {
            return Ok(FromBus::Stay);
        }
        self.publish(listener, run).await?;
        if !following {
            inbound.switch(true, self.hub.head());
            return Ok(FromBus::Switch);
        }
        Ok(FromBus::Stay)
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
            metrics::counter!(crate::metrics::TAILER_READS).increment(1);
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
        let mut outgoing = bus::Outgoing::new();
        let outbound = self
            .outbound
            .filter(|outbound| outbound.leading.load(Ordering::Acquire));
        for row in &rows {
            match row {
                Ok(change) => {
                    last = change.pos;
                    batch.push(log::publishable(change, self.mappings));
                    if outbound.is_some() {
                        outgoing.push(Publisher::encode(change));
                    }
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
        if let Some(outbound) = outbound {
            outbound.publisher.offer(outgoing);
        }
        Ok(())
    }
}
