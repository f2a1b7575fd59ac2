//! The first screen: an application reads its rows and `rowcast.head()` in one snapshot,
//! hands both to its dashboard, which subscribes from that position and converges to
//! the table, whatever was written meanwhile.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::Client;

use crate::support::{TestApp, TestDb, WAIT, WsClient, connect, run};

/// The rows a first screen shows, by id, as events carry them (no `card_token`).
type Screen = BTreeMap<i64, Value>;

const ROWS: &str = "select id, to_jsonb(b) - 'card_token' from bookings b";

/// Reads the rows of bookings (those of client 7 when `client` is set) and
/// `rowcast.head()` in one `repeatable read` transaction, as an application's backend
/// would.
async fn first_screen(app_role: &mut Client, client: Option<i64>) -> (Screen, i64) {
    let tx = app_role
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    let rows = match client {
        Some(id) => tx
            .query(&format!("{ROWS} where client_id = $1"), &[&id])
            .await
            .unwrap(),
        None => tx.query(ROWS, &[]).await.unwrap(),
    };
    let head: i64 = tx
        .query_one("select rowcast.head()", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    let screen = rows
        .iter()
        .map(|row| (row.get::<_, i64>(0), row.get::<_, Value>(1)))
        .collect();
    (screen, head)
}

/// Applies an event to a screen of rows on a topic: the row as the event carries it, or
/// gone when it was deleted or no longer belongs to the topic (`keep`).
fn apply(screen: &mut Screen, event: &Value, keep: impl Fn(&Value) -> bool) {
    let data = &event["data"];
    let id = data["id"]
        .as_i64()
        .expect("every booking event carries its id");
    if event["op"] == "DELETE" || !keep(data) {
        screen.remove(&id);
    } else {
        screen.insert(id, data.clone());
    }
}

/// The rows of bookings now, as [`first_screen`] reads them.
async fn table(installer: &Client, client: Option<i64>) -> Screen {
    let rows = match client {
        Some(id) => installer
            .query(&format!("{ROWS} where client_id = $1"), &[&id])
            .await
            .unwrap(),
        None => installer.query(ROWS, &[]).await.unwrap(),
    };
    rows.iter()
        .map(|row| (row.get::<_, i64>(0), row.get::<_, Value>(1)))
        .collect()
}

/// Writes bookings for about `seconds`: inserts, status changes, moves between clients 7
/// and 8, deletes. Returns how many statements committed.
async fn write(url: String, seed: u64, seconds: u64) -> u64 {
    let client = connect(&url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut n = seed;
    let mut committed = 0;
    while tokio::time::Instant::now() < deadline {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pick = (n >> 33) % 10;
        let sql = match pick {
            0..=3 => format!(
                "insert into bookings (client_id, provider_id, starts_at, ends_at, price, card_token)
                 values ({}, 3, now(), now() + interval '1 hour', {}, 'tok_{n}')",
                7 + (n >> 40) % 2,
                (n >> 20) % 100
            ),
            4..=6 => "update bookings set status = 'CONFIRMED', price = price + 1
                      where id = (select id from bookings order by random() limit 1)"
                .to_string(),
            7 | 8 => "update bookings set client_id = 15 - client_id
                      where id = (select id from bookings order by random() limit 1)"
                .to_string(),
            _ => "delete from bookings where id = (select id from bookings order by random() limit 1)"
                .to_string(),
        };
        if client.batch_execute(&sql).await.is_ok() {
            committed += 1;
        }
    }
    committed
}

/// Receives events until the screen equals the table or the wait runs out.
async fn converge(
    ws: &mut WsClient,
    screen: &mut Screen,
    installer: &Client,
    client: Option<i64>,
) -> usize {
    let want = table(installer, client).await;
    let keep = |data: &Value| client.is_none_or(|id| data["client_id"] == id);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut applied = 0;
    while *screen != want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(message) = ws.recv_within(left).await else {
            break;
        };
        if message["type"] == "event" {
            apply(screen, &message, keep);
            applied += 1;
        }
    }
    let differ: Vec<&i64> = screen
        .keys()
        .chain(want.keys())
        .filter(|id| screen.get(id) != want.get(id))
        .collect();
    assert!(
        differ.is_empty(),
        "after {applied} events the screen differs from the table at ids {differ:?}"
    );
    applied
}

#[tokio::test]
async fn a_first_screen_read_with_rowcast_head_then_resumed_converges_to_the_table() {
    let db = TestDb::demo().await;
    let installer = db.client().await;
    // The application's role: its own tables, and nothing granted on rowcast.
    let role = format!("{}_app", db.name);
    run(
        &installer,
        &[&format!(
            "drop role if exists {role}; create role {role} login;
             grant select on bookings to {role};"
        )],
    )
    .await;
    run(
        &installer,
        &[
            "insert into bookings (client_id, provider_id, starts_at, ends_at, price)
           select 7 + i % 2, 3, now(), now() + interval '1 hour', i from generate_series(1, 40) i",
        ],
    )
    .await;
    let app = TestApp::start(&db).await;
    let writers: Vec<_> = (0..4)
        .map(|seed| tokio::spawn(write(db.url.clone(), seed, 2)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await; // the screen is read mid-burst
    let mut app_role = connect(&format!("{} user={role}", db.url)).await;
    let (mut all, all_head) = first_screen(&mut app_role, None).await;
    let (mut mine, mine_head) = first_screen(&mut app_role, Some(7)).await;
    let mut ws_all = app.ws().await;
    ws_all.subscribe(&["bookings"], Some(all_head)).await;
    let mut ws_mine = app.ws().await;
    ws_mine.subscribe(&["user:7"], Some(mine_head)).await;
    let mut committed = 0;
    for writer in writers {
        committed += writer.await.unwrap();
    }
    assert!(committed > 50, "the writers wrote {committed} statements");
    converge(&mut ws_all, &mut all, &installer, None).await;
    converge(&mut ws_mine, &mut mine, &installer, Some(7)).await;
    // Excluded columns never reach a screen built from events.
    assert!(all.values().all(|row| row.get("card_token").is_none()));
    drop(app_role);
    app.stop().await;
    run(
        &installer,
        &[&format!("drop owned by {role}; drop role {role}")],
    )
    .await;
}

#[tokio::test]
async fn an_apps_own_event_is_delivered_only_on_commit_after_its_transactions_row_events() {
    let db = TestDb::demo().await;
    let installer = db.client().await;
    let role = format!("{}_pub", db.name);
    run(
        &installer,
        &[&format!(
            "drop role if exists {role}; create role {role} login;
             grant select, insert on bookings to {role};"
        )],
    )
    .await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["stats:global", "bookings"], None).await;
    // The application's role: no grant on rowcast at all.
    let writer = connect(&format!("{} user={role}", db.url)).await;
    let insert = "insert into bookings (client_id, provider_id, starts_at, ends_at, price)
                  values (7, 3, now(), now() + interval '1 hour', 10);";
    writer
        .batch_execute(&format!(
            "begin; {insert} select rowcast.publish('stats:global', 'stats.updated', '{{\"n\": 1}}'); rollback;"
        ))
        .await
        .unwrap();
    let big = "x".repeat(100_000);
    writer
        .batch_execute(&format!(
            "begin; {insert}
             select rowcast.publish('stats:global', 'stats.updated',
                                    jsonb_build_object('n', 2, 'blob', '{big}'));
             commit;"
        ))
        .await
        .unwrap();
    let events =
        crate::support::expect_events(&mut ws, &["booking.created", "stats.updated"]).await;
    let (row, published) = (&events[0], &events[1]);
    assert_eq!(published["pos"], row["pos"].as_i64().unwrap() + 1);
    assert_eq!(published["op"], "PUBLISH");
    assert_eq!(published["table"], Value::Null);
    assert_eq!(published["topics"], serde_json::json!(["stats:global"]));
    assert_eq!(published["data"]["n"], 2);
    assert_eq!(published["data"]["blob"].as_str().unwrap().len(), 100_000);
    assert!(published.get("old").is_none(), "{}", published["op"]);
    // A topic that could be a table's, or a bad name, is refused, even by a direct insert.
    for sql in [
        "select rowcast.publish('bookings', 'booking.created', '{}')",
        "select rowcast.publish('user:7', 'bad name', '{}')",
        "insert into rowcast.events (relid, op, data, old)
         values (0, 'PUBLISH', '{}', '{\"topic\": \"bookings\", \"event\": \"booking.created\"}')",
        "insert into rowcast.events (relid, op, data, old)
         values ('bookings'::regclass, 'PUBLISH', '{}', '{\"topic\": \"user:7\", \"event\": \"x\"}')",
    ] {
        let err = writer.batch_execute(sql).await.unwrap_err();
        let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
        assert!(
            message.contains("prefix:value")
                || message.contains("event name")
                || message.contains("row-level security"),
            "{sql}: {message}"
        );
    }
    ws.expect_silence(Duration::from_millis(300)).await;
    drop(writer);
    app.stop().await;
    run(
        &installer,
        &[&format!("drop owned by {role}; drop role {role}")],
    )
    .await;
}
