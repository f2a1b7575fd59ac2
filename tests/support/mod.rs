//! Test harness: a fresh database per test, the real service in-process on port 0, and
//! a real WebSocket client. Every wait is bounded.

pub mod browser;
pub mod cluster;
pub mod nats;
pub mod proxy;
pub mod service;
pub mod sse;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use rowcast::{Application, Config};

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// How often a bounded wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// Looks at `condition` every [`POLL`] until it holds or `limit` has passed (a look that
/// is still running at the deadline counts as no). Returns whether it held.
pub async fn eventually(limit: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, condition()).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(_) => return false,
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep_until((now + POLL).min(deadline)).await;
    }
}

/// Waits until `condition` holds, at most [`WAIT`]; panics saying what it waited for.
pub async fn wait_until(what: &str, condition: impl AsyncFnMut() -> bool) {
    assert!(
        eventually(WAIT, condition).await,
        "waited {WAIT:?} in vain until {what}"
    );
}

/// Bytes held in the kernel on the TCP connections to `server`: sent by the server but
/// not yet taken by the client's kernel, and received by the client's kernel but not yet
/// read by the client. Both are above zero while a client has stopped reading a stream
/// the server still writes. Reads the kernel's socket table (`/proc/net/tcp`, Linux).
pub fn stuck_bytes(server: SocketAddr) -> (u64, u64) {
    let table = std::fs::read_to_string("/proc/net/tcp")
        .expect("reading /proc/net/tcp (the kernel's socket table, Linux)");
    let port = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let (mut unsent, mut unread) = (0, 0);
    for line in table.lines().skip(1) {
        // sl local_address rem_address st tx_queue:rx_queue ...
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, local, remote, state, queues, ..] = fields[..] else {
            continue;
        };
        let Some((tx, rx)) = queues.split_once(':') else {
            continue;
        };
        let (tx, rx) = (
            u64::from_str_radix(tx, 16).unwrap_or(0),
            u64::from_str_radix(rx, 16).unwrap_or(0),
        );
        // 0A: listening.
        if port(local) == Some(server.port()) && state != "0A" {
            unsent += tx;
        } else if port(remote) == Some(server.port()) {
            unread += rx;
        }
    }
    (unsent, unread)
}

/// The demo schema.
pub const DEMO_SQL: &str = include_str!("../../sql/demo.sql");

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// Its connection string.
    pub url: String,
    admin_url: String,
}

impl TestDb {
    /// A new empty database on the shared test server.
    pub async fn empty() -> TestDb {
        Self::empty_on(cluster::shared()).await
    }

