//! `rowcast-bench`: end-to-end benchmarks of rowcast against a local PostgreSQL.
//!
//! Each subcommand creates (drops first) a database of its own, installs the rowcast
//! schema and a watched table `bench_events`, starts the service as a child process
//! (this binary's hidden `serve` subcommand, so its CPU time and memory can be read from
//! `/proc/<pid>`), drives it over WebSocket from tokio tasks in this process, prints one
//! result block and stops the child. Every run is bounded in connections and time, and
//! all traffic stays on 127.0.0.1. See BENCHMARKS.md for the commands and results.
//!
//! - `latency`: commit → client receive at a fixed write rate, each subscriber on its
//!   own user topic.
//! - `fanout`: many connections on one topic; deliveries per second, latency, and
//!   server CPU time per delivery.
//! - `memory`: server RSS per idle connection.
//! - `sustained`: writes as fast as it can for a while, then checks that every written
//!   event was sequenced and delivered exactly once, in position order.
//! - `statement`: one UPDATE of every row of a large table in one transaction, on a plain
//!   table and on watched ones (captured per statement, and with `--row-path` per row),
//!   interleaved; the capture's cost as a ratio of times (no
//!   service: this measures the writer's statement alone).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_postgres::{Client, NoTls};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// rowcast benchmarks (see BENCHMARKS.md).
#[derive(Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Commit → receive latency at a fixed rate, one user topic per subscriber.
    Latency {
        #[command(flatten)]
        common: Common,
        /// WebSocket subscribers, each on its own topic `user:<i>`.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Events per second written.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds of measurement.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Fan-out: every connection on one topic.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// WebSocket connections, all subscribed to the table topic.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Events per second written.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Seconds of measurement.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// After the run, run again with this many more connections on the topic that
        /// never read (a small receive buffer each), and compare.
        #[arg(long, default_value_t = 0)]
        stalled: usize,
    },
    /// Server RSS per idle connection.
    Memory {
        #[command(flatten)]
        common: Common,
        /// Idle WebSocket connections, each subscribed to one user topic.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
    /// Writes as fast as it can, then checks that nothing was lost.
    Sustained {
        #[command(flatten)]
        common: Common,
        /// Seconds of writing.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Writer connections.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Rows inserted per transaction (one event each).
        #[arg(long, default_value_t = 10)]
        rows_per_tx: i64,
        /// Before and after the run, the same writers insert into an unwatched table of
        /// the same shape for this many seconds each (0: not), to compare with what
        /// PostgreSQL commits without capture.
        #[arg(long, default_value_t = 0)]
        compare_seconds: u64,
    },
    /// One multi-row UPDATE in one transaction: watched (captured per statement) against
    /// plain time.
    Statement {
        #[command(flatten)]
        common: Common,
        /// Rows in each table; the UPDATE changes every one.
        #[arg(long, default_value_t = 200_000)]
        rows: i64,
        /// Rounds; each times every table once, in an order that alternates.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// The writer role (created without rights beyond its tables if it is missing):
        /// not a superuser and not the tables' owner, so row-level security applies.
        #[arg(long, default_value = "bench_writer")]
        writer: String,
        /// Also time a table captured by the row trigger (the default of `rowcast.watch`).
        #[arg(long)]
        row_path: bool,
    },
    /// Runs the service (used by the other subcommands as their child process).
    #[command(hide = true)]
    Serve {
        /// PostgreSQL connection string.
        #[arg(long)]
        database_url: String,
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// Settings every benchmark shares.
#[derive(Args, Clone)]
struct Common {
    /// PostgreSQL server (superuser), without a database name.
    #[arg(long, default_value = "host=127.0.0.1 port=5432 user=postgres")]
    server: String,
    /// Database to create (dropped first) for the run.
    #[arg(long, default_value = "perf_bench")]
    database: String,
    /// Wake mode of the watched table: notify or poll.
    #[arg(long, default_value = "notify")]
    wake: String,
}

impl Common {
    fn url(&self) -> String {
        with_dbname(&self.server, &self.database)
    }
}

/// `server` (a `postgres://` URL or `key=value` settings) with its database set to `db`.
fn with_dbname(server: &str, db: &str) -> String {
    let Some(scheme_end) = server.find("://") else {
        return format!("{server} dbname={db}");
    };
    let rest = &server[scheme_end + 3..];
    let (before_query, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    let authority = before_query.split('/').next().unwrap_or_default();
    format!("{}://{authority}/{db}{query}", &server[..scheme_end])
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Bench::Serve {
        database_url,
        listen,
    } = cli.command
    {
        return serve(database_url, listen);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli.command))
}

/// The service, as `rowcast serve` runs it (in the child process).
fn serve(database_url: String, listen: SocketAddr) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROWCAST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let mut config = rowcast::Config::new(database_url);
            config.listen = listen;
            // Room for the largest runs; every benchmark client connects from 127.0.0.1.
            config.session.queue = 4096;
            config.limits.max_connections_per_ip = config.limits.max_connections;
            let app = rowcast::Application::build(config).await?;
            let shutdown = CancellationToken::new();
            let token = shutdown.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                token.cancel();
            });
            #[cfg(unix)]
            {
                let token = shutdown.clone();
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::spawn(async move {
                    term.recv().await;
                    token.cancel();
                });
            }
            app.run(shutdown).await?;
            Ok(())
        })
}

