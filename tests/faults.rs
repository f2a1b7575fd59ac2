//! Faults: every committed change reaches every resuming subscriber exactly once, in
//! position order, whatever fails in between. Each test has a cluster or service of its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::pipeline::NEW_BOOKING;
use crate::support::cluster::Cluster;
use crate::support::proxy::Proxy;
use crate::support::service::{ServiceProcess, Writer};
use crate::support::{
    DEMO_SQL, TestApp, TestDb, WAIT, connect, eventually, positions, test_config, wait_until,
};

/// A dashboard that follows `bookings`, reconnecting (to any of `addrs`) and resuming
/// with the last position it saw, and records every position it receives.
struct Follower {
    seen: Arc<Mutex<Vec<i64>>>,
    reconnects: Arc<Mutex<u32>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Follower {
    fn start(addrs: Arc<Mutex<Vec<SocketAddr>>>) -> Follower {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reconnects = Arc::new(Mutex::new(0));
        let (log, count) = (seen.clone(), reconnects.clone());
        let handle = tokio::spawn(async move {
            let mut turn = 0usize;
            loop {
                let addr = {
                    let addrs = addrs.lock().unwrap();
                    addrs[turn % addrs.len()]
                };
                turn += 1;
                let since = log.lock().unwrap().last().copied().unwrap_or(0);
                if let Ok((mut ws, _)) =
                    tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await
                {
                    let subscribe =
                        json!({"type": "subscribe", "topics": ["bookings"], "since": since});
                    if ws.send(Message::text(subscribe.to_string())).await.is_ok() {
                        while let Some(Ok(message)) = ws.next().await {
                            let Message::Text(text) = message else {
                                continue;
                            };
                            let value: Value = serde_json::from_str(&text).unwrap();
                            if value["type"] == "event" {
                                log.lock().unwrap().push(value["pos"].as_i64().unwrap());
                            }
                        }
                    }
                }
                *count.lock().unwrap() += 1;
                // A reconnecting client's pause, not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Follower {
            seen,
            reconnects,
            handle,
        }
    }

    /// How many events it has received.
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until `n` more events have arrived: the service is up and delivering.
    async fn sees_more(&self, n: usize) {
        let from = self.count();
        let what = format!("the follower receives {n} events after its first {from}");
        wait_until(&what, async || self.count() >= from + n).await;
    }

    /// Waits until `n` events were seen, then checks they are exactly 1..=n.
    async fn expect_exactly(&self, n: i64) {
        let arrived = eventually(WAIT * 3, async || self.count() as i64 >= n).await;
        assert!(arrived, "only {} of {n} events arrived", self.count());
        // Not a wait for a condition: room for a duplicate or a stray event to show up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = self.seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            (1..=n).collect::<Vec<_>>(),
            "every position exactly once, in order"
        );
    }

    fn reconnects(&self) -> u32 {
        *self.reconnects.lock().unwrap()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Waits until the writer has committed `n` more bookings.
async fn writes(writer: &Writer, n: u64) {
    let from = writer.committed();
    let what = format!("the writer commits {n} bookings after its first {from}");
    wait_until(&what, async || writer.committed() >= from + n).await;
}

async fn own_demo_db(cluster: &Cluster) -> TestDb {
    let db = TestDb::empty_on(cluster).await;
    let mut client = db.client().await;
    rowcast::migrate::migrate(&mut client).await.unwrap();
    client.batch_execute(DEMO_SQL).await.unwrap();
    db
}

/// Stops the writer and returns how many bookings really committed: a commit whose
/// acknowledgement was lost to a fault counts too (the writer saw an error, but the row
/// and its event are there). Checks that the writer's own count is not above it.
async fn committed(db: &TestDb, writer: Writer) -> i64 {
    let acknowledged = writer.stop().await as i64;
    let rows: i64 = db
        .client()
        .await
        .query_one("select count(*) from bookings", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        rows >= acknowledged,
        "{acknowledged} acknowledged commits, {rows} rows"
    );
    assert!(
        rows <= acknowledged + 50,
        "far more rows ({rows}) than acknowledged commits ({acknowledged})"
    );
    rows
}

async fn sequenced_count(db: &TestDb) -> i64 {
    let total: i64 = db
        .client()
        .await
        .query_one("select count(*) from rowcast.events", &[])
        .await
        .unwrap()
        .get(0);
    db.wait_sequenced(total).await;
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_service_under_load_loses_nothing() {
    let db = TestDb::demo().await;
    let mut service = ServiceProcess::start(&db.url, None).await;
    let addr = service.addr;
    let follower = Follower::start(Arc::new(Mutex::new(vec![addr])));
    let writer = Writer::start(&db.url, Duration::from_millis(3));
    for _ in 0..2 {
        // Killed while it delivers under load, and down while bookings are written.
        follower.sees_more(50).await;
        service.kill();
        writes(&writer, 50).await;
        service = ServiceProcess::start(&db.url, Some(addr)).await;
    }
    follower.sees_more(50).await;
    let written = committed(&db, writer).await;
    assert!(written > 100, "only {written} writes");
    assert_eq!(sequenced_count(&db).await, written);
    follower.expect_exactly(written).await;
    assert!(follower.reconnects() >= 2);
}

async fn restart_under_load(mode: &str) {
    let cluster = Cluster::start_own();
    let own = cluster.own.as_ref().unwrap();
    let db = own_demo_db(&cluster).await;
    let app = TestApp::start(&db).await;
    let follower = Follower::start(Arc::new(Mutex::new(vec![app.addr])));
    let writer = Writer::start(&db.url, Duration::from_millis(3));
    follower.sees_more(50).await;
    own.stop(mode).unwrap();
    own.resume().unwrap();
    let restarted = tokio::time::Instant::now();
    let before = follower.seen.lock().unwrap().len();
    // Live again within 5 s, without restarting the service.
    let live = eventually(Duration::from_secs(5), async || {
        follower.seen.lock().unwrap().len() > before + 5 && writer.committed() as usize > before + 5
    })
    .await;
    assert!(
        live,
        "not live within 5 s of the restart ({:?} ago)",
        restarted.elapsed()
    );
    follower.sees_more(50).await;
    let written = committed(&db, writer).await;
    assert_eq!(sequenced_count(&db).await, written);
    follower.expect_exactly(written).await;
    // A fresh client resuming from 0 gets the same sequence.
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings"], Some(0)).await;
    assert_eq!(
        positions(&ws.events(written as usize).await),
        (1..=written).collect::<Vec<_>>()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_postgres_restart_under_load_loses_nothing() {
    restart_under_load("fast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_postgres_restart_under_load_loses_nothing() {
    restart_under_load("immediate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_the_services_backends_loses_nothing() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let follower = Follower::start(Arc::new(Mutex::new(vec![app.addr])));
    let writer = Writer::start(&db.url, Duration::from_millis(3));
    let admin = db.client().await;
    for _ in 0..3 {
        // Each time while the service delivers again (it has reconnected).
        follower.sees_more(50).await;
        let killed: i64 = admin
            .query_one(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                 where datname = current_database() and application_name = 'rowcast'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(killed >= 2, "the tailer and the sequencer hold connections");
    }
    follower.sees_more(50).await;
    let written = committed(&db, writer).await;
    assert_eq!(sequenced_count(&db).await, written);
    follower.expect_exactly(written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_goes_silent_is_detected_and_replaced() {
    let db = TestDb::demo().await;
    let pg: tokio_postgres::Config = db.url.parse().unwrap();
    let host = match &pg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("tcp expected, got {other:?}"),
    };
    let target: SocketAddr = format!("{host}:{}", pg.get_ports()[0]).parse().unwrap();
    let proxy = Proxy::start(target).await;
    let url = format!(
        "host=127.0.0.1 port={} user={} dbname={}",
        proxy.addr.port(),
        pg.get_user().unwrap(),
        pg.get_dbname().unwrap()
    );
    let mut config = test_config(&url);
    config.tail.probe_timeout = Duration::from_secs(1);
    config.tail.poll_interval = Duration::from_millis(200);
    config.sequencer.statement_timeout = Duration::from_secs(1);
    let app = TestApp::start_with(config).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings"], None).await;
    let writer = connect(&db.url).await;
    for _ in 0..5 {
        writer
            .query_one(NEW_BOOKING, &[&1i64, &2i64])
            .await
            .unwrap();
    }
    assert_eq!(positions(&ws.events(5).await), vec![1, 2, 3, 4, 5]);
    proxy.freeze_existing();
    for _ in 0..5 {
        writer
            .query_one(NEW_BOOKING, &[&1i64, &2i64])
            .await
            .unwrap();
    }
    // Probes time out, the dedicated connections are replaced, nothing is lost.
    assert_eq!(positions(&ws.events(5).await), vec![6, 7, 8, 9, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_others_go_on() {
    let db = TestDb::demo().await;
    let writer = db.client().await;
    writer
        .batch_execute("alter table bookings add column note text")
        .await
        .unwrap();
    let mut config = test_config(&db.url);
    config.session.queue = 256;
    config.session.write_timeout = Duration::from_secs(2);
    let app = TestApp::start_with(config).await;
    let (mut stalled, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr))
        .await
        .unwrap();
    stalled
        .send(Message::text(
            r#"{"type":"subscribe","topics":["bookings"]}"#,
        ))
        .await
        .unwrap();
    let mut healthy = app.ws().await;
    healthy.subscribe(&["bookings"], None).await;
    const N: i64 = 800;
    let url = db.url.clone();
    let writes = tokio::spawn(async move {
        let writer = connect(&url).await;
        let note = "n".repeat(20_000);
        for _ in 0..N {
            writer
                .query_one(
                    "insert into bookings (client_id, provider_id, starts_at, ends_at, price, note) \
                     values (1, 2, now(), now() + interval '1 hour', 1, $1) returning id",
                    &[&note],
                )
                .await
                .unwrap();
        }
    });
    // The healthy client gets everything while the stalled one holds 16 MB unread.
    assert_eq!(
        positions(&healthy.events(N as usize).await),
        (1..=N).collect::<Vec<_>>()
    );
    writes.await.unwrap();
    // The stalled client was cut off: reading now drains what the kernel buffered,
    // then the connection ends.
    let mut last = 0;
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(message) = stalled.next().await {
            match message {
                Ok(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == "event" {
                        last = value["pos"].as_i64().unwrap();
                    }
                }
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled client must be disconnected");
    assert!(last < N, "it cannot have received everything");
    // It resumes with since and gets the rest.
    let mut resumed = app.ws().await;
    resumed.subscribe(&["bookings"], Some(last)).await;
    assert_eq!(
        positions(&resumed.events((N - last) as usize).await),
        (last + 1..=N).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_keep_positions_gap_free_when_one_dies_or_its_sequencer_goes_silent() {
    let db = TestDb::demo().await;
    let mut a = ServiceProcess::start(&db.url, None).await;
    let b = ServiceProcess::start(&db.url, None).await;
    let c = ServiceProcess::start(&db.url, None).await;
    let addrs = Arc::new(Mutex::new(vec![a.addr, b.addr, c.addr]));
    let follower = Follower::start(addrs.clone());
    let writer = Writer::start(&db.url, Duration::from_millis(3));
    follower.sees_more(50).await;
    a.kill();
    addrs.lock().unwrap().retain(|addr| *addr != a.addr);
    follower.sees_more(50).await;

    // A sequencer whose link went silent mid-batch holds the counter row; PostgreSQL
    // ends such a session after `abandon_after` (the same setting the service uses).
    let stale = connect(&db.url).await;
    stale
        .batch_execute("set idle_in_transaction_session_timeout = '2s'; begin; select * from rowcast.sequencer for update")
        .await
        .unwrap();
    let held_at = tokio::time::Instant::now();
    let last_pos = async || -> i64 {
        db.client()
            .await
            .query_one("select last_pos from rowcast.sequencer", &[])
            .await
            .unwrap()
            .get(0)
    };
    // The holder got the row after any batch that had it committed: positions stop here.
    let stalled_at = last_pos().await;
    // Bookings wait behind the holder.
    writes(&writer, 50).await;
    let limit = Duration::from_secs(10).saturating_sub(held_at.elapsed());
    let took_over = eventually(limit, async || last_pos().await > stalled_at).await;
    assert!(took_over, "no takeover after the stale holder");
    // Delivery goes on after the takeover.
    follower.sees_more(50).await;
    let written = committed(&db, writer).await;
    assert_eq!(sequenced_count(&db).await, written);
    assert_eq!(db.positions().await, (1..=written).collect::<Vec<_>>());
    follower.expect_exactly(written).await;
    drop((b, c));
}

async fn last_pos(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("select last_pos from rowcast.sequencer", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_sequencing_replica_with_large_rows_in_flight_is_replaced_within_the_bound() {
    let db = TestDb::demo().await;
    // Rows of about 20 kB that do not compress: the sequencing replica's reads are large.
    db.client()
        .await
        .batch_execute(
            "create function public.noise(n int) returns text language sql volatile
                 as $$ select string_agg(md5(random()::text), '') from generate_series(1, n) $$;
             alter table bookings add column notes text default public.noise(600);",
        )
        .await
        .unwrap();
    let env = [("ROWCAST_SEQUENCER__TAKEOVER_AFTER", "2s")];
    let a = ServiceProcess::start_with_env(&db.url, None, &env).await;
    wait_until("the first replica sequences", async || {
        a.metric("rowcast_sequencer_leading").await == 1.0
    })
    .await;
    let b = ServiceProcess::start_with_env(&db.url, None, &env).await;
    assert_eq!(b.metric("rowcast_sequencer_leading").await, 0.0);
    let on_b = Follower::start(Arc::new(Mutex::new(vec![b.addr])));
    let writer = Writer::start(&db.url, Duration::from_millis(10));
    on_b.sees_more(100).await;

    // Frozen mid-stream: whatever it had in flight completes in PostgreSQL or rolls back;
    // after that no position comes until the other replica takes over.
    a.signal("STOP");
    let stopped = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen_at = last_pos(&db).await;
    writes(&writer, 20).await;
    let resumed = eventually(Duration::from_secs(15), async || {
        last_pos(&db).await > frozen_at
    })
    .await;
    let took = stopped.elapsed();
    assert!(resumed, "no position handed out after the freeze");
    // takeover_after (2 s) + standby_check (0.5 s) + a sample and a batch.
    assert!(
        took < Duration::from_millis(3500),
        "positions resumed after {took:?}"
    );
    assert_eq!(b.metric("rowcast_sequencer_leading").await, 1.0);
    assert!(b.metric("rowcast_sequencer_takeovers_total").await >= 1.0);
    on_b.sees_more(50).await;

    // The frozen replica wakes up to a closed session and stands by.
    a.signal("CONT");
    writes(&writer, 50).await;
    let written = committed(&db, writer).await;
    assert_eq!(sequenced_count(&db).await, written);
    assert_eq!(db.positions().await, (1..=written).collect::<Vec<_>>());
    on_b.expect_exactly(written).await;
    // A client resuming on the replica that was frozen gets every row once, in order.
    let on_a = Follower::start(Arc::new(Mutex::new(vec![a.addr])));
    on_a.expect_exactly(written).await;
    assert_eq!(a.metric("rowcast_sequencer_leading").await, 0.0);
    assert!(
        a.log().contains("standing by"),
        "the woken replica stands by:\n{}",
        a.log()
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_no_replica_can_sequence_and_recovers_after() {
    let db = TestDb::demo().await;
    let service =
        ServiceProcess::start_with_env(&db.url, None, &[("ROWCAST_SEQUENCER__STALL_LIMIT", "1s")])
            .await;
    let ready = async || {
        let response = reqwest::get(format!("http://{}/readyz", service.addr))
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(ready().await.0, 200);
    // A session holds the counter row: no replica can hand out a position.
    let holder = connect(&db.url).await;
    holder
        .batch_execute("begin; select * from rowcast.sequencer for update")
        .await
        .unwrap();
    let writer = db.client().await;
    writer
        .query_one(NEW_BOOKING, &[&1i64, &2i64])
        .await
        .unwrap();
    wait_until("/readyz fails", async || ready().await.0 == 503).await;
    let (_, body) = ready().await;
    assert!(body.contains("sequencing has stalled"), "{body}");
    let (status, stats) = crate::support::sse::get_json(service.addr, "/api/stats").await;
    assert_eq!(status, 200);
    assert!(stats["stalled_seconds"].as_f64().unwrap() > 1.0, "{stats}");
    assert!(
        stats["oldest_unsequenced_seconds"].as_f64().unwrap() > 1.0,
        "{stats}"
    );
    assert!(service.metric("rowcast_sequencing_stalled_seconds").await > 0.0);
    // Released: positions come, and readiness with them.
    holder.batch_execute("commit").await.unwrap();
    wait_until("/readyz recovers", async || ready().await.0 == 200).await;
    db.wait_sequenced(1).await;
    wait_until("the recovery is logged", async || {
        service.log().contains("sequencing goes on again")
    })
    .await;
    let log = service.log();
    assert_eq!(
        log.matches("sequencing has stalled").count(),
        1,
        "one line when it trips:\n{log}"
    );
}

/// Minutes of random faults against a sequence checker: run it with
/// `SOAK_SECONDS=600 cargo test --release --test main soak -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a long soak run; see the doc comment for the command"]
async fn soak_random_faults_lose_nothing() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let cluster = Cluster::start_own();
    let own = cluster.own.as_ref().unwrap();
    let db = own_demo_db(&cluster).await;
    let mut services = vec![
        ServiceProcess::start(&db.url, None).await,
        ServiceProcess::start(&db.url, None).await,
    ];
    let addrs = Arc::new(Mutex::new(
        services.iter().map(|s| s.addr).collect::<Vec<_>>(),
    ));
    let follower = Follower::start(addrs.clone());
    let writer = Writer::start(&db.url, Duration::from_millis(2));
    let admin_url = db.url.clone();
    let mut counts = std::collections::BTreeMap::<&str, u32>::new();
    let mut seed: u64 = 0x5EED_1234_ABCD_0001;
    let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while tokio::time::Instant::now() < end {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Random spacing of the faults, on purpose: nothing to wait for.
        tokio::time::sleep(Duration::from_millis(1500 + seed % 3000)).await;
        let fault = match seed % 5 {
            0 => {
                let i = (seed / 7) as usize % services.len();
                let addr = services[i].addr;
                services[i].kill();
                // Down for a moment on purpose, while the writer goes on.
                tokio::time::sleep(Duration::from_millis(200)).await;
                services[i] = ServiceProcess::start(&db.url, Some(addr)).await;
                "sigkill service"
            }
            1 => {
                own.stop("fast").unwrap();
                own.resume().unwrap();
                "postgres restart fast"
            }
            2 => {
                own.stop("immediate").unwrap();
                own.resume().unwrap();
                "postgres restart immediate"
            }
            _ => {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .execute(
                            "select pg_terminate_backend(pid) from pg_stat_activity \
                             where datname = current_database() and application_name = 'rowcast'",
                            &[],
                        )
                        .await;
                }
                "terminate service backends"
            }
        };
        *counts.entry(fault).or_default() += 1;
    }
    // Recovered from the last fault.
    follower.sees_more(50).await;
    let written = committed(&db, writer).await;
    let sequenced = sequenced_count(&db).await;
    assert_eq!(
        sequenced, written,
        "every committed write was captured and sequenced"
    );
    assert_eq!(db.positions().await, (1..=written).collect::<Vec<_>>());
    follower.expect_exactly(written).await;
    println!(
        "soak: {seconds} s, {written} committed writes, every one delivered once in order; \
         faults {counts:?}; follower reconnects {}",
        follower.reconnects()
    );
    drop(services);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_going_down_under_load_loses_nothing_and_the_bus_is_followed_again() {
    let test = "nats_down";
    let Some(binary) = crate::support::nats::server_binary_for(test) else {
        return;
    };
    let mut nats = crate::support::nats::PrivateNats::start(binary).await;
    let (stream, subject) = crate::support::nats::unique_stream(test);
    let db = TestDb::demo().await;
    let env = crate::bus::bus_env(&nats.url, &stream, &subject);
    let (first, second) = crate::bus::two_replicas(&db, &env).await;
    // A dashboard on the replica that follows the bus.
    let follower = Follower::start(Arc::new(Mutex::new(vec![second.addr])));
    let writer = Writer::start(&db.url, Duration::from_millis(3));
    follower.sees_more(50).await;
    assert_eq!(crate::bus::source(&second).await, "nats");

    // NATS dies: the follower reads PostgreSQL, the publisher counts its failures.
    nats.kill();
    writes(&writer, 100).await;
    follower.sees_more(50).await;
    wait_until("the follower reads postgres", async || {
        crate::bus::source(&second).await == "postgres"
    })
    .await;
    wait_until("the publisher counts failures", async || {
        crate::bus::metric(&first, "rowcast_bus_publish_failures_total").await > 0.0
    })
    .await;

    // NATS is back: the follower takes the bus again.
    nats.restart().await;
    let back = eventually(WAIT, async || crate::bus::source(&second).await == "nats").await;
    assert!(
        back,
        "the follower follows the bus again; its log:\n{}\nthe publisher's:\n{}",
        second.log(),
        first.log()
    );
    follower.sees_more(50).await;
    let written = committed(&db, writer).await;
    assert_eq!(sequenced_count(&db).await, written);
    follower.expect_exactly(written).await;
    assert_eq!(crate::bus::source(&second).await, "nats");
    crate::support::nats::delete_stream(&nats.url, &stream).await;
}
