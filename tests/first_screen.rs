//! The first screen: an application reads its rows and `rowcast.head()` in one snapshot,
//! hands both to its dashboard, which subscribes from that position and converges to
//! the table, whatever was written meanwhile.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::Client;

use crate::support::sse::get_json;
use crate::support::{TestApp, TestDb, WAIT, WsClient, connect, run, test_config};

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
/// gone when it was deleted or left the topic (`row.left`, which carries only the key).
/// Every other event must carry a row that belongs on the topic (`keep`): a topic never
/// gets a row that moved elsewhere.
fn apply(screen: &mut Screen, event: &Value, keep: impl Fn(&Value) -> bool) {
    let data = &event["data"];
    let id = data["id"]
        .as_i64()
        .expect("every booking event carries its id");
    if event["event"] == "row.left" {
        assert_eq!(
            data.as_object().unwrap().len(),
            1,
            "row.left carries the key only: {event}"
        );
        assert!(event.get("old").is_none(), "{event}");
        screen.remove(&id);
        return;
    }
    assert!(
        keep(data),
        "a row that is not on the topic arrived: {event}"
    );
    if event["op"] == "DELETE" {
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

/// Reads `/snapshot` of `topics`, `limit` rows a page, following `next` to the end: the
/// rows by id, the head of the first page, and how many pages it took.
pub(crate) async fn snapshot(
    addr: std::net::SocketAddr,
    topics: &str,
    limit: usize,
) -> (Screen, i64, usize) {
    let mut screen = Screen::new();
    let mut cursor: Option<String> = None;
    let mut head = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/snapshot?topics={topics}&limit={limit}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = get_json(addr, &path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let first = *head.get_or_insert(page["head"].as_i64().unwrap());
        assert_eq!(
            page["head"], first,
            "every page repeats the first page's head"
        );
        let rows = page["rows"].as_array().unwrap();
        assert!(rows.len() <= limit);
        for row in rows {
            assert_eq!(row["table"], "bookings", "{row}");
            let data = row["data"].clone();
            screen.insert(data["id"].as_i64().unwrap(), data);
        }
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    (screen, head.unwrap(), pages)
}

#[tokio::test]
async fn a_snapshot_read_mid_burst_then_resumed_from_its_head_converges_to_the_table() {
    let db = TestDb::demo().await;
    let installer = db.client().await;
    run(
        &installer,
        &[
            "insert into bookings (client_id, provider_id, starts_at, ends_at, price, card_token)
           select 7 + i % 2, 3, now(), now() + interval '1 hour', i, 'tok_' || i
           from generate_series(1, 60) i",
        ],
    )
    .await;
    let app = TestApp::start(&db).await;
    let writers: Vec<_> = (0..4)
        .map(|seed| tokio::spawn(write(db.url.clone(), seed + 10, 3)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Small pages, so that the writers change the table between them.
    let (mut all, all_head, pages) = snapshot(app.addr, "bookings", 7).await;
    assert!(pages > 3, "{pages} pages");
    let (mut mine, mine_head, _) = snapshot(app.addr, "user:7", 5).await;
    assert!(
        mine.values().all(|row| row["client_id"] == 7),
        "a user topic's snapshot holds only its rows"
    );
    for screen in [&all, &mine] {
        assert!(
            screen.values().all(|row| row.get("card_token").is_none()),
            "excluded columns never appear in a snapshot"
        );
    }
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
    // A snapshot taken now is the table.
    let (now, _, _) = snapshot(app.addr, "bookings", 1000).await;
    assert_eq!(now, table(&installer, None).await);
    app.stop().await;
}

#[tokio::test]
async fn a_row_moving_to_another_user_leaves_the_old_topic_with_its_key_only() {
    let db = TestDb::demo().await;
    let installer = db.client().await;
    let app = TestApp::start(&db).await;
    let mut seven = app.ws().await;
    seven.subscribe(&["user:7"], None).await;
    let mut eight = app.ws().await;
    eight.subscribe(&["user:8"], None).await;
    let mut both = app.ws().await;
    both.subscribe(&["user:7", "user:8"], None).await;
    let mut row = app.ws().await;
    row.subscribe(&["booking:1"], None).await;
    run(
        &installer,
        &[
            "insert into bookings (id, client_id, provider_id, starts_at, ends_at, price, card_token)
             overriding system value values (1, 7, 3, now(), now() + interval '1 hour', 10, 'secret')",
            "update bookings set client_id = 8, price = 11 where id = 1",
            "update bookings set id = 2 where id = 1",
        ],
    )
    .await;
    let inserted = seven.events(1).await.remove(0);
    assert_eq!(inserted["event"], "booking.created");
    // user:7 learns only that the row left it: no column of the new row.
    let left = seven.events(1).await.remove(0);
    assert_eq!(left["event"], "row.left");
    assert_eq!(left["op"], "UPDATE");
    assert_eq!(left["data"], serde_json::json!({"id": 1}));
    assert_eq!(left["topics"], serde_json::json!(["user:7"]));
    assert!(left.get("old").is_none());
    assert_eq!(
        left["pos"].as_i64().unwrap(),
        inserted["pos"].as_i64().unwrap() + 1
    );
    // user:8 gets the whole event, old values included.
    let moved = eight.events(1).await.remove(0);
    assert_eq!(moved["pos"], left["pos"]);
    assert_eq!(moved["event"], "booking.updated");
    assert_eq!(moved["data"]["client_id"], 8);
    assert_eq!(moved["old"]["client_id"], 7);
    // A session on both topics gets the whole event once.
    let seen = both.events(2).await;
    assert_eq!(seen[1]["event"], "booking.updated");
    assert_eq!(seen[1]["pos"], left["pos"]);
    // The row topic: the whole event while the key stays; when the key changes, the old
    // row topic gets row.left with the old key.
    let on_row = row.events(3).await;
    assert_eq!(on_row[1]["event"], "booking.updated");
    assert_eq!(on_row[2]["event"], "row.left");
    assert_eq!(on_row[2]["data"], serde_json::json!({"id": 1}));
    // Replay gives each topic the same frames, over the WebSocket and HTTP polling.
    let since = inserted["pos"].as_i64().unwrap() - 1;
    let mut replayed = app.ws().await;
    replayed.subscribe(&["user:7"], Some(since)).await;
    let again = replayed.events(2).await;
    assert_eq!(again[1], left);
    let (status, page) = get_json(app.addr, &format!("/events?topics=user:7&since={since}")).await;
    assert_eq!(status, 200);
    assert_eq!(page["events"][1], left);
    seven.expect_silence(Duration::from_millis(200)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_snapshot_is_refused_for_topics_a_token_may_not_follow_or_no_table_serves() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    const SECRET: &str = "a-first-screen-test-secret-long-enough";
    let db = TestDb::demo().await;
    let installer = db.client().await;
    run(
        &installer,
        &[
            "insert into bookings (client_id, provider_id, starts_at, ends_at, price, card_token)
             select 7 + i % 2, 3, now(), now() + interval '1 hour', i, 'tok' from generate_series(1, 6) i",
            "create table notes (id int primary key, body text)",
            "select rowcast.watch('notes')",
            "create table logs (line text)",
        ],
    )
    .await;
    // A snapshot needs a key to page by.
    let err = installer
        .execute("select rowcast.watch('logs', snapshot => true)", &[])
        .await
        .unwrap_err();
    assert!(
        err.as_db_error().unwrap().message().contains("primary key"),
        "{err:?}"
    );
    let mut config = test_config(&db.url);
    config.auth = toml::from_str(&format!(
        r#"
        secret = "{SECRET}"
        [[allow]]
        topics = ["user:{{sub}}", "notes"]
        "#
    ))
    .unwrap();
    let app = TestApp::start_with(config).await;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "7", "exp": 4_000_000_000u64}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let get = |query: String| {
        let token = token.clone();
        async move { get_json(app.addr, &format!("/snapshot?{query}&token={token}")).await }
    };
    let (status, page) = get("topics=user:7".into()).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["rows"].as_array().unwrap().len(), 3);
    for topics in ["user:8", "bookings", "user:7,booking:1"] {
        let (status, body) = get(format!("topics={topics}")).await;
        assert_eq!(status, 403, "{topics}: {body}");
        assert_eq!(body["code"], "forbidden");
    }
    let (status, body) = get_json(app.addr, "/snapshot?topics=user:7").await;
    assert_eq!(status, 401, "{body}");
    // Watched without snapshot: refused, and says why.
    let (status, body) = get("topics=notes".into()).await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("snapshot => true"),
        "{body}"
    );
    // A cursor that is not one a page gave.
    for cursor in ["garbage", "1.1.WyJ4Il0", "1.1.WyIxIiwiMiJd"] {
        let (status, body) = get(format!("topics=user:7&cursor={cursor}")).await;
        assert_eq!(status, 400, "{cursor}: {body}");
    }
    let (status, _) = get("topics=user:7&limit=0".into()).await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test]
async fn a_snapshot_reads_with_the_service_roles_rights_and_never_runs_a_tenants_code() {
    let db = TestDb::demo().await;
    let installer = db.client().await;
    let role = format!("{}_snap", db.name);
    let tenant = format!("{}_tenant", db.name);
    run(
        &installer,
        &[&format!(
            "drop role if exists {role}; create role {role} login;
                 select rowcast.grant_service('{role}');
                 drop role if exists {tenant}; create role {tenant} login;
                 select rowcast.grant_admin('{tenant}');
                 grant create on schema public to {tenant};"
        )],
    )
    .await;
    // The tenant's own table: a quoted mixed-case name, an enum, an excluded column, a
    // renamed one.
    let owner = connect(&format!("{} user={tenant}", db.url)).await;
    run(
        &owner,
        &[
            r#"create type "Stage" as enum ('draft', 'live')"#,
            r#"create table "Post" ("postId" int primary key, "authorId" int, "Stage" "Stage", secret text)"#,
            r#"insert into "Post" values (1, 5, 'draft', 's1'), (2, 5, 'live', 's2'), (3, 6, 'live', 's3')"#,
        ],
    )
    .await;
    // Snapshots make the service read the table: the tenant may not turn them on.
    let err = owner
        .execute(
            r#"select rowcast.watch('"Post"', routes => '{"authorId": "author"}', exclude => '{secret}', snapshot => true)"#,
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        err.as_db_error().unwrap().message().contains("for the DBA"),
        "{err:?}"
    );
    run(
        &owner,
        &[
            r#"select rowcast.watch('"Post"', routes => '{"authorId": "author"}', exclude => '{secret}')"#,
        ],
    )
    .await;
    // The DBA does, and the setting survives the owner's rename and re-watch.
    run(
        &installer,
        &[
            r#"select rowcast.watch('"Post"', routes => '{"authorId": "author"}', exclude => '{secret}', snapshot => true)"#,
        ],
    )
    .await;
    run(
        &owner,
        &[
            r#"alter table "Post" rename column "Stage" to "phase""#,
            r#"select rowcast.watch('"Post"', routes => '{"authorId": "author"}', exclude => '{secret}', snapshot => true)"#,
        ],
    )
    .await;
    let app = TestApp::start_with(test_config(&format!("{} user={role}", db.url))).await;
    // Without select on the table: not read, and said so (the grant is in the log).
    let (status, body) = get_json(app.addr, "/snapshot?topics=author:5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], serde_json::json!([]));
    assert_eq!(
        body["skipped"],
        serde_json::json!([{"topic": "author:5", "table": "Post"}])
    );
    // A column grant that leaves the excluded column out is enough.
    run(
        &owner,
        &[&format!(
            r#"grant select ("postId", "authorId", "phase") on "Post" to {role}"#
        )],
    )
    .await;
    let expected = serde_json::json!([
        {"topic": "author:5", "table": "Post", "data": {"postId": 1, "authorId": 5, "phase": "draft"}},
        {"topic": "author:5", "table": "Post", "data": {"postId": 2, "authorId": 5, "phase": "live"}},
    ]);
    let (status, body) = get_json(app.addr, "/snapshot?topics=author:5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], expected);
    assert!(body.get("skipped").is_none(), "{body}");
    let (status, body) = get_json(app.addr, "/snapshot?topics=Post:3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["data"]["postId"], 3);
    // A value that is not the column's type names no row.
    let (status, body) = get_json(app.addr, "/snapshot?topics=author:abc").await;
    assert_eq!(
        (status, body["rows"].as_array().unwrap().len()),
        (200, 0),
        "{body}"
    );

    // The tenant's code never runs as the service. Its function fails loudly if it runs
    // as anyone but the tenant (the read is read-only: it could only leak by failing).
    run(
        &owner,
        &[&format!(
            r#"create function trap(i int) returns int language plpgsql immutable as $$
               begin
                   if current_user <> '{tenant}' then
                       raise exception 'tenant code ran as %', current_user;
                   end if;
                   return i;
               end $$"#
        )],
    )
    .await;
    // A cast of its enum to json or to text: the enum is read by its output function.
    run(
        &owner,
        &[
            r#"create function stage_json("Stage") returns json language sql as $$ select to_json(trap(1)) $$"#,
            r#"create cast ("Stage" as json) with function stage_json("Stage")"#,
            r#"create function stage_text("Stage") returns text language sql as $$ select trap(1)::text $$"#,
            r#"create cast ("Stage" as text) with function stage_text("Stage")"#,
        ],
    )
    .await;
    let (status, body) = get_json(app.addr, "/snapshot?topics=author:5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], expected, "the enum is read as its label");
    // An index whose predicate or expression, or a policy, would run its code when the
    // service plans the read: the table is not read.
    for (setup, undo) in [
        (
            r#"create index post_trap on "Post" ("postId") where trap(1) = 1"#,
            "drop index post_trap",
        ),
        (
            r#"create index post_trap on "Post" ((trap("authorId")))"#,
            "drop index post_trap",
        ),
        (
            r#"alter table "Post" enable row level security; create policy anyone on "Post" using (trap(1) = 1)"#,
            r#"drop policy anyone on "Post"; alter table "Post" disable row level security"#,
        ),
        (
            r#"create statistics post_trap on (("postId" + trap(1))), "authorId" from "Post""#,
            "drop statistics post_trap",
        ),
        // A partitioned table above it whose key the partition constraint comes from.
        (
            r#"create table "Wall" ("postId" int, "authorId" int, "phase" "Stage", secret text)
                   partition by range (("postId" + trap(0)));
               alter table "Wall" attach partition "Post" for values from (0) to (1000)"#,
            r#"alter table "Wall" detach partition "Post"; drop table "Wall""#,
        ),
    ] {
        run(&owner, &[setup]).await;
        let (status, body) = get_json(app.addr, "/snapshot?topics=author:5,Post:3").await;
        assert_eq!(status, 200, "{setup}: {body}");
        assert_eq!(body["rows"], serde_json::json!([]), "{setup}");
        assert_eq!(
            body["skipped"].as_array().unwrap().len(),
            2,
            "{setup}: {body}"
        );
        run(&owner, &[undo]).await;
    }
    let (status, body) = get_json(app.addr, "/snapshot?topics=author:5").await;
    assert_eq!((status, &body["rows"]), (200, &expected), "{body}");
    app.stop().await;
    drop(owner);
    run(
        &installer,
        &[&format!(
            r#"drop table "Post"; drop type "Stage" cascade; drop function trap(int);
               drop owned by {role}; drop role {role}; drop owned by {tenant}; drop role {tenant}"#
        )],
    )
    .await;
}