async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Latency {
            common,
            subscribers,
            rate,
            seconds,
        } => {
            let env = Env::start(&common).await?;
            let topics = (0..subscribers).map(|i| format!("user:{i}")).collect();
            let report = env
                .deliveries(topics, subscribers as i64, rate, seconds)
                .await?;
            println!(
                "latency: {subscribers} subscribers on user topics, {rate} events/s for {seconds}s, wake={}",
                common.wake
            );
            report.print();
            env.stop().await
        }
        Bench::Fanout {
            common,
            connections,
            rate,
            seconds,
            stalled,
        } => {
            let env = Env::start(&common).await?;
            let topics = vec!["bench_events".to_string(); connections];
            let report = env.deliveries(topics.clone(), 1, rate, seconds).await?;
            println!(
                "fanout: {connections} connections on one topic, {rate} events/s for {seconds}s, wake={}",
                common.wake
            );
            report.print();
            if stalled > 0 {
                check_fd_limit(connections + stalled)?;
                let rss_before = rss_kib(env.pid())?;
                let stuck = open_stalled(env.addr, stalled).await?;
                let report = env.deliveries(topics, 1, rate, seconds).await?;
                let rss_after = rss_kib(env.pid())?;
                println!(
                    "fanout again, with {stalled} more connections on the topic that never read:"
                );
                report.print();
                let closed = closed_by_server(stuck).await;
                println!(
                    "  server RSS {rss_before} KiB before the stalled connections, {rss_after} KiB at the end; \
                     stalled sessions the server closed: {closed} of {stalled}"
                );
            }
            env.stop().await
        }
        Bench::Memory {
            common,
            connections,
        } => {
            let env = Env::start(&common).await?;
            memory(&env, connections).await?;
            env.stop().await
        }
        Bench::Sustained {
            common,
            seconds,
            writers,
            rows_per_tx,
            compare_seconds,
        } => {
            let env = Env::start(&common).await?;
            sustained(&env, seconds, writers, rows_per_tx, compare_seconds).await?;
            env.stop().await
        }
        Bench::Statement {
            common,
            rows,
            rounds,
            writer,
            row_path,
        } => statement(&common, rows, rounds, &writer, row_path).await,
        Bench::Serve { .. } => unreachable!("handled in main"),
    }
}

/// Creates the benchmark's database (dropping it first) and migrates it; returns its URL
/// and a connection to it.
async fn fresh_database(common: &Common) -> anyhow::Result<(String, Client)> {
    let admin = connect(&with_dbname(&common.server, "postgres")).await?;
    for sql in [
        format!("drop database if exists {} with (force)", common.database),
        format!("create database {}", common.database),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .context("creating the benchmark database")?;
    }
    let url = common.url();
    let mut client = connect(&url).await?;
    rowcast::migrate::migrate(&mut client).await?;
    Ok((url, client))
}

/// A prepared database and the service running on it as a child process.
struct Env {
    url: String,
    addr: SocketAddr,
    child: Child,
}

