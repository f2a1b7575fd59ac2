//! The HTTP side: WebSocket sessions ([`ws`]), server-sent events ([`sse`]), HTTP
//! polling ([`http`]), first screens ([`snapshot`]), health and metrics ([`health`]) and the dashboard ([`web`]), all
//! resuming through [`replay`]; [`admission`] and [`auth`] decide who may connect and
//! follow what; [`listen`] enforces connection deadlines. Handlers share an
//! [`AppContext`]; [`crate::app`] builds it and starts the server.

pub(crate) mod admission;
pub mod auth;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod listen;
pub mod protocol;
pub(crate) mod query;
pub mod replay;
pub(crate) mod snapshot;
pub(crate) mod sse;
pub(crate) mod web;
pub(crate) mod wire;
pub(crate) mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events::Mappings;
use crate::hub::Hub;

/// Per-session limits and timers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Events queued for a session before it is closed as too slow (4000).
    pub queue: usize,
    /// Interval of server pings; a session silent for two intervals is closed.
    #[serde(with = "humantime_serde")]
    pub(crate) ping_interval: Duration,
    /// Whether `/ws` accepts connections; off serves only SSE and HTTP polling (for
    /// networks whose proxies break WebSocket).
    pub websocket: bool,
    /// Longest a write to the client may take before the session is closed as too slow.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Largest client frame accepted, in bytes; larger ones close the session (1009).
    pub(crate) max_frame: usize,
    /// Most topics one connection may hold.
    pub(crate) max_topics: usize,
    /// Events read from the log per replay query.
    pub(crate) replay_page: i64,
    /// Interval of SSE keep-alive comments (`: keepalive`) on an otherwise quiet stream.
    #[serde(with = "humantime_serde")]
    pub sse_keepalive: Duration,
    /// How long an HTTP poll (`/events`) whose `since` is ahead of this replica's head
    /// waits for the replica to catch up; if it has not by then, the answer has no events
    /// and this replica's real head (never the client's `since`).
    #[serde(with = "humantime_serde")]
    pub catch_up_wait: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            queue: 4096,
            ping_interval: Duration::from_secs(20),
            websocket: true,
            write_timeout: Duration::from_secs(10),
            max_frame: 16 * 1024,
            max_topics: 256,
            replay_page: 1000,
            sse_keepalive: Duration::from_secs(15),
            catch_up_wait: Duration::from_secs(1),
        }
    }
}

/// State shared by every handler and session: one allocation, so that a clone (one per
/// request, one held by every session) is a reference count, not a copy of every field.
#[derive(Clone)]
pub(crate) struct AppContext(Arc<Shared>);

impl AppContext {
    /// Shares `shared` with every handler and session.
    pub(crate) fn new(shared: Shared) -> AppContext {
        AppContext(Arc::new(shared))
    }
}

impl std::ops::Deref for AppContext {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppContext`] shares.
pub(crate) struct Shared {
    /// Topic index and fan-out.
    pub(crate) hub: Arc<Hub>,
    /// Pool for short queries.
    pub(crate) pool: deadpool_postgres::Pool,
    /// Domain mappings by id, shared by the tailer and replays.
    pub(crate) mappings: Arc<Mappings>,
    /// Session limits.
    pub(crate) session: SessionConfig,
    /// Cancelled when the service shuts down.
    pub(crate) shutdown: CancellationToken,
    /// Tracks sessions so shutdown can wait for them.
    pub(crate) sessions: TaskTracker,
    /// The database side, sampled by [`health::monitor`].
    pub(crate) db_stats: health::DbStats,
    /// `/readyz` turns unready above this many undelivered events.
    pub(crate) ready_max_lag: i64,
    /// `/readyz` fails once sequencing has stalled this long (`sequencer.stall_limit`).
    pub(crate) stall_limit: Duration,
    /// Token verifier and policy; `None` when authentication is off.
    pub(crate) auth: Option<Arc<auth::Auth>>,
    /// Connection and request limits.
    pub(crate) limits: Arc<admission::LimitsConfig>,
    /// Open sessions, in total and per IP.
    pub(crate) connections: Arc<admission::Connections>,
}

/// Cross-origin reads for dashboards served elsewhere: `/rowcast.js`, `/sse`, `/events`
/// and `/snapshot` from the allowed Origins (any, when the allow-list is empty). WebSocket
/// upgrades check Origin themselves ([`admission`]).
fn cors(limits: &admission::LimitsConfig) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins = if limits.allowed_origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            limits
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET])
        .allow_headers([
            header::AUTHORIZATION,
            header::HeaderName::from_static("last-event-id"),
        ])
}

/// The public listener's routes: the transports, liveness, the dashboard, and the operator
/// endpoints unless they have a listener of their own (`operator_listener`); with
/// authentication on they then need a token with the operator role.
pub(crate) fn public_router(ctx: &AppContext, operator_listener: bool) -> Router {
    let operator_routes = match (operator_listener, &ctx.auth) {
        (true, _) => Router::new(),
        (false, None) => health::operator(),
        (false, Some(auth)) => {
            tracing::info!(
                role = %auth.operator_role(),
                "/readyz, /metrics and /api/stats need a token with the operator role on the public listener; set metrics_listen to serve them on a private address instead"
            );
            health::operator().route_layer(axum::middleware::from_fn_with_state(
                ctx.clone(),
                health::require_operator,
            ))
        }
    };
    Router::new()
        .merge(ws::router())
        .merge(sse::router())
        .merge(http::router())
        .merge(snapshot::router())
        .merge(health::liveness())
        .merge(operator_routes)
        .merge(web::router())
        .layer(cors(&ctx.limits))
        .with_state(ctx.clone())
}

/// The operator listener's routes (`metrics_listen`).
pub(crate) fn operator_router(ctx: &AppContext) -> Router {
    health::router().with_state(ctx.clone())
}

/// Serves `app` on `listener`, under the connection limits and deadlines, until the
/// service shuts down.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    ctx: &AppContext,
) -> std::io::Result<()> {
    let listener =
        listen::HandshakeListener::new(listener, ctx.limits.clone(), ctx.connections.clone());
    axum::serve(listener, listen::Serve::new(app))
        .with_graceful_shutdown(ctx.shutdown.clone().cancelled_owned())
        .await
}