    /// A new empty database on `cluster`.
    pub async fn empty_on(cluster: &cluster::Cluster) -> TestDb {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "rowcast_t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&cluster.admin_url).await;
        for sql in [
            format!("drop database if exists {name}"),
            format!("create database {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .expect("creating the test database");
        }
        TestDb {
            url: cluster.url_for(&name),
            name,
            admin_url: cluster.admin_url.clone(),
        }
    }

    /// A new database with the rowcast schema migrated in.
    pub async fn migrated() -> TestDb {
        let db = Self::empty().await;
        let mut client = db.client().await;
        rowcast::migrate::migrate(&mut client)
            .await
            .expect("migrating the test database");
        db
    }

    /// A new migrated database with the demo schema loaded and watched.
    pub async fn demo() -> TestDb {
        let db = Self::migrated().await;
        db.client()
            .await
            .batch_execute(DEMO_SQL)
            .await
            .expect("loading sql/demo.sql");
        db
    }

    /// A new connection to this database.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// The positions in the log, in order.
    pub async fn positions(&self) -> Vec<i64> {
        self.client()
            .await
            .query("select pos from rowcast.log order by pos", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Waits until the sequencer has given positions to `count` events.
    pub async fn wait_sequenced(&self, count: i64) {
        let client = self.client().await;
        let mut n: i64 = 0;
        let sequenced = eventually(WAIT * 3, async || {
            n = client
                .query_one("select count(*) from rowcast.log", &[])
                .await
                .unwrap()
                .get(0);
            n >= count
        })
        .await;
        assert!(sequenced, "only {n} of {count} events sequenced");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        // Drop needs its own runtime: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin_url, NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("drop database if exists {name} with (force)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Connects, panicking with the url's target on failure.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|err| panic!("connecting to {url}: {err}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Settings for a test service: short timers so tests run fast.
pub fn test_config(url: &str) -> Config {
    let mut config = Config::new(url);
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.pool_size = 8;
    config.sequencer.poll_interval = Duration::from_millis(50);
    config.tail.poll_interval = Duration::from_millis(200);
    config.shutdown_timeout = Duration::from_secs(5);
    config
}

/// The service, running in-process.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    /// Starts the service on `db` with the test settings.
    pub async fn start(db: &TestDb) -> TestApp {
        Self::start_with(test_config(&db.url)).await
    }

    /// Starts the service with `config`.
    pub async fn start_with(config: Config) -> TestApp {
        let app = Application::build(config).await.expect("starting rowcast");
        let addr = app.local_addr();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            app.run(token).await.expect("rowcast stopped with an error");
        });
        TestApp {
            addr,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Opens a WebSocket to `/ws`.
    pub async fn ws(&self) -> WsClient {
        WsClient::connect(self.addr).await
    }

    /// Waits until the service's hub has published up to `pos` (the `head` of a poll on
    /// a topic nobody writes).
    pub async fn wait_head(&self, pos: i64) {
        let mut head = Value::Null;
        let reached = eventually(WAIT, async || {
            let (status, body) = sse::get_json(self.addr, "/events?topics=nobody:0").await;
            assert_eq!(status, 200, "{body}");
            head = body["head"].clone();
            head.as_i64().unwrap() >= pos
        })
        .await;
        assert!(reached, "head stuck at {head}");
    }

    /// Shuts the service down and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(WAIT, handle)
                .await
                .expect("rowcast did not stop in time")
                .expect("rowcast task panicked");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A WebSocket client speaking JSON.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `/ws` on `addr`.
    pub async fn connect(addr: SocketAddr) -> WsClient {
        Self::connect_url(format!("ws://{addr}/ws")).await
    }

    /// Connects to `/ws` on `addr` with `?token=`.
    pub async fn connect_with_token(addr: SocketAddr, token: &str) -> WsClient {
        Self::connect_url(format!("ws://{addr}/ws?token={token}")).await
    }

    async fn connect_url(url: String) -> WsClient {
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket connect timed out")
            .expect("websocket connect failed");
        WsClient { stream }
    }

    /// Sends a JSON message.
    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("sending a websocket frame");
    }

    /// Receives the next JSON message (skipping pings), or panics after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        match self.recv_within(WAIT).await {
            Some(value) => value,
            None => panic!("no message within {WAIT:?}"),
        }
    }

    /// The next JSON message within `limit`, or `None`.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("server sent invalid JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    panic!("server closed the connection: {frame:?}")
                }
                Some(Ok(_)) => continue,
                Some(Err(err)) => panic!("websocket error: {err}"),
                None => panic!("websocket ended"),
            }
        }
    }

    /// The next text frame exactly as the server sent it (numbers beyond f64 intact).
    pub async fn recv_text(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no message within {WAIT:?}"));
            match next {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(Message::Close(frame))) => {
                    panic!("server closed the connection: {frame:?}")
                }
                Some(Ok(_)) => continue,
                Some(Err(err)) => panic!("websocket error: {err}"),
                None => panic!("websocket ended"),
            }
        }
    }

    /// Waits for the close frame and returns its code.
    pub async fn closed_with(&mut self) -> u16 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("no close within the wait");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
                Some(Ok(Message::Close(None))) | None => return 1005,
                Some(Ok(_)) => continue,
                Some(Err(err)) => panic!("websocket error before close: {err}"),
            }
        }
    }

    /// Subscribes and returns the `subscribed` reply.
    pub async fn subscribe(&mut self, topics: &[&str], since: Option<i64>) -> Value {
        let mut message = serde_json::json!({"type": "subscribe", "topics": topics});
        if let Some(since) = since {
            message["since"] = since.into();
        }
        self.send(message).await;
        let reply = self.recv().await;
        assert_eq!(reply["type"], "subscribed", "unexpected reply {reply}");
        reply
    }

    /// Receives `n` messages, each of which must be an `event`.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let message = self.recv().await;
            assert_eq!(message["type"], "event", "expected an event, got {message}");
            out.push(message);
        }
        out
    }

    /// Asserts that nothing arrives within `limit`.
    pub async fn expect_silence(&mut self, limit: Duration) {
        if let Some(message) = self.recv_within(limit).await {
            panic!("expected no message, got {message}");
        }
    }
}

/// The positions of a list of events.
pub fn positions(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["pos"].as_i64().unwrap()).collect()
}

/// Runs each statement in its own transaction, in order.
pub async fn run(client: &Client, statements: &[&str]) {
    for sql in statements {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
    }
}

/// Receives exactly the events named, in order, then nothing more for 300 ms.
pub async fn expect_events(ws: &mut WsClient, expected: &[&str]) -> Vec<Value> {
    let events = ws.events(expected.len()).await;
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, expected);
    ws.expect_silence(Duration::from_millis(300)).await;
    events
}