/// A benchmark that fails does not leave its service running.
impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const TABLE_SQL: &str = "create table bench_events (
        id bigserial primary key,
        user_id bigint not null,
        sent_us bigint not null,
        note text not null default 'a short payload of some forty bytes here'
    )";

impl Env {
    async fn start(common: &Common) -> anyhow::Result<Env> {
        if !matches!(common.wake.as_str(), "notify" | "poll") {
            bail!("--wake must be notify or poll");
        }
        let (url, client) = fresh_database(common).await?;
        client
            .batch_execute(&format!(
                "{TABLE_SQL};
                 create table bench_plain (like bench_events including all);
                 select rowcast.watch('bench_events', topic => 'bench', routes => '{{\"user_id\": \"user\"}}', wake => '{}');",
                common.wake
            ))
            .await?;

        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(std::env::current_exe()?)
            .args([
                "serve",
                "--database-url",
                &url,
                "--listen",
                &addr.to_string(),
            ])
            .stdin(Stdio::null())
            .spawn()
            .context("starting the service")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("the service did not start listening on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Env { url, addr, child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        // SIGTERM, then wait (bounded) for a clean exit.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                self.child.wait()?;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens one connection per topic, writes `rate` events/s for `seconds` (the user id
    /// cycling through `0..users`), and measures what every connection receives.
    async fn deliveries(
        &self,
        topics: Vec<String>,
        users: i64,
        rate: u64,
        seconds: u64,
    ) -> anyhow::Result<Report> {
        check_fd_limit(topics.len())?;
        let sockets = open_subscribed(self.addr, &topics).await?;
        let stop = CancellationToken::new();
        let mut readers = Vec::with_capacity(sockets.len());
        for ws in sockets {
            readers.push(tokio::spawn(read_latencies(ws, stop.clone())));
        }
        // Let the subscriptions settle before the clock starts.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let cpu_before = cpu_ticks(self.pid())?;
        let started = Instant::now();
        let (written, commits) = write_at_rate(&self.url, users, rate, seconds).await?;
        let elapsed = started.elapsed();
        // Give the last events time to arrive, then stop reading.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu_after = cpu_ticks(self.pid())?;
        stop.cancel();
        let mut received = Vec::new();
        for reader in readers {
            received.extend(reader.await??);
        }
        // The stamp is the writer's clock just before its insert; it names the event.
        let committed: HashMap<u64, u64> = commits.iter().copied().collect();
        Ok(Report {
            written,
            elapsed,
            latencies_us: received
                .iter()
                .map(|&(sent, at)| at.saturating_sub(sent))
                .collect(),
            after_commit_us: received
                .iter()
                .filter_map(|(sent, at)| committed.get(sent).map(|c| at.saturating_sub(*c)))
                .collect(),
            commits_us: commits
                .iter()
                .map(|&(sent, done)| done.saturating_sub(sent))
                .collect(),
            server_cpu: ticks_to_duration(cpu_after - cpu_before),
            expected: written as usize * topics.len() / users as usize,
        })
    }
}

/// What a delivery benchmark measured.
struct Report {
    written: u64,
    elapsed: Duration,
    /// Stamp in the row (taken just before the insert) → receive, per delivery.
    latencies_us: Vec<u64>,
    /// The writer's commit returned → receive, per delivery.
    after_commit_us: Vec<u64>,
    /// The writer's insert + commit round trip, per event (part of the latency above).
    commits_us: Vec<u64>,
    server_cpu: Duration,
    expected: usize,
}

impl Report {
    fn print(mut self) {
        self.latencies_us.sort_unstable();
        self.after_commit_us.sort_unstable();
        self.commits_us.sort_unstable();
        let n = self.latencies_us.len();
        let secs = self.elapsed.as_secs_f64();
        println!(
            "  written {} events in {:.1}s ({:.0}/s); deliveries {} of {} expected ({:.0}/s)",
            self.written,
            secs,
            self.written as f64 / secs,
            n,
            self.expected,
            n as f64 / secs
        );
        if n > 0 {
            let lines = [
                (
                    "latency ms (row stamp before insert+commit → received)",
                    &self.latencies_us,
                ),
                (
                    "latency ms (writer's commit returned → received)",
                    &self.after_commit_us,
                ),
                (
                    "of which the writer's insert + commit round trip, ms",
                    &self.commits_us,
                ),
            ];
            for (what, sorted) in lines {
                if let Some(max) = sorted.last() {
                    let p = |q: f64| {
                        sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64
                            / 1000.0
                    };
                    println!(
                        "  {what}: p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
                        p(0.50),
                        p(0.90),
                        p(0.99),
                        *max as f64 / 1000.0
                    );
                }
            }
            println!(
                "  server CPU {:.2}s over the run: {:.2} µs per delivery",
                self.server_cpu.as_secs_f64(),
                self.server_cpu.as_secs_f64() * 1e6 / n as f64
            );
        }
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The benchmark clients' WebSocket settings. tungstenite zero-fills its read buffer to
/// its capacity before every read (128 KiB by default), which took half of the clients'
/// CPU at 100,000 deliveries/s on the cores the service shares with them; a dashboard's
/// browser does no such work. Frames here are small; a larger one grows the buffer.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Refuses a run that would run out of file descriptors (one per client connection here,
/// one per session in the child).
fn check_fd_limit(connections: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft
        && soft < connections + 200
    {
        bail!(
            "{connections} connections need a file-descriptor limit above {}; it is {soft} (raise it with `ulimit -n`)",
            connections + 200
        );
    }
    Ok(())
}

/// Opens one WebSocket per topic (at most 256 handshakes at a time) and subscribes.
async fn open_subscribed(addr: SocketAddr, topics: &[String]) -> anyhow::Result<Vec<Ws>> {
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(topics.len());
    for topic in topics {
        let gate = gate.clone();
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            let (mut ws, _) = tokio::time::timeout(
                Duration::from_secs(30),
                tokio_tungstenite::connect_async_with_config(
                    format!("ws://{addr}/ws"),
                    Some(client_config()),
                    false,
                ),
            )
            .await
            .context("websocket connect timed out")??;
            subscribe(&mut ws, &topic).await?;
            anyhow::Ok(ws)
        }));
    }
    let mut sockets = Vec::with_capacity(tasks.len());
    for task in tasks {
        sockets.push(task.await??);
    }
    Ok(sockets)
}

/// Subscribes `ws` to `topic` and waits for the `subscribed` reply.
async fn subscribe(ws: &mut Ws, topic: &str) -> anyhow::Result<()> {
    let message = serde_json::json!({"type": "subscribe", "topics": [topic]});
    ws.send(Message::text(message.to_string())).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.contains("\"subscribed\"") => return Ok(()),
            Ok(Some(Ok(_))) => continue,
            other => bail!("no subscribed reply: {other:?}"),
        }
    }
}

