//! Set-wise capture: multi-row statements are captured from their transition tables,
//! with the events and positions the row trigger gives.

use std::io::Cursor;
use std::time::Duration;

use futures_util::{SinkExt, pin_mut};
use serde_json::Value;
use tokio_postgres::Client;

use crate::support::{TestApp, TestDb, connect, run};

/// Tables of every shape the comparison covers: a plain table with an excluded column, an
/// enum and a wide column; a table with quoted mixed-case names and an enum of such a
/// name; a partitioned table (which keeps the row trigger on both sides).
const SCHEMA: &str = r#"
create type mood as enum ('calm', 'busy', 'gone');
create table items (id int primary key, qty int not null, note text, secret text, mood mood not null default 'calm');
create schema "Sales";
create type "Sales"."Line State" as enum ('Open', 'Shipped');
create table "Sales"."Order Lines" ("LineId" int primary key, "Qty" int, "State" "Sales"."Line State" not null default 'Open');
create table parts (id int, region text, v int, primary key (region, id)) partition by list (region);
create table parts_eu partition of parts for values in ('eu');
create table parts_us partition of parts for values in ('us');
select rowcast.watch('items', topic => 'item', exclude => array['secret'], wake => 'poll');
select rowcast.watch('"Sales"."Order Lines"', wake => 'poll');
select rowcast.watch('parts', wake => 'poll');
select rowcast.capture_statements('items');
select rowcast.capture_statements('"Sales"."Order Lines"');
"#;

/// Moves the tables back to the row trigger, with the same arguments.
const ROW_PATH: &str = r#"
select rowcast.capture_statements('items', false);
select rowcast.capture_statements('"Sales"."Order Lines"', false);
"#;

/// The statements both databases run, each in its own transaction (a COPY follows the
/// first one).
const STATEMENTS: &[&str] = &[
    "insert into items (id, qty, note, secret, mood) \
     select g, g * 10, 'note ' || g, 'hush-' || g, (array['calm', 'busy', 'gone']::mood[])[1 + g % 3] \
     from generate_series(1, 12) g",
    // every third row unchanged: no event for those
    "update items set qty = case when id % 3 = 0 then qty else qty + 1 end, mood = mood",
    // only the excluded column: no event at all
    "update items set secret = 'hush-again-' || id",
    // the excluded column and a visible one
    "update items set secret = 'hush-3', note = 'renoted ' || id where id between 4 and 9",
    // a wide row: the old row is trimmed to the changed columns in the log
    "update items set note = repeat('x', 2000) where id in (2, 5)",
    "update items set qty = -qty, note = 'short' where id in (2, 5, 7)",
    "delete from items where id % 4 = 0",
    r#"insert into "Sales"."Order Lines" ("LineId", "Qty") select g, g from generate_series(1, 6) g"#,
    r#"update "Sales"."Order Lines" set "State" = 'Shipped', "Qty" = "Qty" + 1 where "LineId" % 2 = 0"#,
    r#"update "Sales"."Order Lines" set "Qty" = "Qty""#,
    r#"delete from "Sales"."Order Lines" where "LineId" > 4"#,
    "insert into parts select g, case when g % 2 = 0 then 'eu' else 'us' end, g from generate_series(1, 8) g",
    "update parts set v = v * 2 where id > 2",
    "update parts set region = 'eu' where id = 3",
    "delete from parts where id in (1, 2)",
    // several statements on the same rows in one transaction
    "begin; \
     insert into items (id, qty) select g, 0 from generate_series(100, 104) g; \
     update items set qty = qty + 1 where id >= 100; \
     update items set qty = qty * 7, mood = 'busy' where id >= 102; \
     delete from items where id = 101; \
     insert into items (id, qty) values (101, 1); \
     update items set qty = qty + 1 where id >= 100; \
     commit",
    "insert into items (id, qty, note) values (200, 1, 'one row')",
    "update items set qty = 2 where id = 200",
    "delete from items where id = 200",
];

/// Rows for the COPY into items, after the first statement.
const COPY_ROWS: &str =
    "50\t5\tcopied\thush-50\tbusy\n51\t6\t\\N\thush-51\tgone\n52\t7\tcopied too\t\\N\tcalm\n";

/// Runs the statements (and the COPY) on `client`.
async fn write_everything(client: &Client) {
    run(client, &STATEMENTS[..1]).await;
    let sink = client
        .copy_in("copy items (id, qty, note, secret, mood) from stdin")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(Cursor::new(COPY_ROWS.as_bytes().to_vec()))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);
    run(client, &STATEMENTS[1..]).await;
}

