//! The command line against a real database: admin commands, errors, install/uninstall.

use std::process::{Command, Output};

use crate::support::{TestDb, connect};

fn rowcast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rowcast"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("ROWCAST_ADMIN_URL")
        .output()
        .expect("running the rowcast binary")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn watch_status_and_unwatch_work_against_a_real_database() {
    let db = TestDb::migrated().await;
    db.client()
        .await
        .batch_execute("create table orders (id bigint primary key, buyer_id bigint, secret text)")
        .await
        .unwrap();
    let url = db.url.as_str();
    let out = rowcast(&[
        "watch",
        "--admin-url",
        url,
        "orders",
        "--topic",
        "order",
        "--route",
        "buyer_id=user",
        "--exclude",
        "secret",
        "--wake",
        "poll",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("watching orders"));

    let out = rowcast(&["status", "--admin-url", url, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let watched = &status["watched"][0];
    assert_eq!(watched["table"], "orders");
    assert_eq!(watched["topic"], "order");
    assert_eq!(watched["wake"], "poll");
    assert_eq!(watched["routes"], serde_json::json!({"buyer_id": "user"}));
    assert_eq!(watched["exclude"], serde_json::json!(["secret"]));
    assert_eq!(status["head"], 0);

    let out = rowcast(&["status", "--admin-url", url]);
    assert!(text(&out).contains("orders"), "{}", text(&out));

    let out = rowcast(&["unwatch", "--admin-url", url, "orders"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = rowcast(&["status", "--admin-url", url, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["watched"], serde_json::json!([]));
}

#[tokio::test]
async fn bad_arguments_and_an_unreachable_database_fail_clearly() {
    let db = TestDb::migrated().await;
    let out = rowcast(&["watch", "--admin-url", &db.url, "nope"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("\"nope\" does not exist"),
        "{}",
        text(&out)
    );

    let out = rowcast(&[
        "watch",
        "--admin-url",
        &db.url,
        "nope",
        "--route",
        "client_id",
    ]);
    assert_eq!(out.status.code(), Some(2), "a usage error: {}", text(&out));
    assert!(text(&out).contains("key=value"), "{}", text(&out));

    let out = rowcast(&["watch", "--admin-url", &db.url, "t", "--wake", "sometimes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let out = rowcast(&["status"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--admin-url"), "{}", text(&out));

    let out = rowcast(&[
        "status",
        "--admin-url",
        "host=127.0.0.1 port=1 user=postgres dbname=x",
    ]);
    assert!(!out.status.success());
    let message = text(&out);
    assert!(
        message.contains("cannot connect to postgres at 127.0.0.1:1/x"),
        "{message}"
    );
    assert!(message.contains("is it running"), "{message}");

    let out = rowcast(&["uninstall", "--admin-url", &db.url]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--yes"));
}

#[tokio::test]
async fn status_on_a_database_without_rowcast_says_to_run_migrate() {
    let db = TestDb::empty().await;
    for args in [
        vec!["status", "--admin-url", &db.url],
        vec!["watch", "--admin-url", &db.url, "bookings"],
        vec!["unwatch", "--admin-url", &db.url, "bookings"],
    ] {
        let out = rowcast(&args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let message = text(&out);
        assert!(
            message.contains("rowcast is not installed in this database: run `rowcast migrate`"),
            "{args:?}: {message}"
        );
        assert!(!message.contains("does not exist"), "{args:?}: {message}");
    }
}

#[tokio::test]
async fn migrate_on_a_fresh_database_prints_no_postgres_notices() {
    let db = TestDb::empty().await;
    let out = rowcast(&["migrate", "--admin-url", &db.url]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(!printed.contains("NOTICE"), "{printed}");
    assert!(!printed.contains("already exists"), "{printed}");
    assert!(printed.contains("rowcast schema migrated"), "{printed}");
    // Run again: up to date, still nothing from PostgreSQL.
    let out = rowcast(&["migrate", "--admin-url", &db.url]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("NOTICE"), "{}", text(&out));
}

#[tokio::test]
async fn the_sql_install_script_is_generated_from_the_migrations() {
    let on_disk =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/install.sql")).unwrap();
    assert_eq!(
        on_disk,
        rowcast::admin::install_sql(),
        "sql/install.sql is stale: regenerate it with `cargo run -- install-sql > sql/install.sql`"
    );
}

const CATALOG: &str = "select 'ns ' || nspname from pg_namespace \
     union all select 'fn ' || p.oid::regprocedure::text from pg_proc p \
        join pg_namespace n on n.oid = p.pronamespace where nspname not in ('pg_catalog', 'information_schema') \
     union all select 'tg ' || tgrelid::regclass || ' ' || tgname from pg_trigger where not tgisinternal \
     union all select 'et ' || evtname from pg_event_trigger \
     union all select 'ty ' || t.oid::regtype::text from pg_type t \
        join pg_namespace n on n.oid = t.typnamespace where nspname not in ('pg_catalog', 'information_schema', 'pg_toast') \
     union all select 'rel ' || c.oid::regclass::text from pg_class c \
        join pg_namespace n on n.oid = c.relnamespace where nspname not in ('pg_catalog', 'information_schema', 'pg_toast') \
     order by 1";

async fn catalog(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(CATALOG, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn psql(url: &str, file: &str) {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", file])
        .output()
        .expect("running psql");
    assert!(out.status.success(), "psql -f {file}: {}", text(&out));
}

/// The rowcast schema of a database as `pg_dump --schema-only` prints it, without the
/// lines that differ between any two dumps.
fn schema_dump(url: &str) -> String {
    let out = Command::new("pg_dump")
        .args(["--schema-only", "--schema=rowcast", "--no-owner", "-d", url])
        .output()
        .expect("running pg_dump");
    assert!(out.status.success(), "pg_dump: {}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_migrated_database_and_an_installed_one_have_the_same_schema() {
    let migrated = TestDb::migrated().await;
    let installed = TestDb::empty().await;
    let root = env!("CARGO_MANIFEST_DIR");
    psql(&installed.url, &format!("{root}/sql/install.sql"));
    rowcast::migrate::check(&installed.client().await)
        .await
        .expect("the SQL install is recognised as migrated, functions included");
    let (a, b) = (schema_dump(&migrated.url), schema_dump(&installed.url));
    assert!(a.contains("CREATE FUNCTION rowcast.watch("), "{a}");
    assert_eq!(a, b);
}

#[tokio::test]
async fn install_then_uninstall_leaves_the_catalog_as_it_was() {
    let db = TestDb::empty().await;
    let client = db.client().await;
    client
        .batch_execute(
            "create table bookings (id bigint primary key, client_id bigint, status text);
             insert into bookings values (1, 7, 'PENDING');",
        )
        .await
        .unwrap();
    let before = catalog(&db).await;
    let root = env!("CARGO_MANIFEST_DIR");
    psql(&db.url, &format!("{root}/sql/install.sql"));
    rowcast::migrate::check(&client)
        .await
        .expect("the SQL install is recognised as migrated");
    client
        .batch_execute(
            "select rowcast.watch('bookings', routes => '{\"client_id\": \"user\"}');
             update bookings set status = 'CONFIRMED';",
        )
        .await
        .unwrap();
    psql(&db.url, &format!("{root}/sql/uninstall.sql"));
    assert_eq!(catalog(&db).await, before);
    let status: String = connect(&db.url)
        .await
        .query_one("select status from bookings where id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "CONFIRMED", "app data untouched");
}

#[tokio::test]
async fn rowcast_uninstall_removes_what_migrate_installed() {
    let db = TestDb::empty().await;
    let before = catalog(&db).await;
    let out = rowcast(&["migrate", "--admin-url", &db.url]);
    assert!(out.status.success(), "{}", text(&out));
    db.client()
        .await
        .batch_execute(crate::support::DEMO_SQL)
        .await
        .unwrap();
    let with_demo: Vec<String> = catalog(&db).await;
    let out = rowcast(&["uninstall", "--admin-url", &db.url, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let after = catalog(&db).await;
    assert!(
        after.iter().all(|entry| !entry.contains("rowcast")),
        "{after:?}"
    );
    // Only the demo's own tables remain beyond what was there before.
    let demo_only: Vec<&String> = after.iter().filter(|e| !before.contains(e)).collect();
    assert!(demo_only.iter().all(|e| with_demo.contains(e)));
    assert!(!demo_only.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_a_running_services_connected_clients() {
    let db = TestDb::demo().await;
    let app = crate::support::TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings"], None).await;
    let (url, addr) = (db.url.clone(), app.addr.to_string());
    let out = tokio::task::spawn_blocking(move || {
        rowcast(&["status", "--admin-url", &url, "--server", &addr, "--json"])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["server"]["connections"], 1);
    assert_eq!(status["watched"].as_array().unwrap().len(), 7);
    let out = rowcast(&["status", "--admin-url", &db.url, "--server", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot reach rowcast at 127.0.0.1:1"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn mixed_case_tables_are_named_as_the_app_spells_them_and_the_printed_name_pastes_back() {
    let db = TestDb::migrated().await;
    db.client()
        .await
        .batch_execute(
            r#"create table "Jobs" (id bigint primary key, "ownerId" bigint);
               create schema billing;
               create table billing."Invoice" (id bigint primary key);"#,
        )
        .await
        .unwrap();
    let url = db.url.as_str();
    for (name, printed) in [
        ("Jobs", "watching Jobs"),
        ("billing.Invoice", "watching billing.Invoice"),
    ] {
        let out = rowcast(&["watch", "--admin-url", url, name]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(printed), "{}", text(&out));
        let pasted = printed.trim_start_matches("watching ");
        let out = rowcast(&["unwatch", "--admin-url", url, pasted]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(!text(&out).contains("was not watched"), "{}", text(&out));
    }
    let client = db.client().await;
    for spelled in ["Jobs", "\"Jobs\"", "public.Jobs", "jobs", "JOBS"] {
        let shown: String = client
            .query_one("select rowcast.watch($1::text)", &[&spelled])
            .await
            .unwrap_or_else(|e| panic!("{spelled}: {e}"))
            .get(0);
        assert_eq!(shown, "Jobs", "{spelled}");
    }
    client
        .batch_execute(r#"create table jobs (id int primary key)"#)
        .await
        .unwrap();
    let shown: String = client
        .query_one("select rowcast.watch('jobs')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "jobs", "SQL's own reading wins");
    client
        .batch_execute(
            r#"create table "Abc" (id int primary key); create table "ABC" (id int primary key);"#,
        )
        .await
        .unwrap();
    let err = client
        .execute("select rowcast.watch('Jobs2')", &[])
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("does not exist"),
        "{err}"
    );
    let err = client
        .execute("select rowcast.watch('aBc')", &[])
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("quote the one you mean"),
        "{err}"
    );
}

#[tokio::test]
async fn tail_prints_retained_and_live_events_as_subscribers_get_them() {
    let db = TestDb::demo().await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into bookings (client_id, provider_id, starts_at, ends_at, price)
             select 7 + i % 2, 3, now(), now() + interval '1 hour', i from generate_series(1, 6) i",
        )
        .await
        .unwrap();
    client
        .batch_execute("select rowcast.sequence()")
        .await
        .unwrap();
    let url = db.url.as_str();
    let out = rowcast(&[
        "tail",
        "--admin-url",
        url,
        "--since",
        "0",
        "--topic",
        "user:7",
        "--json",
        "--count",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let frames: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(frames.len(), 3);
    for frame in &frames {
        assert_eq!(frame["event"], "booking.created");
        assert_eq!(frame["data"]["client_id"], 7);
        assert!(frame["data"].get("card_token").is_none());
    }
    // Live: from the head on, a new write is printed as it is sequenced.
    let head: i64 = client
        .query_one("select last_pos from rowcast.sequencer", &[])
        .await
        .unwrap()
        .get(0);
    let live = tokio::process::Command::new(env!("CARGO_BIN_EXE_rowcast"))
        .args([
            "tail",
            "--admin-url",
            url,
            "--since",
            &head.to_string(),
            "--count",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    client
        .batch_execute("update bookings set status = 'CONFIRMED' where id = 1")
        .await
        .unwrap();
    client
        .batch_execute("select rowcast.sequence()")
        .await
        .unwrap();
    let out = tokio::time::timeout(crate::support::WAIT, live.wait_with_output())
        .await
        .expect("tail printed the live event")
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains("booking.accepted") && line.contains("bookings"),
        "{line}"
    );
    // A since older than retention is refused clearly.
    client
        .batch_execute("update rowcast.sequencer set pruned_pos = 5")
        .await
        .unwrap();
    let out = rowcast(&["tail", "--admin-url", url, "--since", "2"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("older than what the log keeps"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn types_declares_each_watched_tables_row_and_event_names_without_excluded_columns() {
    let db = TestDb::demo().await;
    db.client()
        .await
        .batch_execute(
            r#"create type "BookingStatus" as enum ('pending', 'accepted', 'awaiting_host');
               create table "Booking" ("id" text primary key, "status" "BookingStatus" not null,
                                       "paid" boolean, "meta" jsonb, "secret" text);
               select rowcast.watch('"Booking"', domain => 'booking', exclude => array['secret'],
                      rules => '[{"when": "status -> awaiting_host", "event": "booking.awaiting_host"}]');"#,
        )
        .await
        .unwrap();
    let out = rowcast(&["types", "--admin-url", db.url.as_str()]);
    assert!(out.status.success(), "{}", text(&out));
    let ts = String::from_utf8_lossy(&out.stdout).to_string();
    for expected in [
        "import type { RowcastEvent } from \"./rowcast.js\";",
        "export interface BookingsRow {",
        "  \"client_id\": number;",
        "  \"status\": string;",
        "export interface BookingRow {",
        "  \"status\": \"pending\" | \"accepted\" | \"awaiting_host\";",
        "  \"paid\": boolean | null;",
        "  \"meta\": unknown | null;",
        "\"booking.awaiting_host\"",
        "\"booking.accepted\"",
        "export type BookingEvent = RowcastEvent<\"Booking\",",
        "export type WatchedEvent = ",
    ] {
        assert!(ts.contains(expected), "{expected} missing from:\n{ts}");
    }
    assert!(
        !ts.contains("card_token") && !ts.contains("\"secret\""),
        "{ts}"
    );
    // With a TypeScript compiler on the machine, the declarations compile strictly
    // against the client's own.
    if let Ok(tsc) = which_tsc() {
        let dir = std::env::temp_dir().join(format!("rowcast-types-{}", db.name));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("events.ts"), &ts).unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/web/rowcast.d.ts"),
            dir.join("rowcast.d.ts"),
        )
        .unwrap();
        let out = Command::new(tsc)
            .args([
                "--strict", "--noEmit", "--target", "es2022", "--module", "es2022",
            ])
            .arg(dir.join("events.ts"))
            .output()
            .unwrap();
        assert!(out.status.success(), "tsc: {}", text(&out));
    } else {
        eprintln!("no tsc on PATH: the declarations were checked structurally only");
    }
}

/// A TypeScript compiler on PATH, if there is one.
fn which_tsc() -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("tsc"))
        .find(|path| path.is_file())
        .ok_or(())
}