/// Opens `n` WebSockets subscribed to the table topic that will never be read, each
/// with a 4 KiB receive buffer so that the server's writes to it block soon.
async fn open_stalled(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Ws>> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let stream = socket.connect(addr).await?;
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            format!("ws://{addr}/ws"),
            MaybeTlsStream::Plain(stream),
            Some(client_config()),
        )
        .await?;
        subscribe(&mut ws, "bench_events").await?;
        sockets.push(ws);
    }
    Ok(sockets)
}

/// Reads every stalled socket to its end (10 s at most); counts those the server closed
/// or cut off.
async fn closed_by_server(sockets: Vec<Ws>) -> usize {
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(10), async {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                            Some(Ok(_)) => {}
                        }
                    }
                })
                .await
                .is_ok()
            })
        })
        .collect();
    let mut closed = 0;
    for task in tasks {
        if task.await.unwrap_or(false) {
            closed += 1;
        }
    }
    closed
}

/// The number after `"key":` (an optional space allowed) in a frame.
fn field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: &str = text[at..].trim_start_matches([':', ' ']);
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Reads events until `stop`, returning each one's row stamp and when it was received.
async fn read_latencies(mut ws: Ws, stop: CancellationToken) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(out),
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let received = now_us();
                    if let Some(sent) = field(&text, "\"sent_us\"") {
                        out.push((sent, received));
                    }
                }
                Some(Ok(Message::Close(frame))) => bail!("server closed a session: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(err)) => bail!("websocket error: {err}"),
                None => bail!("websocket ended"),
            }
        }
    }
}

