//! Operator endpoints: `/healthz` (the process answers), `/readyz` (PostgreSQL answers
//! with the rowcast schema in place, the tailer is connected, the lag is below the
//! threshold, and sequencing has not stalled past `sequencer.stall_limit`), `/metrics`
//! (Prometheus text) and `/api/stats` (JSON).
//!
//! Where they are served ([`crate::app::Application::run`]): all of them on the operator
//! listener when `metrics_listen` is set, and then only `/healthz` on the public one;
//! otherwise all on the public listener, the last three behind [`require_operator`]
//! (a token with the operator role) when authentication is on.
//!
//! [`monitor`] samples the database side (sequenced position, NOTIFY-queue usage, events
//! waiting for positions) every second, so scrapes cost no query of their own; `/readyz`
//! samples too. A stall (committed events waiting with no position handed out, see
//! [`crate::capture::stall`]) past the limit is logged once when it starts and once when
//! it ends.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{AppContext, admission};
use crate::capture::registry;
use crate::capture::stall::{self, StallWatch};
use crate::db::{self, DbError};
use crate::hub::Hub;
use crate::metrics;

/// The database side as last sampled by [`monitor`].
#[derive(Debug, Default)]
pub(crate) struct DbStats {
    sequenced: AtomicI64,
    notify_queue_bits: AtomicU64,
    stall: StallWatch,
    /// Whether the last check found sequencing stalled past the limit.
    stalled: std::sync::atomic::AtomicBool,
}

impl DbStats {
    /// Last position handed out by the sequencer, as last sampled.
    pub(crate) fn sequenced(&self) -> i64 {
        self.sequenced.load(Ordering::Relaxed)
    }

    /// Fraction of the NOTIFY queue in use, as last sampled.
    pub(crate) fn notify_queue(&self) -> f64 {
        f64::from_bits(self.notify_queue_bits.load(Ordering::Relaxed))
    }

    /// How long committed events have waited with no position handed out.
    pub(crate) fn stalled_for(&self) -> Duration {
        self.stall.stalled_for(std::time::Instant::now())
    }

    fn record(&self, sampled: &Sampled) {
        self.sequenced
            .store(sampled.waiting.last_pos, Ordering::Relaxed);
        self.notify_queue_bits
            .store(sampled.notify_queue.to_bits(), Ordering::Relaxed);
        self.stall
            .observe(sampled.waiting, std::time::Instant::now());
    }

    /// Whether sequencing has stalled past `limit`; logs when that starts and ends.
    fn check_stall(&self, limit: Duration) -> Option<Duration> {
        let stalled = self.stalled_for();
        let over = stalled > limit;
        if self.stalled.swap(over, Ordering::Relaxed) != over {
            if over {
                tracing::error!(
                    stalled = ?stalled,
                    oldest_waiting_secs = self.stall.oldest_waiting(),
                    "sequencing has stalled: committed events wait and no replica hands out positions"
                );
            } else {
                tracing::info!("sequencing goes on again");
            }
        }
        over.then_some(stalled)
    }
}

/// One sample of the database side.
struct Sampled {
    waiting: stall::Sample,
    notify_queue: f64,
}

/// Routes of this module: every operator endpoint, unguarded (the operator listener).
pub(crate) fn router() -> Router<AppContext> {
    liveness().merge(operator())
}

/// `/healthz` alone: it costs nothing and says nothing, so every listener serves it.
pub(crate) fn liveness() -> Router<AppContext> {
    Router::new().route("/healthz", get(|| async { "ok\n" }))
}

/// `/readyz` (a query per call), `/metrics` and `/api/stats`, unguarded.
pub(crate) fn operator() -> Router<AppContext> {
    Router::new()
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/api/stats", get(stats))
}

/// The `?token=` of an operator request (Prometheus can also send `Authorization`).
#[derive(Debug, Deserialize)]
pub(crate) struct OperatorQuery {
    token: Option<String>,
}