/// The table topics of the watched tables.
async fn table_topics(client: &Client) -> Vec<String> {
    client
        .query(
            "select rowcast.table_topic(\"table\") from rowcast.watched order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every event of `db`, as a subscriber to every table receives it over the service,
/// without the time stamp.
async fn delivered(db: &TestDb) -> Vec<Value> {
    let client = db.client().await;
    let count: i64 = client
        .query_one("select count(*) from rowcast.events", &[])
        .await
        .unwrap()
        .get(0);
    let app = TestApp::start(db).await;
    db.wait_sequenced(count).await;
    let mut ws = app.ws().await;
    let topics = table_topics(&client).await;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    ws.subscribe(&topics, Some(0)).await;
    let mut events = ws.events(count as usize).await;
    ws.expect_silence(Duration::from_millis(300)).await;
    for event in &mut events {
        event.as_object_mut().unwrap().remove("ts");
    }
    events
}

/// The kind of each capture trigger of `db`'s watched tables: `table:ROW` or `table:STATEMENT`.
async fn capture_triggers(client: &Client) -> Vec<String> {
    client
        .query(
            "select distinct tgrelid::regclass::text || ':' || case when tgtype & 1 = 1 then 'ROW' else 'STATEMENT' end \
             from pg_trigger where tgfoid in ('rowcast.capture()'::regprocedure, 'rowcast.capture_set()'::regprocedure) \
               and tgparentid = 0 order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn set_wise_capture_delivers_the_events_and_positions_of_the_row_trigger() {
    let set_db = TestDb::migrated().await;
    let row_db = TestDb::migrated().await;
    let set_client = set_db.client().await;
    let row_client = row_db.client().await;
    set_client.batch_execute(SCHEMA).await.unwrap();
    row_client.batch_execute(SCHEMA).await.unwrap();
    row_client.batch_execute(ROW_PATH).await.unwrap();
    assert_eq!(
        capture_triggers(&set_client).await,
        [
            "\"Sales\".\"Order Lines\":STATEMENT",
            "items:STATEMENT",
            "parts:ROW"
        ]
    );
    assert_eq!(
        capture_triggers(&row_client).await,
        ["\"Sales\".\"Order Lines\":ROW", "items:ROW", "parts:ROW"]
    );

    // The set-wise side writes as an application role, which the policy on the log
    // checks (the installer bypasses it).
    let writer = format!("{}_app", set_db.name);
    set_client
        .batch_execute(&format!(
            "create role {writer} login;
             grant usage on schema public, \"Sales\" to {writer};
             grant select, insert, update, delete on items, \"Sales\".\"Order Lines\", parts to {writer};"
        ))
        .await
        .unwrap();
    let as_writer = connect(&format!("{} user={writer}", set_db.url)).await;
    write_everything(&as_writer).await;
    write_everything(&row_client).await;
    drop(as_writer);
    set_client
        .batch_execute(&format!("drop owned by {writer}; drop role {writer}"))
        .await
        .unwrap();

    // The logs agree row for row (the wide old row trimmed the same way).
    let log =
        "select e.relid::regclass::text, e.op, e.data, e.old from rowcast.events e order by e.id";
    let logged =
        |rows: Vec<tokio_postgres::Row>| -> Vec<(String, String, Option<Value>, Option<Value>)> {
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect()
        };
    let set_log = logged(set_client.query(log, &[]).await.unwrap());
    let row_log = logged(row_client.query(log, &[]).await.unwrap());
    assert_eq!(set_log.len(), row_log.len());
    for (i, (s, r)) in set_log.iter().zip(&row_log).enumerate() {
        assert_eq!(
            s, r,
            "event {i} differs between the set-wise and the row path"
        );
    }
    let trimmed = set_log
        .iter()
        .filter(|(table, op, _, old)| {
            table == "items"
                && op == "UPDATE"
                && old.as_ref().is_some_and(|o| o.get("id").is_none())
        })
        .count();
    assert_eq!(trimmed, 2, "the two wide old rows are trimmed");

    let set_events = delivered(&set_db).await;
    let row_events = delivered(&row_db).await;
    assert_eq!(set_events.len(), row_events.len());
    for (s, r) in set_events.iter().zip(&row_events) {
        assert_eq!(s, r, "a delivered event differs between the paths");
    }
    let ops: Vec<&str> = set_events
        .iter()
        .map(|e| e["op"].as_str().unwrap())
        .collect();
    // items: 12, the COPY's 3, 6 in the transaction, 1 alone; order lines 6; parts 8,
    // and 1 for the row that moved to another partition
    assert_eq!(
        ops.iter().filter(|op| **op == "INSERT").count(),
        12 + 3 + 6 + 1 + 6 + 8 + 1
    );
    // items 4, 8, 12, 52, 101 and 200; order lines 5 and 6; parts 1, 2 and the move
    assert_eq!(ops.iter().filter(|op| **op == "DELETE").count(), 6 + 2 + 3);
    let positions: Vec<i64> = set_events
        .iter()
        .map(|e| e["pos"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, (1..=set_events.len() as i64).collect::<Vec<_>>());
    assert!(
        set_events.iter().all(|e| !e.to_string().contains("hush")),
        "an excluded value was delivered"
    );
    let mixed = set_events
        .iter()
        .find(|e| e["op"] == "UPDATE" && e["data"].get("LineId").is_some())
        .expect("an update of the mixed-case table");
    assert_eq!(mixed["data"]["State"], "Shipped");
    assert_eq!(mixed["old"]["State"], "Open");
}

#[tokio::test]
async fn excluded_columns_never_leave_the_database_on_the_set_wise_path() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client.batch_execute(SCHEMA).await.unwrap();
    write_everything(&client).await;
    // A rename cannot un-exclude a column: the exclusion is by column number.
    run(
        &client,
        &[
            "alter table items rename column secret to shown",
            "update items set shown = 'hush-renamed', qty = qty + 1 where id < 4",
            "insert into items (id, qty, shown) select g, g, 'hush-' || g from generate_series(300, 305) g",
            "delete from items where id >= 300",
        ],
    )
    .await;
    let leaked: i64 = client
        .query_one(
            "select count(*) from rowcast.events \
             where data::text like '%hush%' or coalesce(old::text, '') like '%hush%' \
                or data ? 'secret' or data ? 'shown' or old ? 'secret' or old ? 'shown'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0, "an excluded value reached the log");
    let events = delivered(&db).await;
    assert!(events.len() > 40, "{} events", events.len());
    for event in &events {
        let text = event.to_string();
        assert!(!text.contains("hush"), "excluded value delivered: {text}");
        assert!(event["data"].get("shown").is_none() && event["data"].get("secret").is_none());
    }
    assert!(events.iter().any(|e| e["data"]["id"] == 300));
}

#[tokio::test]
async fn several_statements_on_the_same_rows_in_one_transaction_keep_each_rows_order() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client.batch_execute(SCHEMA).await.unwrap();
    run(
        &client,
        &["begin;
           insert into items (id, qty) select g, g from generate_series(1, 40) g;
           update items set qty = qty + 1000;
           update items set qty = qty * 2 where id % 2 = 0;
           update items set qty = qty where id % 3 = 0;
           delete from items where id % 5 = 0;
           insert into items (id, qty) select g, -g from generate_series(1, 40) g where g % 5 = 0;
           update items set qty = qty - 1 where id > 30;
           commit"],
    )
    .await;
    let events = delivered(&db).await;
    for id in 1..=40i64 {
        let mine: Vec<(String, i64)> = events
            .iter()
            .filter(|e| e["data"]["id"] == id)
            .map(|e| {
                (
                    e["op"].as_str().unwrap().to_string(),
                    e["data"]["qty"].as_i64().unwrap(),
                )
            })
            .collect();
        let mut expected = vec![
            ("INSERT".to_string(), id),
            ("UPDATE".to_string(), id + 1000),
        ];
        let mut qty = id + 1000;
        if id % 2 == 0 {
            qty *= 2;
            expected.push(("UPDATE".to_string(), qty));
        }
        if id % 5 == 0 {
            expected.push(("DELETE".to_string(), qty));
            qty = -id;
            expected.push(("INSERT".to_string(), qty));
        }
        if id > 30 {
            expected.push(("UPDATE".to_string(), qty - 1));
        }
        assert_eq!(mine, expected, "row {id}");
    }
    // Within each statement, events follow one another in the statement's row order,
    // which for these scans is the order of ids.
    let first: Vec<i64> = events
        .iter()
        .take(40)
        .map(|e| e["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(first, (1..=40).collect::<Vec<_>>());
}

#[tokio::test]
async fn partition_trees_keep_the_row_trigger_and_a_table_joining_one_is_reported() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client.batch_execute(SCHEMA).await.unwrap();
    run(
        &client,
        &[
            "create table kids (extra int) inherits (items)",
            "create table loose (id int primary key, v int)",
            "select rowcast.watch('kids')",
            "select rowcast.watch('loose')",
        ],
    )
    .await;
    // A table is watched with the row trigger; capture_statements moves it to
    // statement triggers, where that can serve.
    let kinds = capture_triggers(&client).await;
    assert!(kinds.contains(&"loose:ROW".to_string()), "{kinds:?}");
    run(&client, &["select rowcast.capture_statements('loose')"]).await;
    for table in ["kids", "parts", "parts_eu"] {
        let sql = format!("select rowcast.capture_statements('{table}')");
        let err = client.batch_execute(&sql).await.unwrap_err();
        let message = err
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(
            message.contains("cannot be captured by statement triggers")
                || message.contains("not watched"),
            "{table}: {message}"
        );
    }
    let kinds = capture_triggers(&client).await;
    for expected in ["kids:ROW", "loose:STATEMENT", "parts:ROW"] {
        assert!(kinds.contains(&expected.to_string()), "{kinds:?}");
    }
    // items became an inheritance parent after it was watched set-wise.
    let problem: Option<String> = client
        .query_one(
            "select problem from rowcast.watched where \"table\" = 'items'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        problem
            .as_deref()
            .unwrap_or_default()
            .contains("inheritance"),
        "{problem:?}"
    );
    // Watching it again keeps statement capture where it can, so it moves items to the
    // row trigger, and the problem goes.
    run(&client, &["select rowcast.watch('items', topic => 'item', exclude => array['secret'], wake => 'poll')"]).await;
    let problem: Option<String> = client
        .query_one(
            "select problem from rowcast.watched where \"table\" = 'items'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(problem, None);
    assert!(
        capture_triggers(&client)
            .await
            .contains(&"items:ROW".to_string())
    );
    // Watching loose again keeps its statement triggers.
    run(&client, &["select rowcast.watch('loose', wake => 'poll')"]).await;
    assert!(
        capture_triggers(&client)
            .await
            .contains(&"loose:STATEMENT".to_string())
    );
    // A dropped statement trigger is reported.
    run(&client, &["drop trigger rowcast_capture_update on loose"]).await;
    let problem: Option<String> = client
        .query_one(
            "select problem from rowcast.watched where \"table\" = 'loose'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        problem.as_deref().unwrap_or_default().contains("missing"),
        "{problem:?}"
    );
    // unwatch removes every capture trigger.
    run(&client, &["select rowcast.unwatch('loose')"]).await;
    let left: i64 = client
        .query_one(
            "select count(*) from pg_trigger where tgrelid = 'loose'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn an_upsert_on_a_set_wise_table_gets_its_updates_then_its_inserts() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client.batch_execute(SCHEMA).await.unwrap();
    run(
        &client,
        &[
            "insert into items (id, qty) values (1, 1), (2, 2)",
            "insert into items (id, qty) values (1, 10), (7, 70), (2, 20), (8, 80) \
             on conflict (id) do update set qty = excluded.qty",
        ],
    )
    .await;
    let events = delivered(&db).await;
    let seen: Vec<(&str, i64)> = events[2..]
        .iter()
        .map(|e| (e["op"].as_str().unwrap(), e["data"]["id"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [("UPDATE", 1), ("UPDATE", 2), ("INSERT", 7), ("INSERT", 8)]
    );
}

#[tokio::test]
async fn a_statement_on_a_notify_table_wakes_the_sequencer_only_when_it_captured_rows() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "create table bulk (id int primary key, v int not null);
             select rowcast.watch('bulk', wake => 'notify');
             select rowcast.capture_statements('bulk');",
        )
        .await
        .unwrap();
    let listener = rowcast::db::Listener::connect(
        &rowcast::db::pg_config(&db.url).unwrap(),
        &["rowcast_wake"],
    )
    .await
    .unwrap();
    client
        .batch_execute("insert into bulk select g, g from generate_series(1, 100) g")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), listener.notified())
        .await
        .expect("a multi-row insert into a notify table must wake the sequencer");
    // Outside read committed every capturing statement wakes it (the flag is not used),
    // so a statement that captured nothing is seen to stay quiet.
    client
        .batch_execute(
            "begin isolation level repeatable read; update bulk set v = v where id > 50; \
             update bulk set v = v + 1 where false; delete from bulk where false; commit",
        )
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.notified())
            .await
            .is_err(),
        "a statement that captured nothing sent a wake-up"
    );
    client
        .batch_execute(
            "begin isolation level repeatable read; update bulk set v = v + 1 where id > 50; commit",
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), listener.notified())
        .await
        .expect("a repeatable-read multi-row update must wake the sequencer");
}
