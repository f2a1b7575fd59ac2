//! The bus: an optional NATS JetStream stream that carries the log from the one replica
//! that reads it from PostgreSQL to the others.
//!
//! The sequencing replica's tailer hands every change it publishes to its hub to the
//! [`Publisher`], which publishes it to the stream in position order, the position as
//! message id (`Nats-Msg-Id`: the stream drops a duplicate within its duplicate window),
//! the change as JSON. On every other replica a [`reader`] follows the stream with an
//! ordered consumer from its hub's head and passes the changes to its tailer, which
//! publishes them, reads what the stream lacks from PostgreSQL, and goes back to
//! PostgreSQL whenever the stream stalls (see [`crate::capture::tail`]). The hub's head
//! decides what is published, so nothing is doubled or skipped by a switch.
//! docs/architecture.md ("The bus") has the reasoning.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::Change;
use crate::hub::Hub;

/// Settings of the bus. Without `nats_url` there is no bus: every replica reads the log
/// from PostgreSQL.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// NATS server to publish and follow the log through (`nats://host:4222`; several,
    /// comma-separated). Unset: no bus.
    pub nats_url: Option<String>,
    /// The JetStream stream (created with `max_age` if it does not exist).
    pub stream: String,
    /// The subject the log is published on.
    pub subject: String,
    /// How long a replica following the stream waits for it while the log moves past its
    /// head, before it reads the log from PostgreSQL instead.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// How long the stream keeps a message, when rowcast creates the stream.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            nats_url: None,
            stream: "rowcast".into(),
            subject: "rowcast.log".into(),
            stall_after: Duration::from_secs(1),
            max_age: Duration::from_secs(3600),
        }
    }
}

/// The stream drops a message whose id it saw this recently.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Longest wait for an answer from NATS (an ack, a stream look-up).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the bus could not be used.
#[derive(Debug, thiserror::Error)]
#[error("nats: {0}")]
pub struct BusError(String);

fn nats_error(err: impl std::fmt::Display) -> BusError {
    BusError(err.to_string())
}

/// A connection to NATS, made in the background: it never waits for the server.
#[derive(Clone)]
pub(crate) struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    config: BusConfig,
}

impl Bus {
    /// Connects to the bus if `config` names one. Only a malformed URL is an error: an
    /// unreachable server is retried in the background.
    pub(crate) async fn connect(config: &BusConfig) -> Result<Option<Bus>, BusError> {
        let Some(url) = config.nats_url.as_deref() else {
            return Ok(None);
        };
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(REQUEST_TIMEOUT)
            .connect(url)
            .await
            .map_err(nats_error)?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        Ok(Some(Bus {
            client,
            js,
            config: config.clone(),
        }))
    }

    /// How long a follower waits for a stalled stream (`stall_after`).
    pub(crate) fn stall_after(&self) -> Duration {
        self.config.stall_after
    }

    /// The stream, created if it does not exist.
    async fn stream(&self) -> Result<stream::Stream, BusError> {
        self.js
            .get_or_create_stream(stream::Config {
                name: self.config.stream.clone(),
                subjects: vec![self.config.subject.clone()],
                max_age: self.config.max_age,
                duplicate_window: DUPLICATE_WINDOW.min(self.config.max_age),
                ..Default::default()
            })
            .await
            .map_err(nats_error)
    }
}

/// The serialised changes of one batch, each with its position.
pub(crate) type Outgoing = Vec<(i64, Bytes)>;

/// How many batches may wait for the publisher; more are dropped and counted.
const PUBLISH_DEPTH: usize = 256;

/// The tailer's end of the publishing task ([`publisher`]).
#[derive(Clone)]
pub(crate) struct Publisher {
    batches: mpsc::Sender<Outgoing>,
}

impl Publisher {
    /// Queues changes for the stream, never waiting: when the publisher is behind (NATS
    /// is down or slow), they are dropped and counted; followers read them from
    /// PostgreSQL.
    pub(crate) fn offer(&self, batch: Outgoing) {
        if batch.is_empty() {
            return;
        }
        if let Err(err) = self.batches.try_send(batch) {
            let lost = match &err {
                mpsc::error::TrySendError::Full(batch)
                | mpsc::error::TrySendError::Closed(batch) => batch.len(),
            };
            metrics::counter!(crate::metrics::BUS_PUBLISH_FAILURES).increment(lost as u64);
        }
    }

