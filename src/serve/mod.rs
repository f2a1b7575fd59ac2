//! The HTTP server: WebSocket sessions ([`ws`]), server-sent events ([`sse`]), HTTP
//! polling ([`http`]) and health endpoints ([`health`]), plus the background tasks
//! (sequencer, tailer, prune) that feed the hub and keep the log in bounds. Every
//! transport resumes through [`replay`]; [`query`] holds what SSE and polling share.
//!
//! [`Application::build`] connects, checks the schema and binds (port 0 works, for
//! tests): the public listener and, if `metrics_listen` is set, the operator listener
//! (see [`health`] for which endpoints each serves); [`Application::run`] serves until a
//! shutdown token is cancelled, then closes every session with 1001 and waits for the
//! tasks to finish.

pub mod admission;
pub mod auth;
pub mod health;
pub mod http;
pub mod listen;
pub mod protocol;
pub mod query;
pub mod replay;
pub mod sse;
pub mod web;
pub mod wire;
pub mod ws;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capture::{log, prune, registry, sequencer, tail};
use crate::config::{Config, SessionConfig};
use crate::db::{self, DbError};
use crate::events::Mappings;
use crate::hub::Hub;
use crate::migrate::{self, MigrateError};

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// PostgreSQL could not be reached or refused.
    #[error(
        "cannot connect to postgres at {target}: {}",
        db::connect_failure(cause)
    )]
    Connect {
        /// host:port/dbname, without credentials.
        target: String,
        /// The cause (said in the message, so not offered as a source).
        cause: DbError,
    },
    /// A database error after connecting.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The authentication settings cannot be used.
    #[error(transparent)]
    Auth(#[from] auth::AuthConfigError),
    /// The schema is missing or does not match this binary.
    #[error(transparent)]
    Schema(#[from] MigrateError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {}", bind_failure(cause, flag))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The flag that sets it (`--listen`, `--metrics-listen`).
        flag: &'static str,
        /// The cause (said in the message, so not offered as a source).
        cause: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

/// State shared by every handler.
#[derive(Clone)]
pub struct AppContext {
    /// Topic index and fan-out.
    pub hub: Arc<Hub>,
    /// Pool for short queries.
    pub pool: deadpool_postgres::Pool,
    /// Domain mappings by id, shared by the tailer and replays.
    pub mappings: Arc<Mappings>,
    /// Session limits.
    pub session: Arc<SessionConfig>,
    /// Cancelled when the service shuts down.
    pub shutdown: CancellationToken,
    /// Tracks sessions so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// The database side, sampled by [`health::monitor`].
    pub db_stats: Arc<health::DbStats>,
    /// `/readyz` turns unready above this many undelivered events.
    pub ready_max_lag: i64,
    /// Token verifier and policy; `None` when authentication is off.
    pub auth: Option<Arc<auth::Auth>>,
    /// Connection and request limits.
    pub limits: Arc<admission::LimitsConfig>,
    /// Open sessions, in total and per IP.
    pub connections: Arc<admission::Connections>,
}

/// A bound, ready-to-run service.
pub struct Application {
    listener: TcpListener,
    /// The operator listener (`metrics_listen`), if configured.
    operator: Option<TcpListener>,
    ctx: AppContext,
    pg: tokio_postgres::Config,
    config: Config,
}

/// Cross-origin reads for dashboards served elsewhere: `/rowcast.js`, `/sse` and
/// `/events` from the allowed Origins (any, when the allow-list is empty). WebSocket
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

/// Why an address could not be bound, and what to do about it.
fn bind_failure(err: &std::io::Error, flag: &str) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::AddrInUse => {
            format!("address already in use (another process has it; choose another with {flag})")
        }
        ErrorKind::PermissionDenied => format!(
            "permission denied (ports below 1024 need privileges; choose another with {flag})"
        ),
        ErrorKind::AddrNotAvailable => {
            format!("no such address on this machine (choose another with {flag})")
        }
        _ => format!("{err} (choose another with {flag})"),
    }
}

/// Describes where a config points, without credentials.
pub fn describe_target(pg: &tokio_postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let dbname = pg.get_dbname().unwrap_or("(default database)");
    format!("{host}:{port}/{dbname}")
}

