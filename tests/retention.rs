//! Retention: the prune deletes by position and sequencing age, never an unsequenced
//! event, and a resume from a pruned position gets an explicit reset on every transport.

use std::time::Duration;

use serde_json::json;

use rowcast::capture::prune::{self, Pruned, RetentionConfig};

use crate::delivery::poll_all;
use crate::pipeline::NEW_BOOKING;
use crate::support::sse::{self, get_json};
use crate::support::{TestApp, TestDb, WAIT, eventually, positions, test_config, wait_until};

fn retention(keep_events: i64, max_age: Duration) -> RetentionConfig {
    RetentionConfig {
        keep_events,
        max_age,
        ..RetentionConfig::default()
    }
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

async fn book(db: &TestDb, n: usize) {
    let writer = db.client().await;
    for _ in 0..n {
        writer
            .query_one(NEW_BOOKING, &[&7i64, &3i64])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn retention_keeps_the_last_keep_events_and_everything_younger_than_max_age() {
    let db = TestDb::demo().await;
    book(&db, 10).await;
    let client = db.client().await;
    let n: i64 = client
        .query_one("select rowcast.sequence()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10);

    let young = retention(0, Duration::from_secs(3600));
    let pruned = prune::prune_once(&client, &young).await.unwrap();
    assert_eq!(pruned, Pruned::default(), "nothing is an hour old yet");

    let keep_four = retention(4, Duration::ZERO);
    let pruned = prune::prune_once(&client, &keep_four).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            deleted: 6,
            pruned_pos: 6
        }
    );
    assert_eq!(db.positions().await, vec![7, 8, 9, 10]);
    assert_eq!(count(&db, "select count(*) from rowcast.events").await, 4);
    let again = prune::prune_once(&client, &keep_four).await.unwrap();
    assert_eq!(
        again,
        Pruned {
            deleted: 0,
            pruned_pos: 6
        }
    );
}

#[tokio::test]
async fn the_prune_never_deletes_an_event_whose_transaction_is_still_open() {
    let db = TestDb::demo().await;
    let everything = retention(0, Duration::ZERO);
    // A transaction writes first (smallest event id, earliest ts) and stays open.
    let open = db.client().await;
    open.batch_execute("begin").await.unwrap();
    let late_id: i64 = open
        .query_one(NEW_BOOKING, &[&70i64, &3i64])
        .await
        .unwrap()
        .get(0);
    book(&db, 4).await;
    let client = db.client().await;
    client
        .query_one("select rowcast.sequence()", &[])
        .await
        .unwrap();
    assert_eq!(db.positions().await, vec![1, 2, 3, 4]);

    let keep_two = retention(2, Duration::ZERO);
    let pruned = prune::prune_once(&client, &keep_two).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            deleted: 2,
            pruned_pos: 2
        }
    );

    // Committed but not sequenced yet: still not the prune's to delete, though its id
    // and its ts are below those of events that are pruned now.
    open.batch_execute("commit").await.unwrap();
    let pruned = prune::prune_once(&client, &everything).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            deleted: 2,
            pruned_pos: 4
        }
    );
    assert_eq!(count(&db, "select count(*) from rowcast.events").await, 1);

    // It gets the next position and is delivered to a resume from the pruned head.
    client
        .query_one("select rowcast.sequence()", &[])
        .await
        .unwrap();
    assert_eq!(db.positions().await, vec![5]);
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["user:70"], Some(4)).await;
    let events = ws.events(1).await;
    assert_eq!(events[0]["pos"], 5);
    assert_eq!(events[0]["data"]["id"], late_id);
}

#[tokio::test]
async fn a_resume_from_a_pruned_position_gets_reset_on_websocket_and_sse_and_410_over_http() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    book(&db, 10).await;
    db.wait_sequenced(10).await;
    app.wait_head(10).await;
    let pruned = prune::prune_once(&db.client().await, &retention(3, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        pruned,
        Pruned {
            deleted: 7,
            pruned_pos: 7
        }
    );

    // WebSocket: subscribed, reset, then live after the reset's head.
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings"], Some(2)).await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "reset", "reason": "since_too_old", "head": 10})
    );
    book(&db, 1).await;
    assert_eq!(positions(&ws.events(1).await), vec![11]);
    ws.expect_silence(Duration::from_millis(200)).await;

    // SSE: a `reset` event whose id is the head, then live.
    app.wait_head(11).await;
    let mut stream = sse::open(app.addr, "topics=bookings&since=0", Some("5"))
        .await
        .unwrap();
    assert_eq!(stream.next().await.event.as_deref(), Some("subscribed"));
    let reset = stream.next().await;
    assert_eq!(reset.event.as_deref(), Some("reset"));
    assert_eq!(reset.id.as_deref(), Some("11"));
    assert_eq!(
        reset.json(),
        json!({"type": "reset", "reason": "since_too_old", "head": 11})
    );
    book(&db, 1).await;
    assert_eq!(positions(&stream.events(1).await), vec![12]);

    // HTTP: 410 with the same body.
    app.wait_head(12).await;
    let (status, body) = get_json(app.addr, "/events?topics=bookings&since=6").await;
    assert_eq!(status, 410);
    assert_eq!(
        body,
        json!({"type": "reset", "reason": "since_too_old", "head": 12})
    );

    // At the pruned position, or with since = 0 (everything retained): no reset.
    for since in [0, 7] {
        let mut ws = app.ws().await;
        ws.subscribe(&["bookings"], Some(since)).await;
        let replayed = ws.events(5).await;
        assert_eq!(positions(&replayed), vec![8, 9, 10, 11, 12]);
        let mut stream = sse::open(app.addr, &format!("topics=bookings&since={since}"), None)
            .await
            .unwrap();
        stream.next().await;
        assert_eq!(stream.events(5).await, replayed);
        let (polled, head) = poll_all(&app, "bookings", since, 2, 5).await;
        assert_eq!(polled, replayed);
        assert_eq!(head, 12);
    }
}