/// Inserts `rate` rows per second for `seconds` from a few connections; returns the
/// number committed and, per row, its stamp and when its commit returned.
async fn write_at_rate(
    url: &str,
    users: i64,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(u64, Vec<(u64, u64)>)> {
    let writers = rate.div_ceil(50).clamp(2, 16);
    let per_writer = rate as f64 / writers as f64;
    let total = rate * seconds;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let client = connect(url).await?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let stmt = client
                .prepare("insert into bench_events (user_id, sent_us) values ($1, $2)")
                .await?;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_writer));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut done = 0u64;
            let mut commits = Vec::new();
            loop {
                tick.tick().await;
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return anyhow::Ok((done, commits));
                }
                let user = (n % users as u64) as i64;
                let stamp = now_us();
                client.execute(&stmt, &[&user, &(stamp as i64)]).await?;
                commits.push((stamp, now_us()));
                done += 1;
            }
        }));
    }
    let mut written = 0;
    let mut commits = Vec::new();
    for task in tasks {
        let (n, times) = task.await??;
        written += n;
        commits.extend(times);
    }
    Ok((written, commits))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').context("malformed /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // The kernel's USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS")?
        .parse()?)
}

async fn memory(env: &Env, connections: usize) -> anyhow::Result<()> {
    check_fd_limit(connections)?;
    // Warm the server up with a few sessions first, so allocator arenas and the
    // runtime's threads are in the baseline, not in the per-connection figure.
    let warm: Vec<String> = (0..16).map(|i| format!("user:warm{i}")).collect();
    let warm = open_subscribed(env.addr, &warm).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(env.pid())?;
    let topics: Vec<String> = (0..connections).map(|i| format!("user:{i}")).collect();
    let started = Instant::now();
    let sockets = open_subscribed(env.addr, &topics).await?;
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(env.pid())?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / connections as f64;
    println!(
        "memory: {connections} idle connections (each subscribed to one user topic), opened in {:.1}s",
        opened.as_secs_f64()
    );
    println!(
        "  server RSS before {before} KiB, after {after} KiB: {:.0} bytes ({:.2} KiB) per connection",
        per,
        per / 1024.0
    );
    drop(sockets);
    drop(warm);
    Ok(())
}