    /// Serialises a change for the stream.
    pub(crate) fn encode(change: &Change) -> (i64, Bytes) {
        let json = serde_json::to_vec(change).expect("a change serialises to JSON");
        (change.pos, Bytes::from(json))
    }
}

/// The publishing task and its handle: publishes every queued batch to the stream, in
/// order, until `shutdown`.
pub(crate) fn publisher(
    bus: Bus,
    shutdown: CancellationToken,
) -> (Publisher, impl Future<Output = ()> + Send) {
    let (batches, received) = mpsc::channel(PUBLISH_DEPTH);
    (Publisher { batches }, publish(bus, received, shutdown))
}

async fn publish(bus: Bus, mut batches: mpsc::Receiver<Outgoing>, shutdown: CancellationToken) {
    let mut stream_ready = false;
    let mut warned: Option<Instant> = None;
    let mut fail = |count: usize, err: &BusError| {
        metrics::counter!(crate::metrics::BUS_PUBLISH_FAILURES).increment(count as u64);
        // One warning per ten seconds of failures is enough to see what is wrong.
        if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            warned = Some(Instant::now());
            tracing::warn!(error = %err, events = count, "cannot publish to the bus; followers read the log from postgres");
        }
    };
    loop {
        let batch = tokio::select! {
            batch = batches.recv() => match batch {
                Some(batch) => batch,
                None => return,
            },
            _ = shutdown.cancelled() => return,
        };
        if !stream_ready {
            match bus.stream().await {
                Ok(_) => stream_ready = true,
                Err(err) => {
                    fail(batch.len(), &err);
                    continue;
                }
            }
        }
        // Sent one after another on one connection, so they reach the stream in order;
        // the acks are awaited after.
        let mut acks = Vec::with_capacity(batch.len());
        for (pos, payload) in batch {
            let message = PublishMessage::build()
                .payload(payload)
                .message_id(pos.to_string());
            match bus
                .js
                .send_publish(bus.config.subject.clone(), message)
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(err) => {
                    stream_ready = false;
                    fail(1, &nats_error(err));
                }
            }
        }
        for ack in acks {
            match ack.await {
                Ok(_) => metrics::counter!(crate::metrics::BUS_PUBLISHED).increment(1),
                Err(err) => {
                    stream_ready = false;
                    fail(1, &nats_error(err));
                }
            }
        }
    }
}

/// How many changes read from the stream may wait for the tailer.
const READ_DEPTH: usize = 4_096;

