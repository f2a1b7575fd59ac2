//! Plain SQL writes reach WebSocket subscribers as events.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{TestApp, TestDb, positions};

pub const NEW_BOOKING: &str = "insert into bookings (client_id, provider_id, starts_at, ends_at, price, card_token) \
     values ($1, $2, '2026-11-22T10:00:00Z', '2026-11-22T11:00:00Z', 10, 'tok_secret') returning id";

fn topic_set(event: &Value) -> HashSet<String> {
    event["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_plain_sql_update_reaches_the_subscriber_with_new_row_old_values_and_topics() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    let reply = ws.subscribe(&["user:7"], None).await;
    assert_eq!(
        reply,
        json!({"type": "subscribed", "topics": ["user:7"], "head": 0})
    );

    let writer = db.client().await;
    let id: i64 = writer
        .query_one(NEW_BOOKING, &[&7i64, &3i64])
        .await
        .unwrap()
        .get(0);
    writer
        .execute(
            "update bookings set status = 'CONFIRMED' where id = $1",
            &[&id],
        )
        .await
        .unwrap();

    let events = ws.events(2).await;
    assert_eq!(positions(&events), vec![1, 2]);
    let (insert, update) = (&events[0], &events[1]);
    assert_eq!(insert["op"], "INSERT");
    assert_eq!(insert["data"]["status"], "PENDING");
    assert_eq!(update["type"], "event");
    assert_eq!(update["op"], "UPDATE");
    assert_eq!(update["table"], "bookings");
    assert_eq!(update["event"], "booking.accepted");
    assert_eq!(update["data"]["id"], id);
    assert_eq!(update["data"]["status"], "CONFIRMED");
    assert_eq!(update["data"]["client_id"], 7);
    assert_eq!(update["old"], json!({"status": "PENDING"}));
    assert!(
        update["data"].get("card_token").is_none(),
        "excluded column leaked"
    );
    assert_eq!(
        topic_set(update),
        set(&["bookings", &format!("booking:{id}"), "user:7", "provider:3"])
    );
    let ts = update["ts"].as_str().unwrap();
    assert_eq!(ts.len(), "2026-11-22T10:00:00.123Z".len(), "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
}

#[tokio::test]
async fn delete_carries_the_old_row_truncate_is_one_event_and_a_no_op_update_is_none() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings"], None).await;
    let writer = db.client().await;
    let id: i64 = writer
        .query_one(NEW_BOOKING, &[&1i64, &2i64])
        .await
        .unwrap()
        .get(0);
    // No visible change: same values, or only an excluded column.
    writer
        .execute("update bookings set status = status where id = $1", &[&id])
        .await
        .unwrap();
    writer
        .execute(
            "update bookings set card_token = 'tok_new' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    writer
        .query_one(NEW_BOOKING, &[&1i64, &2i64])
        .await
        .unwrap();
    writer
        .execute("delete from bookings where id = $1", &[&id])
        .await
        .unwrap();
    writer
        .batch_execute("truncate bookings cascade")
        .await
        .unwrap();

    let events = ws.events(4).await;
    let ops: Vec<&str> = events.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["INSERT", "INSERT", "DELETE", "TRUNCATE"]);
    assert_eq!(positions(&events), vec![1, 2, 3, 4]);
    let delete = &events[2];
    assert_eq!(delete["event"], "booking.deleted");
    assert_eq!(delete["data"]["id"], id);
    assert_eq!(delete["data"]["client_id"], 1);
    assert!(delete.get("old").is_none());
    let truncate = &events[3];
    assert_eq!(truncate["event"], "table.truncated");
    assert_eq!(truncate["topics"], json!(["bookings"]));
    ws.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_composite_key_table_gets_prefix_a_b_row_topics() {
    let db = TestDb::migrated().await;
    let writer = db.client().await;
    writer
        .batch_execute(
            "create table pairs (a int, b int, label text, primary key (a, b));
             select rowcast.watch('pairs', topic => 'pair');",
        )
        .await
        .unwrap();
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["pair:1:2"], None).await;
    writer
        .batch_execute(
            "insert into pairs values (1, 2, 'x'), (2, 1, 'y'); update pairs set label = 'z'",
        )
        .await
        .unwrap();
    let events = ws.events(2).await;
    assert_eq!(events[0]["topics"], json!(["pairs", "pair:1:2"]));
    assert_eq!(events[1]["data"]["label"], "z");
    ws.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_100_kb_row_is_delivered_whole() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings"], None).await;
    let note = "é".repeat(50 * 1024);
    let writer = db.client().await;
    let id: i64 = writer
        .query_one(NEW_BOOKING, &[&1i64, &2i64])
        .await
        .unwrap()
        .get(0);
    writer
        .execute("alter table bookings add column note text", &[])
        .await
        .unwrap();
    writer
        .execute("update bookings set note = $1 where id = $2", &[&note, &id])
        .await
        .unwrap();
    let events = ws.events(2).await;
    assert_eq!(events[1]["data"]["note"].as_str().unwrap(), note);
}

#[tokio::test]
async fn an_update_carries_the_previous_values_of_the_changed_columns_of_small_and_large_rows() {
    let db = TestDb::migrated().await;
    let writer = db.client().await;
    writer
        .batch_execute(
            "create table docs (id int primary key, body text, status text);
             select rowcast.watch('docs');",
        )
        .await
        .unwrap();
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["docs"], None).await;
    let large = "x".repeat(4000);
    writer
        .execute(
            "insert into docs values (1, 'short', 'a'), (2, $1, 'a')",
            &[&large],
        )
        .await
        .unwrap();
    writer
        .batch_execute(
            "update docs set status = 'b' where id = 1;
             update docs set status = 'b' where id = 2;
             update docs set body = 'now short', status = 'c' where id = 2;",
        )
        .await
        .unwrap();

    let events = ws.events(5).await;
    assert_eq!(events[2]["old"], json!({"status": "a"}));
    assert_eq!(events[3]["old"], json!({"status": "a"}));
    assert_eq!(events[4]["old"], json!({"body": large, "status": "b"}));
    assert_eq!(events[4]["data"]["body"], "now short");
    // Stored: the small row's old row whole, the large one's trimmed to its changes.
    let stored: Vec<Vec<String>> = writer
        .query(
            "select array(select jsonb_object_keys(old) order by 1) from rowcast.events \
             where op = 'UPDATE' order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        stored,
        vec![
            vec!["body".to_string(), "id".into(), "status".into()],
            vec!["status".to_string()],
            vec!["body".to_string(), "status".into()],
        ]
    );
}