/// Middleware for the operator endpoints on the public listener: a token with the
/// operator role when authentication is on ([`admission::admit_operator`]).
pub(crate) async fn require_operator(
    State(ctx): State<AppContext>,
    headers: HeaderMap,
    query: Result<Query<OperatorQuery>, QueryRejection>,
    request: Request,
    next: Next,
) -> Response {
    let token = query.ok().and_then(|Query(q)| q.token);
    match admission::admit_operator(&ctx, &headers, token.as_deref()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

async fn sample(pool: &deadpool_postgres::Pool) -> Result<Sampled, DbError> {
    let client = pool.get().await?;
    db::with_timeout(Duration::from_secs(2), async {
        let queue = client
            .query_one("select pg_notification_queue_usage()", &[])
            .await?;
        Ok::<_, DbError>(Sampled {
            waiting: stall::sample(&client).await?,
            notify_queue: queue.get(0),
        })
    })
    .await
}

async fn check_registry(pool: &deadpool_postgres::Pool) -> Result<(), DbError> {
    let client = pool.get().await?;
    db::with_timeout(Duration::from_secs(2), registry::PROBLEMS.check(&client)).await
}

fn export(hub: &Hub, stats: &DbStats) {
    let head = hub.head();
    ::metrics::gauge!(metrics::HEAD).set(head as f64);
    ::metrics::gauge!(metrics::SEQUENCED).set(stats.sequenced() as f64);
    ::metrics::gauge!(metrics::LAG).set((stats.sequenced() - head).max(0) as f64);
    ::metrics::gauge!(metrics::NOTIFY_QUEUE).set(stats.notify_queue());
    ::metrics::gauge!(metrics::SESSIONS).set(hub.sessions() as f64);
    ::metrics::gauge!(metrics::SEQUENCING_STALLED).set(stats.stalled_for().as_secs_f64());
    ::metrics::gauge!(metrics::OLDEST_UNSEQUENCED).set(stats.stall.oldest_waiting());
}

/// Samples the database every `interval` (and checks the registrations every
/// `REGISTRY_EVERY` samples) until `shutdown`.
pub(crate) async fn monitor(ctx: AppContext, interval: Duration, shutdown: CancellationToken) {
    const REGISTRY_EVERY: u64 = 5;
    for round in 0u64.. {
        match sample(&ctx.pool).await {
            Ok(sampled) => {
                ctx.db_stats.record(&sampled);
                ctx.db_stats.check_stall(ctx.stall_limit);
                if sampled.notify_queue > 0.5 {
                    tracing::warn!(
                        usage = sampled.notify_queue,
                        "the NOTIFY queue is more than half full: a listener is stuck"
                    );
                }
            }
            Err(err) => tracing::debug!(error = %err, "stats sample failed"),
        }
        if round % REGISTRY_EVERY == 0
            && let Err(err) = check_registry(&ctx.pool).await
        {
            tracing::debug!(error = %err, "registry check failed");
        }
        export(&ctx.hub, &ctx.db_stats);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn ready(State(ctx): State<AppContext>) -> (StatusCode, String) {
    let sequenced = match sample(&ctx.pool).await {
        Ok(sampled) => {
            ctx.db_stats.record(&sampled);
            sampled.waiting.last_pos
        }
        Err(err) if err.is_schema_missing() => {
            tracing::warn!(error = %err, "not ready: the rowcast schema is missing");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the rowcast schema is missing from the database: run `rowcast migrate`\n".into(),
            );
        }
        Err(err) => {
            tracing::warn!(error = %err, "not ready: postgres unreachable");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "postgres unreachable\n".into(),
            );
        }
    };
    if !ctx.hub.feed_live() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the log tailer is not connected\n".into(),
        );
    }
    let lag = sequenced - ctx.hub.head();
    if lag > ctx.ready_max_lag {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{lag} events behind the log\n"),
        );
    }
    if let Some(stalled) = ctx.db_stats.check_stall(ctx.stall_limit) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "sequencing has stalled for {:.1}s: committed events wait for positions\n",
                stalled.as_secs_f64()
            ),
        );
    }
    (StatusCode::OK, "ready\n".into())
}

async fn render_metrics(State(ctx): State<AppContext>) -> impl IntoResponse {
    export(&ctx.hub, &ctx.db_stats);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::handle().render(),
    )
}

/// The body of `/api/stats`.
#[derive(Debug, Serialize)]
pub(crate) struct Stats {
    /// Open sessions on this replica.
    pub(crate) connections: usize,
    /// Topics with at least one subscriber on this replica.
    pub(crate) topics: usize,
    /// Last position this replica published.
    pub(crate) head: i64,
    /// Last position the sequencer handed out (sampled).
    pub(crate) sequenced: i64,
    /// `sequenced - head`.
    pub(crate) lag: i64,
    /// Fraction of the NOTIFY queue in use (sampled).
    pub(crate) notify_queue_usage: f64,
    /// Whether the tailer is connected.
    pub(crate) feed_live: bool,
    /// Seconds committed events have waited with no position handed out (sampled; 0
    /// when sequencing goes on or nothing waits).
    pub(crate) stalled_seconds: f64,
    /// Seconds since the oldest committed event still without a position was captured
    /// (sampled; 0 when none waits).
    pub(crate) oldest_unsequenced_seconds: f64,
}

async fn stats(State(ctx): State<AppContext>) -> Json<Stats> {
    let head = ctx.hub.head();
    let sequenced = ctx.db_stats.sequenced().max(head);
    Json(Stats {
        connections: ctx.hub.sessions(),
        topics: ctx.hub.topics(),
        head,
        sequenced,
        lag: sequenced - head,
        notify_queue_usage: ctx.db_stats.notify_queue(),
        feed_live: ctx.hub.feed_live(),
        stalled_seconds: ctx.db_stats.stalled_for().as_secs_f64(),
        oldest_unsequenced_seconds: ctx.db_stats.stall.oldest_waiting(),
    })
}
