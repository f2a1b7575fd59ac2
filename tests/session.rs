//! The WebSocket session: protocol errors, resume, several replicas, shutdown.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::pipeline::NEW_BOOKING;
use crate::support::{TestApp, TestDb, positions};

#[tokio::test]
async fn bad_frames_get_an_error_and_the_connection_stays_usable() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    let cases = [
        ("{not json", "bad_request"),
        ("[1,2]", "bad_request"),
        (r#"{"topics":["a"]}"#, "bad_request"),
        (r#"{"type":"launch"}"#, "unknown_type"),
        (
            r#"{"type":"subscribe","topics":["a"],"since":"12"}"#,
            "bad_request",
        ),
        (
            r#"{"type":"subscribe","topics":["a"],"since":-1}"#,
            "bad_request",
        ),
        (r#"{"type":"subscribe","topics":"a"}"#, "bad_request"),
    ];
    for (frame, code) in cases {
        ws.send_text(frame).await;
        let reply = ws.recv().await;
        assert_eq!(reply["type"], "error", "{frame} -> {reply}");
        assert_eq!(reply["code"], code, "{frame} -> {reply}");
        assert!(!reply["message"].as_str().unwrap().is_empty());
    }
    // An invalid topic is refused alone; the valid one is subscribed.
    ws.send(json!({"type": "subscribe", "topics": ["bad topic", "bookings"]}))
        .await;
    let error = ws.recv().await;
    assert_eq!(error["code"], "bad_request");
    let subscribed = ws.recv().await;
    assert_eq!(subscribed["topics"], json!(["bookings"]));
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
    db.client()
        .await
        .query_one(NEW_BOOKING, &[&1i64, &2i64])
        .await
        .unwrap();
    assert_eq!(ws.events(1).await[0]["pos"], 1);
}

#[tokio::test]
async fn an_event_is_sent_once_per_connection_even_when_several_topics_match() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings", "user:7", "provider:3"], None)
        .await;
    let writer = db.client().await;
    writer
        .query_one(NEW_BOOKING, &[&7i64, &3i64])
        .await
        .unwrap();
    writer
        .query_one(NEW_BOOKING, &[&8i64, &4i64])
        .await
        .unwrap();
    assert_eq!(positions(&ws.events(2).await), vec![1, 2]);
    ws.expect_silence(Duration::from_millis(300)).await;
    ws.send(json!({"type": "unsubscribe", "topics": ["bookings"]}))
        .await;
    assert_eq!(ws.recv().await["type"], "unsubscribed");
    writer
        .query_one(NEW_BOOKING, &[&8i64, &4i64])
        .await
        .unwrap();
    writer
        .query_one(NEW_BOOKING, &[&7i64, &4i64])
        .await
        .unwrap();
    assert_eq!(positions(&ws.events(1).await), vec![4]);
}

#[tokio::test]
async fn resume_with_since_gets_exactly_the_later_events_then_live_ones_while_writes_go_on() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let writer = db.client().await;
    for _ in 0..200 {
        writer
            .query_one(NEW_BOOKING, &[&7i64, &3i64])
            .await
            .unwrap();
    }
    db.wait_sequenced(200).await;
    // Sequenced is not yet published: the head asserted below is the replica's.
    app.wait_head(200).await;

    // Keep writing while clients resume from various positions.
    let url = db.url.clone();
    let background = tokio::spawn(async move {
        let writer = crate::support::connect(&url).await;
        for i in 0..300i64 {
            writer
                .query_one(NEW_BOOKING, &[&7i64, &3i64])
                .await
                .unwrap();
            if i % 20 == 0 {
                // Pacing the writer, so that resumes happen while it writes.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    for since in [0i64, 57, 199] {
        let mut ws = app.ws().await;
        let reply = ws.subscribe(&["user:7"], Some(since)).await;
        assert!(reply["head"].as_i64().unwrap() >= 200);
        let expected: Vec<i64> = (since + 1..=500).collect();
        let got = positions(&ws.events(expected.len()).await);
        assert_eq!(got, expected, "resume from {since}");
        ws.expect_silence(Duration::from_millis(200)).await;
    }
    background.await.unwrap();
}

#[tokio::test]
async fn since_ahead_of_the_replica_waits_until_it_has_caught_up() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    let reply = ws.subscribe(&["bookings"], Some(3)).await;
    assert_eq!(reply["head"], 0);
    let writer = db.client().await;
    for _ in 0..5 {
        writer
            .query_one(NEW_BOOKING, &[&7i64, &3i64])
            .await
            .unwrap();
    }
    assert_eq!(positions(&ws.events(2).await), vec![4, 5]);
}

#[tokio::test]
async fn since_on_a_later_subscribe_is_refused_and_the_topics_are_live() {
    let db = TestDb::demo().await;
    let writer = db.client().await;
    writer
        .query_one(NEW_BOOKING, &[&7i64, &3i64])
        .await
        .unwrap();
    let app = TestApp::start(&db).await;
    app.wait_head(1).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["provider:3"], None).await;
    ws.send(json!({"type": "subscribe", "topics": ["user:7"], "since": 0}))
        .await;
    assert_eq!(ws.recv().await["code"], "bad_request");
    assert_eq!(ws.recv().await["type"], "subscribed");
    ws.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn two_instances_deliver_the_same_positions_for_the_same_events() {
    let db = TestDb::demo().await;
    let a = TestApp::start(&db).await;
    let b = TestApp::start(&db).await;
    let mut wa = a.ws().await;
    let mut wb = b.ws().await;
    wa.subscribe(&["bookings"], None).await;
    wb.subscribe(&["bookings"], None).await;
    let writer = db.client().await;
    let mut by_pos = HashMap::new();
    for i in 0..100i64 {
        let id: i64 = writer
            .query_one(NEW_BOOKING, &[&i, &3i64])
            .await
            .unwrap()
            .get(0);
        by_pos.insert(i + 1, id);
    }
    let ea = wa.events(100).await;
    let eb = wb.events(100).await;
    assert_eq!(ea, eb, "both replicas send identical frames");
    for event in &ea {
        let pos = event["pos"].as_i64().unwrap();
        assert_eq!(event["data"]["id"], by_pos[&pos]);
    }
    // A client may resume on the other replica.
    let mut again = b.ws().await;
    again.subscribe(&["bookings"], Some(90)).await;
    assert_eq!(again.events(10).await, ea[90..].to_vec());
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1001() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings"], None).await;
    let stopping = tokio::spawn(app.stop());
    assert_eq!(ws.closed_with().await, 1001);
    stopping.await.unwrap();
}
