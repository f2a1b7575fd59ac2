//! The bus: replicas that follow the log through NATS JetStream send exactly what
//! replicas reading PostgreSQL send.

use std::time::Duration;

use serde_json::Value;

use crate::pipeline::NEW_BOOKING;
use crate::support::nats::{delete_stream, shared_for, unique_stream};
use crate::support::service::ServiceProcess;
use crate::support::{TestDb, WAIT, WsClient, eventually, positions, wait_until};

/// The environment that puts a replica on the bus.
pub fn bus_env<'a>(url: &'a str, stream: &'a str, subject: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("ROWCAST_BUS__NATS_URL", url),
        ("ROWCAST_BUS__STREAM", stream),
        ("ROWCAST_BUS__SUBJECT", subject),
    ]
}

/// The value of `metric` on `service` (0 when it cannot be read).
pub async fn metric(service: &ServiceProcess, metric: &str) -> f64 {
    let text = match reqwest::get(format!("http://{}/metrics", service.addr)).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => return 0.0,
    };
    text.lines()
        .find_map(|line| line.strip_prefix(metric)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Where a replica reads the log from, by `rowcast_feed_source`.
pub async fn source(service: &ServiceProcess) -> &'static str {
    if metric(service, "rowcast_feed_source{source=\"nats\"}").await == 1.0 {
        "nats"
    } else {
        "postgres"
    }
}

/// Starts two replicas on the bus, the first sequencing (it reads PostgreSQL and
/// publishes), the second following the stream; waits until each is in its place.
pub async fn two_replicas(db: &TestDb, env: &[(&str, &str)]) -> (ServiceProcess, ServiceProcess) {
    let first = ServiceProcess::start_with_env(&db.url, None, env).await;
    let leads = eventually(WAIT, async || {
        metric(&first, "rowcast_sequencer_leading").await == 1.0
    })
    .await;
    assert!(leads, "the first replica sequences:\n{}", first.log());
    let second = ServiceProcess::start_with_env(&db.url, None, env).await;
    let follows = eventually(WAIT, async || source(&second).await == "nats").await;
    assert!(
        follows,
        "the second replica follows the bus:\n{}",
        second.log()
    );
    // The first replica's tailer may have started before its sequencer led.
    let reads = eventually(WAIT, async || source(&first).await == "postgres").await;
    assert!(
        reads,
        "the sequencing replica reads postgres:\n{}",
        first.log()
    );
    (first, second)
}

/// Receives `n` text frames, each an event, exactly as sent.
async fn frames(ws: &mut WsClient, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let text = ws.recv_text().await;
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["type"], "event", "expected an event, got {text}");
        out.push(text);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_the_bus_sends_the_same_frames_as_one_reading_postgres() {
    let test = "same_frames";
    let Some(url) = shared_for(test) else {
        return;
    };
    let (stream, subject) = unique_stream(test);
    let db = TestDb::demo().await;
    let env = bus_env(&url, &stream, &subject);
    let (first, second) = two_replicas(&db, &env).await;

    // On each replica, a dashboard of every booking, and one of user 1's, which gets a
    // row.left when a booking moves to user 9.
    let mut clients = Vec::new();
    for replica in [&first, &second] {
        let mut all = WsClient::connect(replica.addr).await;
        all.subscribe(&["bookings"], Some(0)).await;
        let mut user = WsClient::connect(replica.addr).await;
        user.subscribe(&["user:1"], Some(0)).await;
        clients.push((all, user));
    }
    let client = db.client().await;
    let writes = 300;
    let mut moved = 0i64;
    for i in 0..writes {
        let row = client
            .query_one(NEW_BOOKING, &[&1i64, &2i64])
            .await
            .unwrap();
        if i == 100 {
            moved = row.get(0);
            client
                .execute("update bookings set client_id = 9 where id = $1", &[&moved])
                .await
                .unwrap();
        }
    }
    let mut received = Vec::new();
    for (all, user) in &mut clients {
        let every = frames(all, writes + 1).await;
        let users = frames(user, writes + 1).await;
        received.push((every, users));
    }
    let (from_postgres, from_bus) = (&received[0], &received[1]);
    assert_eq!(from_postgres.0, from_bus.0, "the bookings frames differ");
    assert_eq!(from_postgres.1, from_bus.1, "user 1's frames differ");
    let left: Vec<Value> = from_bus
        .1
        .iter()
        .map(|text| serde_json::from_str::<Value>(text).unwrap())
        .filter(|event| event["event"] == "row.left")
        .collect();
    assert_eq!(left.len(), 1, "one row.left for user 1");
    assert_eq!(left[0]["data"]["id"], moved);
    for (all, user) in &mut clients {
        all.expect_silence(Duration::from_millis(200)).await;
        user.expect_silence(Duration::from_millis(200)).await;
    }

    // The second replica followed the bus throughout, and the first published to it.
    assert_eq!(source(&second).await, "nats");
    assert!(
        !second.log().contains("reading the log from postgres"),
        "the follower fell back to postgres:\n{}",
        second.log()
    );
    wait_until("the first replica published every change", async || {
        metric(&first, "rowcast_bus_published_total").await >= (writes + 1) as f64
    })
    .await;
    assert_eq!(
        metric(&first, "rowcast_bus_publish_failures_total").await,
        0.0
    );
    delete_stream(&url, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_the_positions_the_stream_lacks_from_postgres() {
    let test = "gap";
    let Some(url) = shared_for(test) else {
        return;
    };
    let (stream, subject) = unique_stream(test);
    let db = TestDb::demo().await;
    let env = bus_env(&url, &stream, &subject);
    let (first, second) = two_replicas(&db, &env).await;
    // Messages that take the ids of positions 41..=60 before they exist: the stream drops
    // the real ones as duplicates, so it lacks them; these cannot be read, and are skipped.
    let nats = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
    for pos in 41..=60 {
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload("not a change".into())
            .message_id(pos.to_string());
        nats.send_publish(subject.clone(), message)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut ws = WsClient::connect(second.addr).await;
    ws.subscribe(&["bookings"], Some(0)).await;
    let client = db.client().await;
    for _ in 0..100 {
        client
            .query_one(NEW_BOOKING, &[&1i64, &2i64])
            .await
            .unwrap();
    }
    let events = ws.events(100).await;
    assert_eq!(positions(&events), (1..=100).collect::<Vec<_>>());
    ws.expect_silence(Duration::from_millis(200)).await;
    // It stayed on the bus: the missing positions were read, not a fallback.
    assert_eq!(source(&second).await, "nats");
    assert!(
        !second.log().contains("reading the log from postgres"),
        "the follower fell back to postgres:\n{}",
        second.log()
    );
    let log = second.log();
    assert!(log.contains("skipping unreadable bus message"), "{log}");
    assert!(
        log.contains("the bus lacks positions: reading them from postgres"),
        "{log}"
    );
    drop(first);
    delete_stream(&url, &stream).await;
}