async fn sustained(
    env: &Env,
    seconds: u64,
    writers: usize,
    rows_per_tx: i64,
    compare_seconds: u64,
) -> anyhow::Result<()> {
    // One subscriber on the table topic checks delivery: every position once, in order.
    let mut ws = open_subscribed(env.addr, &["bench_events".to_string()])
        .await?
        .pop()
        .context("no socket")?;
    let stop = CancellationToken::new();
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let stop = stop.clone();
        let received = received.clone();
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut out_of_order = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return anyhow::Ok((last, out_of_order)),
                    message = ws.next() => match message {
                        Some(Ok(Message::Text(text))) => {
                            if let Some(pos) = field(&text, "\"pos\"") {
                                if pos != last + 1 {
                                    out_of_order += 1;
                                }
                                last = pos;
                                received.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(Ok(Message::Close(frame))) => bail!("server closed the session: {frame:?}"),
                        Some(Ok(_)) => {}
                        Some(Err(err)) => bail!("websocket error: {err}"),
                        None => bail!("websocket ended"),
                    }
                }
            }
        })
    };

    if compare_seconds > 0 {
        let (n, secs) = write_flat_out(
            &env.url,
            "bench_plain",
            writers,
            rows_per_tx,
            compare_seconds,
        )
        .await?;
        println!(
            "  before: the same writers on an unwatched table: {:.0} events/s ({n} in {secs:.1}s)",
            n as f64 / secs
        );
    }
    let done = Arc::new(AtomicBool::new(false));
    let writing = {
        let url = env.url.clone();
        tokio::spawn(async move {
            write_flat_out(&url, "bench_events", writers, rows_per_tx, seconds).await
        })
    };
    // Progress every 10 s: written so far is not known until the end, so report what
    // was delivered, and the service's memory.
    let rss = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let progress = {
        let received = received.clone();
        let done = done.clone();
        let rss = rss.clone();
        let pid = env.pid();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last = 0;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let now = received.load(Ordering::Relaxed);
                let kib = rss_kib(pid).unwrap_or(0);
                rss.lock().expect("rss samples").push(kib);
                eprintln!(
                    "  {:>4.0}s delivered {now} ({:.0}/s over the last 10 s), service RSS {kib} KiB",
                    started.elapsed().as_secs_f64(),
                    (now - last) as f64 / 10.0
                );
                last = now;
            }
        })
    };
    let (written, write_secs) = writing.await??;
    let started = Instant::now() - Duration::from_secs_f64(write_secs);

    // Wait (bounded) for the log and the subscriber to catch up.
    let client = connect(&env.url).await?;
    let catch_up = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < written && Instant::now() < catch_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    stop.cancel();
    let (last_pos, out_of_order) = reader.await??;
    progress.abort();
    let row = client
        .query_one(
            "select (select count(*) from bench_events), (select count(*) from rowcast.events), \
                    (select count(*) from rowcast.log), (select coalesce(max(pos), 0) from rowcast.log)",
            &[],
        )
        .await?;
    let (rows, events, logged, max_pos): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let delivered = received.load(Ordering::Relaxed);
    println!(
        "sustained: {writers} writers, {rows_per_tx} rows per transaction, {seconds}s of writing"
    );
    println!(
        "  written {written} events in {write_secs:.1}s: {:.0} events/s",
        written as f64 / write_secs
    );
    println!(
        "  table rows {rows}, captured {events}, sequenced {logged} (max pos {max_pos}), delivered {delivered} \
         (last pos {last_pos}, {out_of_order} out of order), all delivered {drained:.1}s after the start"
    );
    let samples = rss.lock().expect("rss samples").clone();
    if let (Some(first), Some(max), Some(last)) =
        (samples.first(), samples.iter().max(), samples.last())
    {
        println!(
            "  service RSS every 10 s: first {first} KiB, largest {max} KiB, last {last} KiB ({} samples)",
            samples.len()
        );
    }
    if compare_seconds > 0 {
        let (n, secs) = write_flat_out(
            &env.url,
            "bench_plain",
            writers,
            rows_per_tx,
            compare_seconds,
        )
        .await?;
        println!(
            "  after: the same writers on an unwatched table: {:.0} events/s ({n} in {secs:.1}s); watched/unwatched {:.2}",
            n as f64 / secs,
            (written as f64 / write_secs) / (n as f64 / secs)
        );
    }
    let lost = written as i64 - delivered as i64;
    println!(
        "  lost {lost} (written - delivered); log gaps {}",
        max_pos - logged
    );
    if lost != 0 || rows != events || events != logged || out_of_order != 0 {
        bail!("loss or disorder detected");
    }
    Ok(())
}

/// Inserts into `table` from `writers` connections as fast as they go for `seconds`,
/// `rows_per_tx` rows per transaction; returns the rows written and the time taken.
async fn write_flat_out(
    url: &str,
    table: &str,
    writers: usize,
    rows_per_tx: i64,
    seconds: u64,
) -> anyhow::Result<(u64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let client = connect(url).await?;
        let sql = format!(
            "insert into {table} (user_id, sent_us) select g, $2 from generate_series(1, $1::bigint) g"
        );
        tasks.push(tokio::spawn(async move {
            let stmt = client.prepare(&sql).await?;
            let mut written = 0u64;
            while Instant::now() < deadline {
                written += client
                    .execute(&stmt, &[&rows_per_tx, &(now_us() as i64)])
                    .await?;
            }
            anyhow::Ok(written)
        }));
    }
    let mut written = 0u64;
    for task in tasks {
        written += task.await??;
    }
    Ok((written, started.elapsed().as_secs_f64()))
}

/// The tables of the `statement` benchmark: the shape of bench/write-overhead's.
const STATEMENT_TABLE_SQL: &str =
    "create table s_plain (id bigint primary key, user_id int not null, provider_id int not null,
        status text not null, updated_at timestamptz not null default now())";