impl Application {
    /// Connects to PostgreSQL, checks the schema, and binds the listen address.
    pub async fn build(config: Config) -> Result<Application, ServeError> {
        crate::metrics::handle();
        let auth = auth::Auth::from_config(&config.auth)?.map(Arc::new);
        let pg = db::pg_config(&config.database_url)?;
        let pool = db::pool(&pg, config.pool_size)?;
        let client = pool.get().await.map_err(|err| ServeError::Connect {
            target: describe_target(&pg),
            cause: err.into(),
        })?;
        migrate::check(&client).await?;
        let head = log::last_position(&client).await?;
        // Columns may have changed since `watch`: say so, but serve (their unreadable
        // rows are delivered as row.* events).
        registry::PROBLEMS.check(&client).await?;
        drop(client);
        let bind = |addr: SocketAddr, flag: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|cause| ServeError::Bind { addr, flag, cause })
        };
        let listener = bind(config.listen, "--listen").await?;
        let operator = match config.metrics_listen {
            Some(addr) => Some(bind(addr, "--metrics-listen").await?),
            None => None,
        };
        let ctx = AppContext {
            hub: Hub::new(head),
            pool,
            mappings: Mappings::new(),
            session: Arc::new(config.session.clone()),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            db_stats: Arc::default(),
            ready_max_lag: config.ready_max_lag,
            auth,
            limits: Arc::new(config.limits.clone()),
            connections: Arc::default(),
        };
        Ok(Application {
            listener,
            operator,
            ctx,
            pg,
            config,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address the operator listener bound, if `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.operator.as_ref().map(|listener| {
            listener
                .local_addr()
                .expect("a bound listener has an address")
        })
    }

    /// The hub (for tests and stats).
    pub fn hub(&self) -> Arc<Hub> {
        self.ctx.hub.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, closes sessions
    /// with 1001, lets the sequencer finish its batch, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        let Application {
            listener,
            operator,
            ctx,
            pg,
            config,
        } = self;
        let tasks = TaskTracker::new();
        let (feed, offers) = tail::feed(&config.tail);
        tasks.spawn(sequencer::run(
            pg.clone(),
            config.sequencer.clone(),
            Some(feed),
            ctx.shutdown.clone(),
        ));
        tasks.spawn(tail::run(
            pg,
            config.tail.clone(),
            ctx.hub.clone(),
            ctx.mappings.clone(),
            offers,
            ctx.shutdown.clone(),
        ));
        for writer in 0..ctx.hub.writers() {
            tasks.spawn(ctx.hub.clone().run_writer(writer, ctx.shutdown.clone()));
        }
        tasks.spawn(health::monitor(
            ctx.clone(),
            Duration::from_secs(5),
            ctx.shutdown.clone(),
        ));
        tasks.spawn(prune::run(
            ctx.pool.clone(),
            config.retention.clone(),
            ctx.shutdown.clone(),
        ));
        tasks.close();

        // The operator endpoints: on their own listener if there is one, else here,
        // behind an operator token when authentication is on.
        let operator_routes = match (&operator, &ctx.auth) {
            (Some(_), _) => Router::new(),
            (None, None) => health::operator(),
            (None, Some(auth)) => {
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
        let app = Router::new()
            .merge(ws::router())
            .merge(sse::router())
            .merge(http::router())
            .merge(health::liveness())
            .merge(operator_routes)
            .merge(web::router())
            .layer(cors(&ctx.limits))
            .with_state(ctx.clone());
        tracing::info!(addr = %listener.local_addr()?, "rowcast listening");
        let operator = match operator {
            Some(listener) => {
                tracing::info!(addr = %listener.local_addr()?, "rowcast operator endpoints listening");
                let app = health::router().with_state(ctx.clone());
                let listener = listen::HandshakeListener::new(
                    listener,
                    ctx.limits.clone(),
                    ctx.connections.clone(),
                );
                let serving = axum::serve(listener, listen::Serve::new(app))
                    .with_graceful_shutdown(ctx.shutdown.clone().cancelled_owned())
                    .into_future();
                Some(tokio::spawn(serving))
            }
            None => None,
        };
        let stop = ctx.shutdown.clone();
        let linked = shutdown.clone();
        tokio::spawn(async move {
            linked.cancelled().await;
            stop.cancel();
        });
        let listener =
            listen::HandshakeListener::new(listener, ctx.limits.clone(), ctx.connections.clone());
        let serving = axum::serve(listener, listen::Serve::new(app))
            .with_graceful_shutdown(ctx.shutdown.clone().cancelled_owned())
            .into_future();
        // Graceful shutdown waits for every open response, and an SSE response whose
        // client stopped reading is never polled again, so it would wait forever: give
        // open connections `shutdown_timeout`, then leave them.
        let grace = async {
            ctx.shutdown.cancelled().await;
            tokio::time::sleep(config.shutdown_timeout).await;
        };
        let served = tokio::select! {
            served = serving => served,
            _ = grace => {
                tracing::warn!("shutdown timed out; leaving connections that were still open");
                Ok(())
            }
        };

        ctx.shutdown.cancel();
        ctx.sessions.close();
        let all = async {
            ctx.sessions.wait().await;
            tasks.wait().await;
            if let Some(operator) = operator {
                let _ = operator.await;
            }
        };
        if tokio::time::timeout(config.shutdown_timeout, all)
            .await
            .is_err()
        {
            tracing::warn!("shutdown timed out; some sessions or tasks were still running");
        }
        tracing::info!("rowcast stopped");
        Ok(served?)
    }
}