#[tokio::test]
async fn the_prune_task_applies_the_configured_retention_on_its_interval() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.retention = RetentionConfig {
        keep_events: 5,
        max_age: Duration::ZERO,
        interval: Duration::from_millis(100),
        batch: 3,
    };
    let _app = TestApp::start_with(config).await;
    book(&db, 20).await;
    let mut pruned = 0;
    let done = eventually(WAIT, async || {
        pruned = count(&db, "select pruned_pos from rowcast.sequencer").await;
        pruned == 15
    })
    .await;
    assert!(done, "pruned_pos stuck at {pruned}");
    assert_eq!(db.positions().await, (16..=20).collect::<Vec<_>>());
    assert_eq!(count(&db, "select count(*) from rowcast.events").await, 5);
}

#[tokio::test]
async fn a_replay_read_that_a_prune_has_cut_reports_it_instead_of_a_gap() {
    use rowcast::serve::replay::{self, ReadError};

    let db = TestDb::demo().await;
    book(&db, 6).await;
    let client = db.client().await;
    client
        .query_one("select rowcast.sequence()", &[])
        .await
        .unwrap();
    let pool = rowcast::db::pool(&rowcast::db::pg_config(&db.url).unwrap(), 2).unwrap();
    let topics = vec!["bookings".to_string()];
    let page = replay::read_page(&pool, &rowcast::events::Mappings::new(), &topics, 1, 6, 100)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 5);
    assert_eq!(page.last, 6, "read through the whole range");

    prune::prune_once(&client, &retention(2, Duration::ZERO))
        .await
        .unwrap();
    // A reader that checked `since` before the prune and reads after it.
    match replay::read_page(&pool, &rowcast::events::Mappings::new(), &topics, 1, 6, 100).await {
        Err(ReadError::TooOld {
            after: 1,
            pruned: 4,
        }) => {}
        other => panic!("expected TooOld, got {other:?}"),
    }
    assert!(matches!(
        replay::start(&pool, 3).await,
        Err(ReadError::TooOld { pruned: 4, .. })
    ));
    assert_eq!(replay::start(&pool, 0).await.unwrap(), 4, "0: all retained");
    assert_eq!(replay::start(&pool, 4).await.unwrap(), 4);
    let page = replay::read_page(&pool, &rowcast::events::Mappings::new(), &topics, 4, 6, 1)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.last, 5, "a full page ends at its last event");
}

#[tokio::test]
async fn a_replica_whose_head_was_pruned_drops_its_sessions_instead_of_a_silent_gap() {
    use rowcast::capture::tail::{self, TailConfig};
    use rowcast::hub::Hub;
    use tokio_util::sync::CancellationToken;

    let db = TestDb::demo().await;
    // A replica at head 0 with one live session, whose tailer has not run yet.
    let hub = Hub::new(0);
    let mut member = hub.join(64);
    hub.subscribe(member.id(), ["bookings".to_string()], false);
    book(&db, 10).await;
    let client = db.client().await;
    client
        .query_one("select rowcast.sequence()", &[])
        .await
        .unwrap();
    prune::prune_once(&client, &retention(3, Duration::ZERO))
        .await
        .unwrap();

    let shutdown = CancellationToken::new();
    let pg = rowcast::db::pg_config(&db.url).unwrap();
    let tailer = tokio::spawn(tail::run(
        pg,
        TailConfig::default(),
        hub.clone(),
        rowcast::events::Mappings::new(),
        tail::Offers::none(),
        shutdown.clone(),
    ));
    let first = tokio::time::timeout(WAIT, member.events.recv())
        .await
        .expect("the tailer acted");
    assert!(
        first.is_none(),
        "the session must end, not receive {:?} after a gap",
        first.map(|e| e.pos)
    );
    wait_until("the tailer goes on to position 10", async || {
        hub.head() >= 10
    })
    .await;
    shutdown.cancel();
    tailer.await.unwrap();
}
