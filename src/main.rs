//! The `rowcast` command line: `serve` and `migrate`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use rowcast::{Application, Config, db, migrate};

/// rowcast: PostgreSQL changes, pushed to dashboards as typed events.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket subscribers (runs the sequencer and the tailer too).
    Serve {
        /// PostgreSQL connection URL.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "ROWCAST_LISTEN")]
        listen: SocketAddr,
        /// Install or upgrade the rowcast schema before serving (needs a role that may).
        #[arg(long, env = "ROWCAST_MIGRATE")]
        migrate: bool,
    },
    /// Install or upgrade the rowcast schema in the database.
    Migrate {
        /// PostgreSQL connection URL (a role that may create the schema).
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("ROWCAST_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rowcast: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            database_url,
            listen,
            migrate,
        } => {
            if migrate {
                run_migrations(&database_url).await?;
            }
            let mut config = Config::new(database_url);
            config.listen = listen;
            if !listen.ip().is_loopback() {
                tracing::warn!(
                    %listen,
                    "authentication is not configured: every client may subscribe to every topic"
                );
            } else {
                tracing::warn!("authentication is not configured: listening on loopback only");
            }
            let app = Application::build(config).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            app.run(shutdown).await?;
        }
        Command::Migrate { database_url } => run_migrations(&database_url).await?,
    }
    Ok(())
}

async fn run_migrations(database_url: &str) -> anyhow::Result<()> {
    let pg = db::pg_config(database_url)?;
    let (mut client, connection) = pg.connect(tokio_postgres::NoTls).await.map_err(|err| {
        anyhow::anyhow!(
            "cannot connect to postgres at {}: {err} (is it running?)",
            rowcast::serve::describe_target(&pg)
        )
    })?;
    tokio::spawn(connection);
    let applied = migrate::migrate(&mut client).await?;
    let version = migrate::latest_version();
    if applied.is_empty() {
        tracing::info!(version, "rowcast schema is up to date");
    } else {
        tracing::info!(version, ?applied, "rowcast schema migrated");
    }
    Ok(())
}

async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
