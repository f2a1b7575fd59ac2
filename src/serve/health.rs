//! Health endpoints: `/healthz` (the process answers) and `/readyz` (PostgreSQL answers).

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::AppContext;
use crate::db;

/// Routes of this module.
pub fn router() -> Router<AppContext> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
}

async fn ready(State(ctx): State<AppContext>) -> (StatusCode, &'static str) {
    let probe = async {
        let client = ctx.pool.get().await?;
        db::with_timeout(Duration::from_secs(2), client.query_one("select 1", &[])).await
    };
    match probe.await {
        Ok(_) => (StatusCode::OK, "ready\n"),
        Err(err) => {
            tracing::warn!(error = %err, "not ready: postgres unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "postgres unreachable\n")
        }
    }
}
