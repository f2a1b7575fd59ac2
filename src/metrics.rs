//! Prometheus metrics: names, descriptions, and the process-wide recorder.
//!
//! Counters and gauges are recorded with the `metrics` facade where things happen;
//! `/metrics` renders them in the Prometheus text format. Every metric exists from start,
//! at zero (labelled counters with their known label values), so dashboards and alerts
//! see `0` rather than no data before the first event.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Events given positions by this replica's sequencer.
pub(crate) const EVENTS_SEQUENCED: &str = "rowcast_events_sequenced_total";
/// Time of one sequencer round (clearing the wake-up flag, then the batch with its
/// commit, which returns what it sequenced for the local tailer: one round trip), in
/// seconds. A round that grows with the size of the log, not with its batch, shows here
/// first.
pub(crate) const SEQUENCER_ROUND: &str = "rowcast_sequencer_round_seconds";
/// Events read from the log and published to the hub.
pub(crate) const EVENTS_PUBLISHED: &str = "rowcast_events_published_total";
/// Reads of the log by this replica's tailer (the sequencing replica's tailer reads only
/// what the hand-off did not bring, and once per `tail.poll_interval` as its probe).
pub(crate) const TAILER_READS: &str = "rowcast_tailer_reads_total";
/// Event frames written to client sessions.
pub(crate) const DELIVERIES: &str = "rowcast_deliveries_total";
/// Open client sessions.
pub(crate) const SESSIONS: &str = "rowcast_sessions";
/// Sessions closed, by reason.
pub(crate) const SESSIONS_CLOSED: &str = "rowcast_sessions_closed_total";
/// Client messages refused, by error code.
pub(crate) const REFUSALS: &str = "rowcast_refusals_total";
/// Reconnects of a dedicated connection, by role (sequencer, tailer).
pub(crate) const RECONNECTS: &str = "rowcast_db_reconnects_total";
/// Last position published by this replica.
pub(crate) const HEAD: &str = "rowcast_head_position";
/// Last position handed out by the sequencer (any replica).
pub(crate) const SEQUENCED: &str = "rowcast_sequenced_position";
/// Positions sequenced but not yet published by this replica.
pub(crate) const LAG: &str = "rowcast_listener_lag_events";
/// Seconds since the oldest committed event still without a position was captured.
pub(crate) const OLDEST_UNSEQUENCED: &str = "rowcast_oldest_unsequenced_event_seconds";
/// Seconds committed events have waited with no position handed out (0: not stalled).
pub(crate) const SEQUENCING_STALLED: &str = "rowcast_sequencing_stalled_seconds";
/// 1 while this replica's sequencer is the one sequencing, 0 while it stands by.
pub(crate) const SEQUENCER_LEADING: &str = "rowcast_sequencer_leading";
/// Takeovers from a sequencing replica that handed out no position for too long.
pub(crate) const SEQUENCER_TAKEOVERS: &str = "rowcast_sequencer_takeovers_total";
/// Which source this replica's tailer follows (`source`: `postgres` or `nats`): 1 for the
/// one it follows, 0 for the other.
pub(crate) const FEED_SOURCE: &str = "rowcast_feed_source";
/// Changes this replica published to the bus (acknowledged by the stream).
pub(crate) const BUS_PUBLISHED: &str = "rowcast_bus_published_total";
/// Changes this replica failed to publish to the bus (NATS unreachable, no ack, queue
/// full); followers read them from PostgreSQL.
pub(crate) const BUS_PUBLISH_FAILURES: &str = "rowcast_bus_publish_failures_total";
/// Changes of tables with a domain delivered as generic `row.*` events because their row
/// could not be read through the mapping.
pub(crate) const ROWS_UNMAPPED: &str = "rowcast_rows_unmapped_total";
/// Watched tables whose registration a schema change broke (`rowcast.watched.problem`).
pub(crate) const REGISTRATION_PROBLEMS: &str = "rowcast_registration_problems";
/// Fraction of PostgreSQL's NOTIFY queue in use (`pg_notification_queue_usage()`).
pub(crate) const NOTIFY_QUEUE: &str = "rowcast_notify_queue_usage";

/// The process-wide recorder, installed on first use.
pub(crate) fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe();
        start_at_zero();
        handle
    })
}

/// How often the recorder's histograms are drained into their summaries when nobody
/// scrapes `/metrics`.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Drains the recorder's histograms every few seconds until `shutdown`. A histogram keeps
/// every sample it records until it is drained, which otherwise happens only when
/// `/metrics` is rendered: a service that nobody scrapes would grow by every sequencer
/// round it times, without bound.
pub(crate) async fn upkeep(shutdown: tokio_util::sync::CancellationToken) {
    let handle = handle();
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}

