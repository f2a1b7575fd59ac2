//! The `rowcast` command line. Parses arguments, sets up logging, and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use rowcast::admin::{self, WatchSpec};
use rowcast::config::LogFormat;
use rowcast::{Application, Config, db, migrate};

/// rowcast: PostgreSQL changes, pushed to dashboards as events.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve subscribers (runs the sequencer and the log tailer too).
    Serve(ServeArgs),
    /// Install or upgrade the rowcast schema (idempotent).
    Migrate(AdminDb),
    /// Watch a table: install its capture triggers, or update its settings.
    Watch {
        #[command(flatten)]
        db: AdminDb,
        #[command(flatten)]
        spec: WatchSpec,
    },
    /// Stop watching a table: remove its triggers (captured events stay in the log).
    Unwatch {
        #[command(flatten)]
        db: AdminDb,
        /// The table.
        table: String,
    },
    /// Show watched tables, positions, lag and NOTIFY-queue usage.
    Status {
        #[command(flatten)]
        db: AdminDb,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// A running service to ask for its connected clients (`/api/stats`).
        #[arg(long, value_name = "HOST:PORT")]
        server: Option<SocketAddr>,
    },
    /// Remove every capture trigger and the rowcast schema (app tables are untouched).
    Uninstall {
        #[command(flatten)]
        db: AdminDb,
        /// Required: uninstalling deletes the event log.
        #[arg(long)]
        yes: bool,
    },
    /// Print the SQL-only install script (what `sql/install.sql` holds).
    InstallSql,
    /// Print TypeScript declarations of every watched table's events (see web/rowcast.d.ts).
    Types(AdminDb),
    /// Follow the event stream from a terminal: what each write produces.
    Tail {
        #[command(flatten)]
        db: AdminDb,
        /// Only events on this topic (repeatable; all events without it).
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<String>,
        /// Start after this position (0: everything retained); without it, live only.
        #[arg(long)]
        since: Option<i64>,
        /// Print each event's JSON frame, as subscribers receive it.
        #[arg(long)]
        json: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Start a demo: PostgreSQL (a throwaway cluster unless DATABASE_URL is set), the
    /// demo schema, a writer playing attendance, booking and course activity, and the
    /// live dashboard.
    Demo {
        /// Address to serve the dashboard on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Average pause between the writer's statements, in milliseconds.
        #[arg(long, default_value_t = 300)]
        pace_ms: u64,
        /// Only load the demo schema and write; serve nothing (needs DATABASE_URL).
        #[arg(long)]
        writer_only: bool,
    },
    /// Print a signed HS256 token for development, using the configured `auth.secret`.
    Token {
        /// TOML configuration file (as for `serve`).
        #[arg(long, short, env = "ROWCAST_CONFIG")]
        config: Option<PathBuf>,
        /// The subject (`sub`).
        #[arg(long, default_value = "1")]
        sub: String,
        /// A role (`role` claim), e.g. admin.
        #[arg(long)]
        role: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (environment and flags override it).
    #[arg(long, short, env = "ROWCAST_CONFIG")]
    config: Option<PathBuf>,
    /// PostgreSQL URL of the service's role (or `DATABASE_URL`).
    #[arg(long)]
    database_url: Option<String>,
    /// Address to listen on (default 127.0.0.1:8080, or `ROWCAST_LISTEN`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the operator listener for /healthz, /readyz, /metrics and /api/stats
    /// (or `ROWCAST_METRICS_LISTEN`); keep it private.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Install or upgrade the schema before serving (needs a role that may).
    #[arg(long, env = "ROWCAST_MIGRATE")]
    migrate: bool,
    /// Log as JSON lines.
    #[arg(long)]
    json_logs: bool,
    /// Print the resulting configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Args)]
struct AdminDb {
    /// PostgreSQL URL of a role that owns the watched tables (or `ROWCAST_ADMIN_URL`,
    /// then `DATABASE_URL`).
    #[arg(long, env = "ROWCAST_ADMIN_URL")]
    admin_url: Option<String>,
}

impl AdminDb {
    fn url(&self) -> anyhow::Result<String> {
        self.admin_url
            .clone()
            .or_else(|| std::env::var("DATABASE_URL").ok())
            .filter(|url| !url.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!("no database given: pass --admin-url or set DATABASE_URL")
            })
    }
}

/// Logs go to stderr, coloured only when stderr is a terminal (and `NO_COLOR` is unset):
/// a pipe or a file gets plain text.
fn init_logs(filter: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("ROWCAST_LOG").unwrap_or_else(|_| EnvFilter::new(filter));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("rowcast: {}", explain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: a cause whose text the message
/// already holds is skipped, and a PostgreSQL error is PostgreSQL's own message.
fn explain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let (text, last) = match cause.downcast_ref::<tokio_postgres::Error>() {
            Some(pg) => (db::describe_pg(pg), true),
            None => (cause.to_string(), false),
        };
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        if last {
            break;
        }
    }
    out
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve(args).await?,
        Command::Migrate(db) => {
            init_logs("info", LogFormat::Human);
            run_migrations(&db.url()?).await?;
        }
        Command::Watch { db, spec } => {
            let client = connect(&db.url()?).await?;
            let shown = admin::watch(&client, &spec).await?;
            println!("watching {shown}");
        }
        Command::Unwatch { db, table } => {
            let client = connect(&db.url()?).await?;
            if admin::unwatch(&client, &table).await? {
                println!("no longer watching {table}");
            } else {
                println!("{table} was not watched");
            }
        }
        Command::Status { db, json, server } => {
            let client = connect(&db.url()?).await?;
            let status = admin::status(&client).await?;
            let live = match server {
                Some(addr) => Some(admin::server_stats(addr).await?),
                None => None,
            };
            if json {
                let mut value = serde_json::to_value(&status)?;
                if let Some(live) = live {
                    value["server"] = live;
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print_status(&status);
                if let Some(live) = live {
                    println!(
                        "server           {} clients, {} topics, head {}, lag {}",
                        live["connections"], live["topics"], live["head"], live["lag"]
                    );
                }
            }
        }
        Command::Uninstall { db, yes } => {
            if !yes {
                eprintln!(
                    "rowcast: uninstall deletes the event log and every capture trigger; run again with --yes"
                );
                return Ok(ExitCode::from(2));
            }
            let client = connect(&db.url()?).await?;
            admin::uninstall(&client).await?;
            println!("rowcast removed: triggers and schema dropped, app tables untouched");
        }
        Command::InstallSql => print!("{}", admin::install_sql()),
        Command::Types(db) => {
            let client = connect(&db.url()?).await?;
            print!("{}", rowcast::types::typescript(&client).await?);
        }
        Command::Tail {
            db,
            topics,
            since,
            json,
            count,
        } => {
            let pg = db::pg_config(&db.url()?)?;
            let options = rowcast::follow::TailOptions {
                topics,
                since,
                json,
                count,
            };
            rowcast::follow::tail(&pg, &options, &mut std::io::stdout().lock()).await?;
        }
        Command::Demo {
            listen,
            pace_ms,
            writer_only,
        } => demo(listen, pace_ms, writer_only).await?,
        Command::Token {
            config,
            sub,
            role,
            ttl,
        } => {
            let config = Config::load(config.as_deref())?;
            println!(
                "{}",
                rowcast::serve::auth::dev_token(&config.auth, &sub, role.as_deref(), ttl)?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let loaded = Config::load_reporting(args.config.as_deref())?;
    let mut config = loaded.config;
    if let Some(url) = args.database_url {
        config.database_url = url;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(listen) = args.metrics_listen {
        config.metrics_listen = Some(listen);
    }
    if args.json_logs {
        config.log_format = LogFormat::Json;
    }
    if args.print_config {
        print!("{}", config.to_redacted_toml());
        return Ok(());
    }
    init_logs(&config.log, config.log_format);
    if !loaded.ignored_env.is_empty() {
        tracing::warn!(
            variables = %loaded.ignored_env.join(", "),
            "ignoring environment variables that name no rowcast setting"
        );
    }
    if config.database_url.is_empty() {
        anyhow::bail!(
            "no database given: pass --database-url, set DATABASE_URL, or database_url in the config file"
        );
    }
    if args.migrate {
        run_migrations(&config.database_url).await?;
    }
    // An incomplete [auth] is refused by Application::build, with what is missing.
    if matches!(config.auth.algorithm_in_use(), Ok(None)) {
        if config.listen.ip().is_loopback() {
            tracing::warn!(
                "authentication is not configured: every client may subscribe to every topic; listening on loopback only"
            );
        } else {
            tracing::warn!(listen = %config.listen, "AUTHENTICATION IS NOT CONFIGURED and the service listens beyond loopback: every client may subscribe to every topic");
        }
    }
    let app = Application::build(config).await?;
    let shutdown = CancellationToken::new();
    shutdown_on_signals(shutdown.clone());
    println!(
        "rowcast: serving on http://{}/ (Ctrl-C to stop)",
        app.local_addr()
    );
    if let Some(addr) = app.metrics_addr() {
        println!("rowcast: operator endpoints on http://{addr}/ (/readyz, /metrics, /api/stats)");
    }
    app.run(shutdown).await?;
    Ok(())
}

async fn demo(listen: SocketAddr, pace_ms: u64, writer_only: bool) -> anyhow::Result<()> {
    init_logs("info", LogFormat::Human);
    let shutdown = CancellationToken::new();
    shutdown_on_signals(shutdown.clone());
    // Keep the throwaway cluster alive until the end of this function: dropping it
    // stops the server and removes its directory.
    let (url, _cluster) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            tracing::info!("no DATABASE_URL: starting a throwaway PostgreSQL");
            let cluster = tokio::task::spawn_blocking(|| {
                rowcast::embedded::EmbeddedPostgres::start("rowcast-demo")
            })
            .await??;
            (cluster.url("postgres"), Some(cluster))
        }
    };
    run_migrations(&url).await?;
    rowcast::demo::load(&connect(&url).await?).await?;
    if writer_only {
        if _cluster.is_some() {
            anyhow::bail!(
                "--writer-only needs DATABASE_URL: it writes to a database a service reads"
            );
        }
        tracing::info!("rowcast demo: writing demo activity (Ctrl-C to stop)");
        let players: Vec<_> = (0..3)
            .map(|seed| {
                tokio::spawn(rowcast::demo::play(
                    url.clone(),
                    std::time::Duration::from_millis(pace_ms),
                    seed,
                    shutdown.clone(),
                ))
            })
            .collect();
        for player in players {
            player.await?;
        }
        return Ok(());
    }
    let mut config = Config::new(url.clone());
    config.listen = listen;
    let app = Application::build(config).await?;
    let addr = app.local_addr();
    for seed in 0..3 {
        tokio::spawn(rowcast::demo::play(
            url.clone(),
            std::time::Duration::from_millis(pace_ms),
            seed,
            shutdown.clone(),
        ));
    }
    println!("rowcast demo: open http://{addr}/ (Ctrl-C to stop)");
    app.run(shutdown).await?;
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let pg = db::pg_config(url)?;
    let (client, connection) = pg.connect(tokio_postgres::NoTls).await.map_err(|err| {
        anyhow::anyhow!(
            "cannot connect to postgres at {}: {}",
            rowcast::app::describe_target(&pg),
            db::connect_failure(&err.into())
        )
    })?;
    tokio::spawn(connection);
    Ok(client)
}

async fn run_migrations(database_url: &str) -> anyhow::Result<()> {
    let mut client = connect(database_url).await?;
    let applied = migrate::migrate(&mut client).await?;
    let version = migrate::latest_version();
    if applied.is_empty() {
        tracing::info!(version, "rowcast schema is up to date");
    } else {
        tracing::info!(version, ?applied, "rowcast schema migrated");
    }
    Ok(())
}

fn print_status(status: &admin::Status) {
    println!("schema version   {}", status.schema_version);
    println!("head position    {}", status.head);
    println!("unsequenced      {}", status.unsequenced);
    println!(
        "oldest waiting   {:.1}s{}",
        status.oldest_unsequenced_seconds,
        if status.unsequenced > 0 && status.oldest_unsequenced_seconds > 5.0 {
            "  (events wait for positions: is a rowcast replica running and sequencing?)"
        } else {
            ""
        }
    );
    println!("retained events  {}", status.retained);
    println!("notify queue     {:.4}%", status.notify_queue_usage * 100.0);
    println!("service conns    {}", status.service_connections);
    println!("watched tables   {}", status.watched.len());
    for w in &status.watched {
        println!(
            "  {:<28} topic={} wake={} domain={} routes={} exclude={:?}{}",
            w.table,
            w.topic,
            w.wake,
            w.domain.as_deref().unwrap_or("-"),
            w.routes,
            w.exclude,
            if w.active { "" } else { "  (inactive)" }
        );
        if let Some(problem) = &w.problem {
            println!("    problem: {problem}");
        }
    }
}

/// Cancels `shutdown` at Ctrl-C (SIGINT) or SIGTERM. The handlers are in place when this
/// returns, so a signal sent after (say, once the URL is printed) is never missed.
fn shutdown_on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    });
}
