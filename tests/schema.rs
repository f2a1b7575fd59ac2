//! The SQL side alone: migrations, the capture trigger and the DBA API.

use crate::support::{TestDb, connect};

const NEW_BOOKING: &str = "insert into bookings (client_id, provider_id, starts_at, ends_at, price) \
     values (7, 3, now(), now() + interval '1 hour', 10) returning id";

async fn captured(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("select count(*) from rowcast.events", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn migrate_twice_is_a_no_op_and_records_the_version() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let applied = rowcast::migrate::migrate(&mut client).await.unwrap();
    assert!(applied.is_empty(), "second run applied {applied:?}");
    rowcast::migrate::check(&client).await.unwrap();
}

#[tokio::test]
async fn migrate_gives_a_replaced_functions_grants_to_its_new_definition_and_no_more() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let role = format!("{}_adm", db.name);
    let new_watch =
        "rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text, jsonb, boolean)";
    let old_watch = "rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text, jsonb)";
    let text_watch = "rowcast.watch(text, text, jsonb, text[], text, jsonb, text, jsonb, boolean)";
    client
        .batch_execute(&format!(
            "drop role if exists {role}; create role {role};
             -- A function as an older rowcast defined it, granted to a tenant admin, who
             -- has no grant on the current one.
             drop function {new_watch};
             create function {old_watch} returns text language sql as $$ select null::text $$;
             grant execute on function {old_watch} to {role};
             -- A role that may run one overload only.
             drop role if exists {role}_one; create role {role}_one;
             grant execute on function {text_watch} to {role}_one;"
        ))
        .await
        .unwrap();
    rowcast::migrate::migrate(&mut client).await.unwrap();
    let may = |function: &str| {
        let client = &client;
        let sql = format!("select has_function_privilege('{role}', '{function}', 'execute')");
        async move { client.query_one(&sql, &[]).await.unwrap().get::<_, bool>(0) }
    };
    let gone: bool = client
        .query_one(
            &format!("select to_regprocedure('{old_watch}') is null"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(gone, "the older definition is dropped");
    assert!(
        may(new_watch).await,
        "the grant moved to the new definition"
    );
    assert!(
        !may("rowcast.sequence_step(integer)").await,
        "and nothing else was granted"
    );
    // A function that stays keeps exactly its grants: the other overload is not given.
    let one: bool = client
        .query_one(
            &format!("select has_function_privilege('{role}_one', '{new_watch}', 'execute')"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!one, "a grant on one overload spread to another");
    rowcast::migrate::check(&client).await.unwrap();
    client
        .batch_execute(&format!(
            "drop owned by {role}; drop role {role}; drop owned by {role}_one; drop role {role}_one"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_rowcast_is_refused() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    client
        .batch_execute(
            "insert into rowcast.schema_history (version, name, applied_on, checksum) \
             values (999, 'future', to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '0')",
        )
        .await
        .unwrap();
    let err = rowcast::migrate::check(&client).await.unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
    assert!(rowcast::migrate::migrate(&mut client).await.is_err());
}

#[tokio::test]
async fn an_unmigrated_database_is_refused_by_the_service() {
    let db = TestDb::empty().await;
    let err = rowcast::Application::build(crate::support::test_config(&db.url))
        .await
        .err()
        .expect("the service must refuse an unmigrated database");
    assert!(err.to_string().contains("rowcast migrate"), "{err}");
}

#[tokio::test]
async fn rolled_back_transactions_and_savepoints_capture_nothing_that_commits() {
    let db = TestDb::demo().await;
    let client = db.client().await;
    client
        .batch_execute(&format!("begin; {NEW_BOOKING}; rollback;"))
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "begin; {NEW_BOOKING}; savepoint s; {NEW_BOOKING}; rollback to savepoint s; commit;"
        ))
        .await
        .unwrap();
    // Only the committed, not rolled-back insert is visible in the log.
    assert_eq!(captured(&db).await, 1);
    let n: i64 = client
        .query_one("select rowcast.sequence()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(db.positions().await, vec![1]);
}

#[tokio::test]
async fn a_row_of_100_kb_is_captured_whole() {
    let db = TestDb::demo().await;
    let client = db.client().await;
    let note = "x".repeat(100 * 1024);
    client
        .batch_execute(
            "insert into meetings (id, title, court_rep_id, organization_id, scheduled_at) \
             values (1, 'm', 2, 3, now())",
        )
        .await
        .unwrap();
    client
        .execute(
            "insert into court_cards (meeting_id, participant_id, court_rep_id, notes) values (1, 1, 2, $1)",
            &[&note],
        )
        .await
        .expect("a large row must never fail the write");
    let stored: String = client
        .query_one(
            "select data->>'notes' from rowcast.events where relid = 'court_cards'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), note.len());
}

#[tokio::test]
async fn an_app_role_without_any_grant_on_rowcast_can_write_watched_tables() {
    let db = TestDb::demo().await;
    let admin = db.client().await;
    let role = format!("{}_app", db.name);
    admin
        .batch_execute(&format!(
            "drop role if exists {role}; create role {role} login;
             grant usage on schema public to {role};
             grant select, insert, update, delete on bookings to {role};
             grant usage on all sequences in schema public to {role};"
        ))
        .await
        .unwrap();
    let app = connect(&format!("{} user={role}", db.url)).await;
    let denied = app.query("select * from rowcast.events", &[]).await;
    assert!(denied.is_err(), "the app role must not read the log");
    app.query_one(NEW_BOOKING, &[])
        .await
        .expect("insert as app role");
    app.execute("update bookings set status = 'CONFIRMED'", &[])
        .await
        .expect("update as app role");
    assert_eq!(captured(&db).await, 2);
    drop(app);
    admin
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .ok();
}

#[tokio::test]
async fn watch_refuses_missing_tables_columns_and_injection_clearly() {
    let db = TestDb::demo().await;
    let client = db.client().await;
    let err = client
        .execute("select rowcast.watch('public.nope')", &[])
        .await
        .unwrap_err();
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("does not exist"), "{message}");
    client
        .batch_execute("create table y (id int primary key)")
        .await
        .unwrap();
    let err = client
        .execute("select rowcast.watch('x; drop table y')", &[])
        .await
        .unwrap_err();
    assert!(err.as_db_error().is_some(), "{err}");
    client
        .query_one("select count(*) from y", &[])
        .await
        .expect("table y survives");
    let err = client
        .execute(
            "select rowcast.watch('bookings', routes => '{\"nope\": \"user\"}')",
            &[],
        )
        .await
        .unwrap_err();
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(message.contains("\"nope\""), "{message}");
    let err = client
        .execute("select rowcast.watch('bookings', wake => 'sometimes')", &[])
        .await
        .unwrap_err();
    assert!(
        err.as_db_error().unwrap().message().contains("wake"),
        "{err}"
    );
    let err = client
        .execute("select rowcast.watch('rowcast.events')", &[])
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("system schema")
    );
}

#[tokio::test]
async fn unwatch_removes_triggers_and_registration() {
    let db = TestDb::demo().await;
    let client = db.client().await;
    let was: bool = client
        .query_one("select rowcast.unwatch('bookings')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(was);
    client.query_one(NEW_BOOKING, &[]).await.unwrap();
    assert_eq!(captured(&db).await, 0);
    let watched: i64 = client
        .query_one(
            "select count(*) from rowcast.watched where table_name = 'bookings'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(watched, 0);
    let triggers: i64 = client
        .query_one(
            "select count(*) from pg_trigger where tgrelid = 'bookings'::regclass and tgname like 'rowcast%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);
}

#[tokio::test]
async fn poll_mode_tables_send_no_notify_but_are_captured() {
    let db = TestDb::demo().await;
    let client = db.client().await;
    client
        .batch_execute("select rowcast.watch('bookings', wake => 'poll')")
        .await
        .unwrap();
    // NOTIFY makes PREPARE TRANSACTION fail; a poll-mode write does not NOTIFY, so a
    // listener on the wake channel hears nothing.
    let listener = rowcast::db::Listener::connect(
        &rowcast::db::pg_config(&db.url).unwrap(),
        &["rowcast_wake"],
    )
    .await
    .unwrap();
    client.query_one(NEW_BOOKING, &[]).await.unwrap();
    let woke =
        tokio::time::timeout(std::time::Duration::from_millis(300), listener.notified()).await;
    assert!(woke.is_err(), "a poll-mode table must not NOTIFY");
    assert_eq!(captured(&db).await, 1);
}

/// Sequences what is committed and returns `(op, topics)` of the log in position order.
async fn sequenced_topics(client: &tokio_postgres::Client) -> Vec<(String, Vec<String>)> {
    client
        .query_one("select rowcast.sequence()", &[])
        .await
        .unwrap();
    client
        .query(
            "select e.op, l.topics from rowcast.log l join rowcast.events e on e.id = l.event_id \
             order by l.pos",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

fn owned(topics: &[&str]) -> Vec<String> {
    topics.iter().map(|t| t.to_string()).collect()
}

#[tokio::test]
async fn only_the_service_role_may_sequence_or_see_what_waits_for_positions() {
    let db = TestDb::demo().await;
    let admin = db.client().await;
    let role = format!("{}_nosvc", db.name);
    admin
        .batch_execute(&format!(
            "drop role if exists {role}; create role {role} login;
             grant usage on schema rowcast to {role};"
        ))
        .await
        .unwrap();
    admin.query_one(NEW_BOOKING, &[]).await.unwrap();
    let other = connect(&format!("{} user={role}", db.url)).await;
    for sql in [
        "select * from rowcast.sequence_step(10)",
        "select * from rowcast.unsequenced()",
    ] {
        let err = other
            .query(sql, &[])
            .await
            .expect_err("a role without the service grant may not sequence");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}"
        );
    }
    drop(other);
    admin
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .ok();
}

#[tokio::test]
async fn functions_of_another_build_are_refused_and_migrate_reinstalls_them_keeping_data() {
    let db = TestDb::demo().await;
    let mut client = db.client().await;
    client
        .batch_execute(
            "insert into bookings (id, client_id, provider_id, starts_at, ends_at, price)
                 values (1, 7, 3, '2026-11-22T10:00:00Z', '2026-11-22T11:00:00Z', 10);
             select rowcast.sequence();
             update rowcast.functions set checksum = 'another build';",
        )
        .await
        .unwrap();
    let err = rowcast::migrate::check(&client).await.unwrap_err();
    assert!(
        matches!(err, rowcast::migrate::MigrateError::FunctionsDiffer),
        "{err}"
    );
    assert!(err.to_string().contains("run `rowcast migrate`"), "{err}");
    let applied = rowcast::migrate::migrate(&mut client).await.unwrap();
    assert!(applied.is_empty(), "{applied:?}");
    rowcast::migrate::check(&client).await.unwrap();
    // Registrations and the log are untouched, and capture goes on.
    client
        .batch_execute(
            "update bookings set status = 'CONFIRMED' where id = 1;
             select rowcast.sequence();",
        )
        .await
        .unwrap();
    assert_eq!(captured(&db).await, 2);
    let watched: i64 = client
        .query_one(
            "select count(*) from rowcast.watched where problem is null",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(watched, 7);
}

#[tokio::test]
async fn events_are_routed_as_their_table_was_watched_when_they_were_captured() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "create table tickets (id int primary key, owner_id int, team_id int);
             select rowcast.watch('tickets', routes => '{\"owner_id\": \"user\"}');
             insert into tickets values (1, 7, 3);
             select rowcast.watch('tickets', routes => '{\"team_id\": \"team\"}');
             insert into tickets values (2, 7, 3);",
        )
        .await
        .unwrap();
    // Nothing was sequenced in between: the first event keeps its first routing anyway.
    assert_eq!(
        sequenced_topics(&client).await,
        vec![
            ("INSERT".into(), owned(&["tickets", "tickets:1", "user:7"])),
            ("INSERT".into(), owned(&["tickets", "tickets:2", "team:3"])),
        ]
    );
}

#[tokio::test]
async fn watch_refuses_to_exclude_a_column_a_topic_is_made_of() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute("create table tickets (id int primary key, owner_id int)")
        .await
        .unwrap();
    for (sql, part) in [
        (
            "select rowcast.watch('tickets', routes => '{\"owner_id\": \"user\"}', exclude => array['owner_id'])",
            "a routing topic",
        ),
        (
            "select rowcast.watch('tickets', exclude => array['id'])",
            "the row topic",
        ),
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        let message = err.as_db_error().unwrap().message().to_string();
        assert!(
            message.contains("is excluded") && message.contains(part),
            "{message}"
        );
    }
    let watched: i64 = client
        .query_one("select count(*) from rowcast.watched", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(watched, 0);
}

#[tokio::test]
async fn watching_a_table_again_after_unwatch_routes_its_events_again() {
    let db = TestDb::demo().await;
    let client = db.client().await;
    client
        .batch_execute(
            "create table notes (id int primary key, body text);
             select rowcast.watch('notes');
             select rowcast.unwatch('notes');
             select rowcast.watch('notes');
             insert into notes values (1, 'back');",
        )
        .await
        .unwrap();
    client
        .batch_execute("select rowcast.sequence()")
        .await
        .unwrap();
    let topics: Vec<String> = client
        .query_one(
            "select l.topics from rowcast.log l join rowcast.events e on e.txid = l.txid and e.id = l.event_id
             where e.relid = 'notes'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(topics, vec!["notes".to_string(), "notes:1".to_string()]);
}
