//! Delivery over SSE and HTTP polling: the same frames as the WebSocket for the same
//! `since`, resume headers, paging, slow SSE clients, keep-alives and shutdown.

use std::time::Duration;

use serde_json::{Value, json};

use crate::pipeline::NEW_BOOKING;
use crate::support::sse::{self, get_json};
use crate::support::{TestApp, TestDb, WAIT, positions, stuck_bytes, test_config, wait_until};

/// Walks `/events` from `since`, `limit` at a time, following `head`, until `n` events
/// have arrived. Returns them and the last head.
pub async fn poll_all(
    app: &TestApp,
    topics: &str,
    since: i64,
    limit: i64,
    n: usize,
) -> (Vec<Value>, i64) {
    let mut events = Vec::new();
    let mut head = since;
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while events.len() < n {
        let (status, body) = get_json(
            app.addr,
            &format!("/events?topics={topics}&since={head}&limit={limit}"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let page = body["events"].as_array().unwrap();
        assert!(page.len() as i64 <= limit);
        let next = body["head"].as_i64().unwrap();
        assert!(next >= head, "head went back from {head} to {next}");
        if let Some(last) = page.last() {
            assert!(last["pos"].as_i64().unwrap() <= next, "{body}");
        }
        if page.len() as i64 == limit {
            assert_eq!(
                page.last().unwrap()["pos"],
                next,
                "a full page ends at its head"
            );
        }
        let more = body["more"]
            .as_bool()
            .expect("a page says whether more follows");
        events.extend(page.iter().cloned());
        head = next;
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} events polled",
            events.len()
        );
        if !more {
            // A polling client's pause between empty polls (the loop is bounded above).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (events, head)
}

async fn write_bookings(db: &TestDb, n: i64) {
    let writer = db.client().await;
    for i in 0..n {
        writer
            .query_one(NEW_BOOKING, &[&(6 + i % 3), &(2 + i % 4)])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn sse_and_http_resume_send_exactly_the_websocket_frames_for_the_same_since() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let writer = db.client().await;
    let mut written = 0;
    for i in 0..40i64 {
        let id: i64 = writer
            .query_one(NEW_BOOKING, &[&(6 + i % 3), &(2 + i % 4)])
            .await
            .unwrap()
            .get(0);
        written += 1;
        if i % 5 == 0 {
            writer
                .execute(
                    "update bookings set status = 'CONFIRMED' where id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            written += 1;
        }
    }
    db.wait_sequenced(written).await;
    app.wait_head(written).await;

    let since = 9i64;
    let expected: Vec<i64> = writer
        .query(
            "select pos from rowcast.log where pos > $1 and topics && array['user:7', 'provider:3'] order by pos",
            &[&since],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        expected.len() > 15,
        "the test needs a mix of matching events"
    );

    let mut ws = app.ws().await;
    ws.subscribe(&["user:7", "provider:3"], Some(since)).await;
    let from_ws = ws.events(expected.len()).await;
    assert_eq!(positions(&from_ws), expected);

    let mut stream = sse::open(app.addr, "topics=user:7,provider:3&since=9", None)
        .await
        .unwrap();
    let subscribed = stream.next().await;
    assert_eq!(subscribed.event.as_deref(), Some("subscribed"));
    assert_eq!(subscribed.id, None);
    assert_eq!(subscribed.json()["topics"], json!(["user:7", "provider:3"]));
    assert_eq!(subscribed.json()["head"], written);
    let from_sse = stream.events(expected.len()).await;
    assert_eq!(from_sse, from_ws, "SSE sends the WebSocket's frames");

    let (from_http, head) = poll_all(&app, "user:7,provider:3", since, 7, expected.len()).await;
    assert_eq!(from_http, from_ws, "polling returns the WebSocket's frames");
    assert_eq!(
        head, written,
        "a short last page reports the replica's head"
    );

    // Then live, with no gap and nothing twice, on all three.
    writer
        .query_one(NEW_BOOKING, &[&7i64, &9i64])
        .await
        .unwrap();
    let live = ws.events(1).await;
    assert_eq!(live[0]["pos"], written + 1);
    assert_eq!(stream.events(1).await, live);
    let (polled, _) = poll_all(&app, "user:7,provider:3", head, 100, 1).await;
    assert_eq!(polled, live);
    ws.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn sse_last_event_id_wins_over_since() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    write_bookings(&db, 5).await;
    app.wait_head(5).await;

    let mut both = sse::open(app.addr, "topics=bookings&since=1", Some("3"))
        .await
        .unwrap();
    assert_eq!(both.next().await.event.as_deref(), Some("subscribed"));
    assert_eq!(positions(&both.events(2).await), vec![4, 5]);

    let mut since_only = sse::open(app.addr, "topics=bookings&since=1", None)
        .await
        .unwrap();
    since_only.next().await;
    assert_eq!(positions(&since_only.events(4).await), vec![2, 3, 4, 5]);

    // An empty Last-Event-ID (a browser that saw no id yet) does not override since.
    let mut empty = sse::open(app.addr, "topics=bookings&since=4", Some(""))
        .await
        .unwrap();
    empty.next().await;
    assert_eq!(positions(&empty.events(1).await), vec![5]);

    write_bookings(&db, 1).await;
    for stream in [&mut both, &mut since_only, &mut empty] {
        assert_eq!(positions(&stream.events(1).await), vec![6]);
    }
}

#[tokio::test]
async fn http_paging_with_head_walks_the_whole_log_while_writes_go_on() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let url = db.url.clone();
    let writing = tokio::spawn(async move {
        let writer = crate::support::connect(&url).await;
        for i in 0..300i64 {
            writer
                .query_one(NEW_BOOKING, &[&(6 + i % 3), &2i64])
                .await
                .unwrap();
            if i % 25 == 0 {
                // Pacing the writer, so that pages are read while it writes.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let (all, _) = poll_all(&app, "bookings", 0, 17, 300).await;
    assert_eq!(positions(&all), (1..=300).collect::<Vec<_>>());
    writing.await.unwrap();

    // A sparse topic pages through exactly its own events.
    let expected: Vec<i64> = db
        .client()
        .await
        .query(
            "select pos from rowcast.log where 'user:7' = any(topics) order by pos",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (sparse, head) = poll_all(&app, "user:7", 0, 9, expected.len()).await;
    assert_eq!(positions(&sparse), expected);
    let (status, body) = get_json(app.addr, &format!("/events?topics=user:7&since={head}")).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"events": [], "head": 300, "more": false}));
    // Without since a poll starts live, like a WebSocket or SSE subscription.
    let (_, body) = get_json(app.addr, "/events?topics=bookings").await;
    assert_eq!(body, json!({"events": [], "head": 300, "more": false}));
    // Default limit 100.
    let (_, body) = get_json(app.addr, "/events?topics=bookings&since=0").await;
    assert_eq!(body["events"].as_array().unwrap().len(), 100);
    assert_eq!(body["head"], 100);
    assert_eq!(body["more"], true, "a full page before the head");
    // A since ahead of the replica is never reported as the head: once the catch-up
    // wait is over, the answer carries the replica's real head.
    let (_, body) = get_json(app.addr, "/events?topics=bookings&since=5000").await;
    assert_eq!(body, json!({"events": [], "head": 300, "more": false}));
}

#[tokio::test]
async fn bad_parameters_get_a_400_with_a_json_error() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    for query in [
        "",
        "topics=",
        "topics=a%20b",
        "topics=a,,b",
        "topics=bookings&since=-1",
        "topics=bookings&since=x",
        "topics=bookings&since=1.5",
        "topics=bookings&limit=0",
        "topics=bookings&limit=1001",
        "topics=bookings&limit=ten",
    ] {
        let (status, body) = get_json(app.addr, &format!("/events?{query}")).await;
        assert_eq!(status, 400, "/events?{query} -> {body}");
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["code"], "bad_request", "{body}");
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    for (query, last_event_id) in [
        ("", None),
        ("topics=a%20b", None),
        ("topics=bookings&since=-3", None),
        ("topics=bookings", Some("abc")),
        ("topics=bookings&since=1", Some("-1")),
    ] {
        let Err((status, body)) = sse::open(app.addr, query, last_event_id).await else {
            panic!("/sse?{query} with {last_event_id:?} was accepted");
        };
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["code"], "bad_request", "{body}");
    }
    let many = (0..300)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let (status, body) = get_json(app.addr, &format!("/events?topics={many}")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("too_many_topics"))
    );
}

#[tokio::test]
async fn sse_sends_keepalive_comments_and_ends_at_shutdown() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.session.sse_keepalive = Duration::from_millis(100);
    let app = TestApp::start_with(config).await;
    let mut stream = sse::open(app.addr, "topics=bookings", None).await.unwrap();
    assert_eq!(stream.next().await.event.as_deref(), Some("subscribed"));
    let quiet = stream
        .block_within(Duration::from_secs(2))
        .await
        .expect("a keep-alive on a quiet stream");
    assert_eq!(quiet.comment.as_deref(), Some("keepalive"), "{quiet:?}");

    let stopping = tokio::spawn(app.stop());
    let (ended, _) = stream.ends_within(WAIT).await;
    assert!(ended, "the stream ends at shutdown");
    stopping.await.unwrap();
}

#[tokio::test]
async fn an_sse_client_too_slow_for_its_queue_loses_the_stream_and_resumes_with_last_event_id() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.session.queue = 4;
    let app = TestApp::start_with(config).await;
    let mut stream = sse::open(app.addr, "topics=bookings", None).await.unwrap();
    assert_eq!(stream.next().await.event.as_deref(), Some("subscribed"));
    // One transaction: one sequencer batch, published to the hub at once.
    db.client()
        .await
        .batch_execute(
            "insert into bookings (client_id, provider_id, starts_at, ends_at, price) \
             select g, 2, '2026-11-22T10:00:00Z', '2026-11-22T11:00:00Z', 10 from generate_series(1, 50) g",
        )
        .await
        .unwrap();
    let (ended, seen) = stream.ends_within(WAIT).await;
    assert!(ended, "the hub dropped the session, so the stream ends");
    let ids: Vec<i64> = seen
        .iter()
        .filter_map(|b| b.id.as_deref().map(|id| id.parse().unwrap()))
        .collect();
    assert!(ids.len() <= 4, "at most a queue's worth: {ids:?}");
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());

    let last = ids.last().copied().unwrap_or(0).to_string();
    let mut again = sse::open(app.addr, "topics=bookings", Some(&last))
        .await
        .unwrap();
    again.next().await;
    let rest = again.events(50 - ids.len()).await;
    assert_eq!(
        positions(&rest),
        (ids.len() as i64 + 1..=50).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn sse_resume_while_writes_go_on_switches_to_live_with_no_gap_and_nothing_twice() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    write_bookings(&db, 150).await;
    db.wait_sequenced(150).await;
    let url = db.url.clone();
    let writing = tokio::spawn(async move {
        let writer = crate::support::connect(&url).await;
        for i in 0..250i64 {
            writer.query_one(NEW_BOOKING, &[&i, &2i64]).await.unwrap();
            if i % 20 == 0 {
                // Pacing the writer, so that resumes happen while it writes.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    for since in [0i64, 42, 149] {
        let mut stream = sse::open(app.addr, "topics=bookings", Some(&since.to_string()))
            .await
            .unwrap();
        assert_eq!(stream.next().await.event.as_deref(), Some("subscribed"));
        let got = positions(&stream.events((400 - since) as usize).await);
        assert_eq!(
            got,
            (since + 1..=400).collect::<Vec<_>>(),
            "resume from {since}"
        );
        assert!(
            stream
                .block_within(Duration::from_millis(200))
                .await
                .is_none()
        );
    }
    writing.await.unwrap();
}

#[tokio::test]
async fn an_sse_client_that_stops_reading_does_not_hold_up_shutdown() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.shutdown_timeout = Duration::from_secs(1);
    let app = TestApp::start_with(config).await;
    let writer = db.client().await;
    writer
        .batch_execute("alter table bookings add column note text")
        .await
        .unwrap();
    // Connected, then never read again: the socket's buffers fill up.
    let mut stuck = sse::open(app.addr, "topics=bookings", None).await.unwrap();
    assert_eq!(stuck.next().await.event.as_deref(), Some("subscribed"));
    writer
        .batch_execute(
            "insert into bookings (client_id, provider_id, starts_at, ends_at, price, note) \
             select g, 2, '2026-11-22T10:00:00Z', '2026-11-22T11:00:00Z', 10, repeat('x', 200000) \
             from generate_series(1, 100) g",
        )
        .await
        .unwrap();
    app.wait_head(100).await;
    wait_until("the stream's data backs up in the kernel", async || {
        let (unsent, unread) = stuck_bytes(app.addr);
        unsent > 0 && unread > 0
    })
    .await;
    // `stop` panics if the service has not stopped within the wait.
    app.stop().await;
    drop(stuck);
}

#[tokio::test]
async fn a_resume_on_a_rare_topic_reads_through_a_log_longer_than_its_scan_windows() {
    // 45,000 events, more than four of the replay's scan windows, of which five are on
    // user 7: one near the start, one on the last position of the second window, two in
    // the middle windows, one in the last.
    let db = TestDb::migrated().await;
    let writer = db.client().await;
    writer
        .batch_execute(
            "create table ticks (id int primary key, user_id int not null);
             select rowcast.watch('ticks', routes => '{\"user_id\": \"user\"}');",
        )
        .await
        .unwrap();
    let app = TestApp::start(&db).await;
    let rare = [3, 12_345, 20_000, 30_001, 44_999];
    writer
        .execute(
            "insert into ticks select g, case when g = any($1::bigint[]) then 7 else 0 end \
             from generate_series(1, 45000) g",
            &[&rare.to_vec()],
        )
        .await
        .unwrap();
    app.wait_head(45_000).await;
    let ids = |events: &[Value]| -> Vec<i64> {
        events
            .iter()
            .map(|e| e["data"]["id"].as_i64().unwrap())
            .collect()
    };

    let (events, head) = poll_all(&app, "user:7", 0, 100, rare.len()).await;
    assert_eq!(ids(&events), rare);
    assert_eq!(positions(&events), rare);
    assert!(head >= 44_999);
    let (_, body) = get_json(app.addr, &format!("/events?topics=user:7&since={head}")).await;
    assert_eq!(body, json!({"events": [], "head": 45_000, "more": false}));
    // A page of one stops at its event, and says that more follow.
    let (_, body) = get_json(app.addr, "/events?topics=user:7&since=3&limit=1").await;
    assert_eq!(body["events"][0]["pos"], 12_345);
    assert_eq!(
        (body["head"].clone(), body["more"].clone()),
        (json!(12_345), json!(true))
    );

    let mut ws = app.ws().await;
    ws.subscribe(&["user:7"], Some(0)).await;
    let replayed = ws.events(rare.len()).await;
    assert_eq!(ids(&replayed), rare);
    writer
        .execute("insert into ticks values (45001, 7)", &[])
        .await
        .unwrap();
    let live = ws.events(1).await;
    assert_eq!(positions(&live), vec![45_001]);
    ws.expect_silence(Duration::from_millis(300)).await;
}