/// Label values each labelled counter starts with (more appear as they happen): the
/// connection roles, the close reasons of sessions, and the refusal codes of the protocol
/// and of the HTTP side.
const KNOWN_LABELS: &[(&str, &str, &[&str])] = &[
    (RECONNECTS, "role", &["sequencer", "tailer"]),
    (
        SESSIONS_CLOSED,
        "reason",
        &[
            "client_gone",
            "going_away",
            "policy",
            "too_large",
            "internal_error",
            "too_slow",
            "token_expired",
            "refresh_refused",
        ],
    ),
    (
        REFUSALS,
        "code",
        &[
            "bad_request",
            "forbidden",
            "unknown_type",
            "too_many_topics",
            "rate_limited",
            "unavailable",
            "unauthorized",
            "origin_not_allowed",
            "too_many_connections",
            "websocket_disabled",
            "handshake_timeout",
            "idle_timeout",
        ],
    ),
];

/// The label values `metric` starts with (empty for a metric without labels).
#[cfg(test)]
pub(crate) fn label_values(metric: &str) -> Vec<&'static str> {
    KNOWN_LABELS
        .iter()
        .filter(|(name, _, _)| *name == metric)
        .flat_map(|(_, _, values)| values.iter().copied())
        .collect()
}

/// Registers every metric at zero (nothing is reset: a gauge or counter already set
/// keeps its value).
fn start_at_zero() {
    for name in [
        EVENTS_SEQUENCED,
        EVENTS_PUBLISHED,
        TAILER_READS,
        DELIVERIES,
        ROWS_UNMAPPED,
        SEQUENCER_TAKEOVERS,
        BUS_PUBLISHED,
        BUS_PUBLISH_FAILURES,
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in [
        SESSIONS,
        HEAD,
        SEQUENCED,
        LAG,
        OLDEST_UNSEQUENCED,
        SEQUENCING_STALLED,
        SEQUENCER_LEADING,
        REGISTRATION_PROBLEMS,
        NOTIFY_QUEUE,
    ] {
        metrics::gauge!(name).increment(0.0);
    }
    let _ = metrics::histogram!(SEQUENCER_ROUND);
    metrics::gauge!(FEED_SOURCE, "source" => "postgres").increment(0.0);
    metrics::gauge!(FEED_SOURCE, "source" => "nats").increment(0.0);
    for (name, label, values) in KNOWN_LABELS {
        for value in *values {
            metrics::counter!(*name, *label => *value).increment(0);
        }
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        EVENTS_SEQUENCED,
        "Events given positions by this replica's sequencer"
    );
    describe_counter!(
        EVENTS_PUBLISHED,
        "Events read from the log and published to sessions"
    );
    describe_counter!(
        TAILER_READS,
        "Reads of the log by this replica's tailer (not counting what the local sequencer handed over)"
    );
    describe_counter!(DELIVERIES, "Event frames written to client sessions");
    describe_histogram!(
        SEQUENCER_ROUND,
        Unit::Seconds,
        "Time of one sequencer round: flag, then the batch with its commit and what it sequenced"
    );
    describe_counter!(
        ROWS_UNMAPPED,
        "Changes of tables with a domain delivered as row.* because the mapping could not read their row"
    );
    describe_gauge!(SESSIONS, "Open client sessions");
    describe_counter!(SESSIONS_CLOSED, "Client sessions closed, by reason");
    describe_counter!(REFUSALS, "Client messages refused, by error code");
    describe_counter!(
        RECONNECTS,
        "Reconnects of dedicated database connections, by role"
    );
    describe_gauge!(HEAD, "Last position published by this replica");
    describe_gauge!(SEQUENCED, "Last position handed out by the sequencer");
    describe_gauge!(
        LAG,
        "Positions sequenced but not yet published by this replica"
    );
    describe_gauge!(
        OLDEST_UNSEQUENCED,
        Unit::Seconds,
        "Age (from capture) of the oldest committed event still without a position"
    );
    describe_gauge!(
        SEQUENCING_STALLED,
        Unit::Seconds,
        "How long committed events have waited with no position handed out (0 when not stalled)"
    );
    describe_gauge!(
        SEQUENCER_LEADING,
        "1 while this replica's sequencer sequences, 0 while it stands by"
    );
    describe_counter!(
        SEQUENCER_TAKEOVERS,
        "Takeovers from a sequencing replica that handed out no position for sequencer.takeover_after"
    );
    describe_gauge!(
        FEED_SOURCE,
        "1 for the source this replica follows the log from (postgres or nats), 0 for the other"
    );
    describe_counter!(
        BUS_PUBLISHED,
        "Changes this replica published to the bus and the stream acknowledged"
    );
    describe_counter!(
        BUS_PUBLISH_FAILURES,
        "Changes this replica could not publish to the bus (followers read them from postgres)"
    );
    describe_gauge!(
        REGISTRATION_PROBLEMS,
        "Watched tables whose registration no longer fits the table (see rowcast.watched.problem)"
    );
    describe_gauge!(
        NOTIFY_QUEUE,
        "Fraction of the PostgreSQL NOTIFY queue in use"
    );
}