/// Times `update <table> set status = <the other one>, updated_at = now()` of every row,
/// in one transaction, as `writer`, on a plain table and on watched ones, interleaved.
/// Before each run the table is vacuumed, the log emptied and a checkpoint taken, so
/// every run starts alike.
async fn statement(
    common: &Common,
    rows: i64,
    rounds: usize,
    writer: &str,
    row_path: bool,
) -> anyhow::Result<()> {
    if !matches!(common.wake.as_str(), "notify" | "poll") {
        bail!("--wake must be notify or poll");
    }
    if writer.is_empty()
        || !writer
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!("--writer must be a plain role name");
    }
    let (url, client) = fresh_database(common).await?;
    let mut tables = vec!["s_plain", "s_set"];
    if row_path {
        tables.push("s_rows");
    }
    let routes =
        "topic => 'booking', routes => '{\"user_id\": \"user\", \"provider_id\": \"provider\"}'";
    client
        .batch_execute(&format!(
            "{STATEMENT_TABLE_SQL};
             insert into s_plain (id, user_id, provider_id, status)
             select g, g % 1000, g % 100, 'PENDING' from generate_series(1, {rows}) g;
             create table s_set (like s_plain including all);
             insert into s_set select * from s_plain;
             select rowcast.watch('s_set', {routes}, wake => '{wake}');
             select rowcast.capture_statements('s_set');
             create table s_rows (like s_plain including all);
             insert into s_rows select * from s_plain;
             select rowcast.watch('s_rows', {routes}, wake => '{wake}');
             do $$ begin
                 if not exists (select from pg_roles where rolname = '{writer}') then
                     create role {writer} login nosuperuser;
                 end if;
             end $$;
             grant usage on schema public to {writer};
             grant select, update on s_plain, s_set, s_rows to {writer};",
            wake = common.wake
        ))
        .await
        .context("creating the tables")?;
    let bypasses: bool = client
        .query_one(
            "select rolsuper or rolbypassrls from pg_roles where rolname = $1",
            &[&writer],
        )
        .await?
        .get(0);
    if bypasses {
        bail!("{writer} is a superuser or bypasses row-level security: pick another --writer");
    }
    let mut writer_config: tokio_postgres::Config = url.parse()?;
    writer_config.user(writer);
    let (as_writer, connection) = writer_config.connect(NoTls).await.context(
        "connecting as the writer (it needs to log in without a password, like pgbench's)",
    )?;
    tokio::spawn(connection);

    println!(
        "statement: one UPDATE of {rows} rows in one transaction, as {writer}, wake={}, {rounds} rounds",
        common.wake
    );
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); tables.len()];
    for round in 0..rounds {
        let mut order = tables.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut took = std::collections::HashMap::new();
        for table in order {
            for sql in [
                format!("vacuum {table}"),
                "truncate rowcast.events, rowcast.log".to_string(),
                "checkpoint".to_string(),
            ] {
                client.batch_execute(&sql).await?;
            }
            let started = Instant::now();
            as_writer
                .batch_execute(&format!(
                    "begin;
                     update {table} set status = case status when 'PENDING' then 'CONFIRMED' else 'PENDING' end,
                                        updated_at = now();
                     commit"
                ))
                .await
                .with_context(|| format!("updating {table}"))?;
            took.insert(table, started.elapsed().as_secs_f64() * 1000.0);
        }
        let captured: i64 = client
            .query_one("select count(*) from rowcast.events", &[])
            .await?
            .get(0);
        let plain = took["s_plain"];
        let mut line = format!("  round {}: plain {plain:.0} ms", round + 1);
        for (i, table) in tables.iter().enumerate().skip(1) {
            let ratio = took[table] / plain;
            ratios[i].push(ratio);
            line += &format!(", {table} {:.0} ms ({ratio:.2}x)", took[table]);
        }
        println!("{line}; events in the log after the last run: {captured}");
    }
    for (i, table) in tables.iter().enumerate().skip(1) {
        let mut r = ratios[i].clone();
        r.sort_by(f64::total_cmp);
        println!(
            "  {table}/plain: median {:.2}x (min {:.2}x, max {:.2}x)",
            r[r.len() / 2],
            r[0],
            r[r.len() - 1]
        );
    }
    Ok(())
}