#[tokio::test]
async fn writes_while_the_service_is_stopped_are_delivered_after_it_starts() {
    let db = TestDb::demo().await;
    let writer = db.client().await;
    let first = TestApp::start(&db).await;
    writer
        .query_one(NEW_BOOKING, &[&1i64, &2i64])
        .await
        .unwrap();
    db.wait_sequenced(1).await;
    first.stop().await;

    for client in 0..20i64 {
        writer
            .query_one(NEW_BOOKING, &[&client, &2i64])
            .await
            .expect("writes succeed while the service is down");
    }
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings"], Some(1)).await;
    let events = ws.events(20).await;
    assert_eq!(positions(&events), (2..=21).collect::<Vec<_>>());
    writer
        .query_one(NEW_BOOKING, &[&99i64, &2i64])
        .await
        .unwrap();
    assert_eq!(ws.events(1).await[0]["pos"], 22);
}

#[tokio::test]
async fn an_event_row_with_an_unknown_op_is_skipped_and_the_next_one_is_delivered() {
    // rowcast.events has no check constraint on `op` (preparing it cost every capture
    // insert): a hand-written row with an op the service does not know must not stop
    // or corrupt delivery.
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings"], None).await;

    let writer = db.client().await;
    writer
        .execute(
            "insert into rowcast.events (relid, op, data, routing_id) \
             select w.\"table\", 'MERGE', '{\"id\": 1}', w.registration \
             from rowcast.watched w where w.\"table\" = 'bookings'::regclass",
            &[],
        )
        .await
        .unwrap();
    writer
        .query_one(NEW_BOOKING, &[&7i64, &3i64])
        .await
        .unwrap();

    let events = ws.events(1).await;
    assert_eq!(positions(&events), vec![2]);
    assert_eq!(events[0]["op"], "INSERT");
    assert_eq!(events[0]["event"], "booking.created");
    ws.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_row_nested_thousands_of_levels_deep_is_delivered_whole() {
    // serde_json refuses to parse JSON nested more than 128 levels into values; the
    // service never does: rows travel as PostgreSQL rendered them.
    let db = TestDb::migrated().await;
    let writer = db.client().await;
    writer
        .batch_execute(
            "create table docs (id int primary key, body jsonb); select rowcast.watch('docs');",
        )
        .await
        .unwrap();
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["docs"], None).await;
    let nested = |leaf: i32| format!("{}{leaf}{}", "[".repeat(3000), "]".repeat(3000));
    writer
        .execute(
            "insert into docs values (1, $1::text::jsonb)",
            &[&nested(1)],
        )
        .await
        .unwrap();
    writer
        .execute(
            "update docs set body = $1::text::jsonb where id = 1",
            &[&nested(2)],
        )
        .await
        .unwrap();

    let inserted = ws.recv_text().await;
    assert!(
        inserted.contains(&format!("\"body\": {}", nested(1))),
        "{}",
        &inserted[..200]
    );
    let updated = ws.recv_text().await;
    let (data, old) = updated
        .split_once("\"old\":")
        .expect("an UPDATE carries old");
    assert!(data.contains(&nested(2)), "{}", &updated[..200]);
    assert!(old.contains(&nested(1)), "{}", &updated[..200]);
}
