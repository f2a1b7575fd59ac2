//! Operator endpoints: `/healthz` (the process answers), `/readyz` (PostgreSQL answers
//! with the rowcast schema in place, the tailer is connected, and the lag is below the
//! threshold), `/metrics` (Prometheus text) and `/api/stats` (JSON).
//!
//! Where they are served ([`crate::app::Application::run`]): all of them on the operator
//! listener when `metrics_listen` is set, and then only `/healthz` on the public one;
//! otherwise all on the public listener, the last three behind [`require_operator`]
//! (a token with the operator role) when authentication is on.
//!
//! [`monitor`] samples the database side (sequenced position, NOTIFY-queue usage)
//! on an interval, so scrapes and probes cost no query of their own but `/readyz`'s.

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
use crate::db::{self, DbError};
use crate::hub::Hub;
use crate::metrics;

/// The database side as last sampled by [`monitor`].
#[derive(Debug, Default)]
pub(crate) struct DbStats {
    sequenced: AtomicI64,
    notify_queue_bits: AtomicU64,
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

    fn record(&self, sequenced: i64, notify_queue: f64) {
        self.sequenced.store(sequenced, Ordering::Relaxed);
        self.notify_queue_bits
            .store(notify_queue.to_bits(), Ordering::Relaxed);
    }
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

async fn sample(pool: &deadpool_postgres::Pool) -> Result<(i64, f64), DbError> {
    let client = pool.get().await?;
    let row = db::with_timeout(
        Duration::from_secs(2),
        client.query_one(
            "select last_pos, pg_notification_queue_usage() from rowcast.sequencer",
            &[],
        ),
    )
    .await?;
    Ok((row.get(0), row.get(1)))
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
}

/// Samples the database every `interval` until `shutdown`.
pub(crate) async fn monitor(ctx: AppContext, interval: Duration, shutdown: CancellationToken) {
    loop {
        match sample(&ctx.pool).await {
            Ok((sequenced, queue)) => {
                ctx.db_stats.record(sequenced, queue);
                if queue > 0.5 {
                    tracing::warn!(
                        usage = queue,
                        "the NOTIFY queue is more than half full: a listener is stuck"
                    );
                }
            }
            Err(err) => tracing::debug!(error = %err, "stats sample failed"),
        }
        if let Err(err) = check_registry(&ctx.pool).await {
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
        Ok((sequenced, queue)) => {
            ctx.db_stats.record(sequenced, queue);
            sequenced
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
    })
}
