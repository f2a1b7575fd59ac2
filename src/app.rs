//! Start-up: the one place that starts the service's tasks.
//!
//! [`Application::build`] connects, checks the schema and binds (port 0 works, for
//! tests): the public listener and, if `metrics_listen` is set, the operator listener.
//! [`Application::run`] starts the sequencer, the tailer (with the bus's publisher and
//! reader when `bus.nats_url` is set), the hub's writers, the health monitor and
//! retention, serves HTTP until a shutdown token is cancelled, then closes every session
//! with 1001 and waits for the tasks to finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capture::bus::{self, Bus};
use crate::capture::{log, prune, registry, sequencer, tail};
use crate::config::Config;
use crate::db::{self, DbError};
use crate::events::Mappings;
use crate::hub::Hub;
use crate::migrate::{self, MigrateError};
use crate::serve::{self, AppContext, Shared, auth, health};

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
    /// The bus settings cannot be used (a malformed `bus.nats_url`).
    #[error("bus: {0}")]
    Bus(#[from] bus::BusError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound, ready-to-run service.
pub struct Application {
    listener: TcpListener,
    /// The operator listener (`metrics_listen`), if configured.
    operator: Option<TcpListener>,
    ctx: AppContext,
    pg: tokio_postgres::Config,
    config: Config,
    /// The bus, if `bus.nats_url` is set.
    bus: Option<Bus>,
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
        let bus = Bus::connect(&config.bus).await?;
        let ctx = AppContext::new(Shared {
            hub: Hub::new(head),
            pool,
            mappings: Mappings::new(),
            session: config.session.clone(),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            db_stats: Default::default(),
            ready_max_lag: config.ready_max_lag,
            stall_limit: config.sequencer.stall_limit,
            auth,
            limits: Arc::new(config.limits.clone()),
            connections: Arc::default(),
        });
        Ok(Application {
            listener,
            operator,
            ctx,
            pg,
            config,
            bus,
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

    /// Serves until `shutdown` is cancelled, then stops accepting, closes sessions
    /// with 1001, lets the sequencer finish its batch, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        let Application {
            listener,
            operator,
            ctx,
            pg,
            config,
            bus,
        } = self;
        let tasks = TaskTracker::new();
        let (feed, offers) = tail::feed(&config.tail, ctx.hub.clone());
        let leading = Arc::new(AtomicBool::new(false));
        tasks.spawn(sequencer::run(
            pg.clone(),
            config.sequencer.clone(),
            Some(feed),
            leading.clone(),
            ctx.shutdown.clone(),
        ));
        let link = bus.map(|bus| {
            let stall_after = bus.stall_after();
            let (publisher, publishing) = bus::publisher(bus.clone(), ctx.shutdown.clone());
            let (changes, reading) =
                bus::reader(bus, ctx.hub.clone(), leading.clone(), ctx.shutdown.clone());
            tasks.spawn(publishing);
            tasks.spawn(reading);
            tail::BusLink {
                publisher,
                leading,
                changes,
                stall_after,
            }
        });
        tasks.spawn(tail::run_with_bus(
            pg,
            config.tail.clone(),
            ctx.hub.clone(),
            ctx.mappings.clone(),
            offers,
            link,
            ctx.shutdown.clone(),
        ));
        for writer in 0..ctx.hub.writers() {
            tasks.spawn(ctx.hub.clone().run_writer(writer, ctx.shutdown.clone()));
        }
        tasks.spawn(health::monitor(
            ctx.clone(),
            Duration::from_secs(1),
            ctx.shutdown.clone(),
        ));
        tasks.spawn(prune::run(
            ctx.pool.clone(),
            config.retention.clone(),
            ctx.shutdown.clone(),
        ));
        tasks.spawn(crate::metrics::upkeep(ctx.shutdown.clone()));
        tasks.close();

        let app = serve::public_router(&ctx, operator.is_some());
        tracing::info!(addr = %listener.local_addr()?, "rowcast listening");
        let operator = match operator {
            Some(listener) => {
                tracing::info!(addr = %listener.local_addr()?, "rowcast operator endpoints listening");
                let app = serve::operator_router(&ctx);
                let ctx = ctx.clone();
                Some(tokio::spawn(async move {
                    serve::serve(listener, app, &ctx).await
                }))
            }
            None => None,
        };
        let stop = ctx.shutdown.clone();
        let linked = shutdown.clone();
        tokio::spawn(async move {
            linked.cancelled().await;
            stop.cancel();
        });
        let serving = serve::serve(listener, app, &ctx);
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