/// Starts following the stream: changes are sent, in stream order, to the returned
/// receiver (the tailer's). While `leading` is set (this replica reads the log from
/// PostgreSQL and publishes it) no consumer is open.
pub(crate) fn reader(
    bus: Bus,
    hub: Arc<Hub>,
    leading: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> (mpsc::Receiver<Change>, impl Future<Output = ()> + Send) {
    let (sender, received) = mpsc::channel(READ_DEPTH);
    (received, read(bus, hub, leading, sender, shutdown))
}

/// How often the reader checks whether this replica started or stopped leading.
const LEADING_CHECK: Duration = Duration::from_millis(250);

/// Why [`follow`] returned without an error.
enum Stop {
    Shutdown,
    Leading,
    /// The connection to NATS came back: a new consumer is opened at once, rather than
    /// wait for the old one to notice its server is gone (missed heartbeats).
    Reconnected,
}

async fn read(
    bus: Bus,
    hub: Arc<Hub>,
    leading: Arc<AtomicBool>,
    changes: mpsc::Sender<Change>,
    shutdown: CancellationToken,
) {
    let mut backoff = crate::db::reconnect_backoff();
    loop {
        if leading.load(Ordering::Acquire) {
            tokio::select! {
                _ = tokio::time::sleep(LEADING_CHECK) => continue,
                _ = shutdown.cancelled() => return,
            }
        }
        let delay = match follow(&bus, &hub, &leading, &changes, &shutdown).await {
            Ok(Stop::Shutdown) => return,
            Ok(Stop::Leading | Stop::Reconnected) => {
                backoff = crate::db::reconnect_backoff();
                continue;
            }
            Err(err) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::debug!(error = %err, retry_in = ?delay, "cannot follow the bus");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Follows the stream from the hub's head until an error, shutdown or leadership.
async fn follow(
    bus: &Bus,
    hub: &Hub,
    leading: &AtomicBool,
    changes: &mpsc::Sender<Change>,
    shutdown: &CancellationToken,
) -> Result<Stop, BusError> {
    let stream = bus.stream().await?;
    let after = hub.head();
    let deliver_policy = start_after(&stream, &bus.config.subject, after).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: bus.config.subject.clone(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(nats_error)?;
    let mut messages = consumer.messages().await.map_err(nats_error)?;
    tracing::info!(after, "following the bus");
    let mut check = tokio::time::interval(LEADING_CHECK);
    let mut disconnected = false;
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(Ok(message)) => match serde_json::from_slice::<Change>(&message.payload) {
                    Ok(change) => {
                        if changes.send(change).await.is_err() {
                            return Ok(Stop::Shutdown);
                        }
                    }
                    // The tailer reads the position from PostgreSQL (a gap).
                    Err(err) => tracing::error!(error = %err, "skipping unreadable bus message"),
                },
                Some(Err(err)) => return Err(nats_error(err)),
                None => return Err(BusError("the consumer ended".into())),
            },
            _ = check.tick() => {
                if leading.load(Ordering::Acquire) {
                    return Ok(Stop::Leading);
                }
                let connected =
                    bus.client.connection_state() == async_nats::connection::State::Connected;
                if connected && disconnected {
                    return Ok(Stop::Reconnected);
                }
                disconnected |= !connected;
            }
            _ = shutdown.cancelled() => return Ok(Stop::Shutdown),
        }
    }
}

/// Where to start reading for the positions after `after`. Positions on the stream
/// increase with its sequence numbers (one per message, at most one message per
/// position), so the message of position `after + 1`, if the stream has it, is no more
/// than `last_pos - after - 1` messages before the last one. Starting there may deliver
/// older positions (skipped) but never starts past it.
async fn start_after(
    stream: &stream::Stream,
    subject: &str,
    after: i64,
) -> Result<DeliverPolicy, BusError> {
    #[derive(serde::Deserialize)]
    struct Position {
        pos: i64,
    }
    let last = match stream.get_last_raw_message_by_subject(subject).await {
        Ok(last) => last,
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {
            return Ok(DeliverPolicy::All);
        }
        Err(err) => return Err(nats_error(err)),
    };
    let start_sequence = match serde_json::from_slice::<Position>(&last.payload) {
        Ok(Position { pos }) if pos > after => {
            let back = u64::try_from(pos - after - 1).unwrap_or(u64::MAX);
            last.sequence.saturating_sub(back).max(1)
        }
        Ok(_) => last.sequence + 1,
        Err(_) => 1,
    };
    Ok(DeliverPolicy::ByStartSequence { start_sequence })
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::capture::log;
    use crate::events::{Mappings, Op};

    fn raw(json: &str) -> Option<Box<RawValue>> {
        Some(RawValue::from_string(json.into()).unwrap())
    }

    #[test]
    fn a_change_from_the_bus_gives_the_same_frames_as_the_one_read_from_the_log() {
        let change = Change {
            pos: 42,
            table: "bookings".into(),
            op: Op::Update,
            topics: vec!["bookings".into(), "user:9".into(), "user:1".into()],
            ts: "2026-11-22T10:00:00.123Z".into(),
            // As PostgreSQL renders jsonb: spaces, and a number beyond 2^53.
            data: raw(r#"{"id": 7, "client_id": 9, "big": 9007199254740993}"#),
            old: raw(r#"{"client_id": 1}"#),
            mapping_id: None,
            kept: Some(2),
            left_key: raw(r#"{"id": 7}"#),
        };
        let (pos, payload) = Publisher::encode(&change);
        assert_eq!(pos, 42);
        let carried: Change = serde_json::from_slice(&payload).unwrap();
        let mappings = Mappings::new();
        let (sent, received) = (
            log::publishable(&change, &mappings),
            log::publishable(&carried, &mappings),
        );
        assert_eq!(sent.frame.bytes(), received.frame.bytes());
        assert_eq!(sent.topics, received.topics);
        assert_eq!(sent.kept, received.kept);
        let (left, carried_left) = (sent.left.as_ref().unwrap(), received.left.as_ref().unwrap());
        assert_eq!(left.frame.bytes(), carried_left.frame.bytes());
        assert_eq!(left.topics, vec!["user:1".to_string()]);
        assert!(
            std::str::from_utf8(&sent.frame.bytes())
                .unwrap()
                .contains("9007199254740993")
        );
    }
}
