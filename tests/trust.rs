//! The threat model (docs/threat-model.md) tried as an attacker would: table owners,
//! tenant admins and writers against the SQL surface, with the real service delivering.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::support::service::ServiceProcess;
use crate::support::{TestApp, TestDb, connect};

/// A login role of this test's own, dropped (with what it owns) at the end.
struct Role {
    name: String,
    url: String,
    admin_url: String,
}

impl Role {
    /// Creates `<db>_<suffix>`, with `create` on schema public, and runs `grants` (with
    /// `{role}` replaced by its name) as the installer.
    async fn new(db: &TestDb, suffix: &str, grants: &str) -> Role {
        let name = format!("{}_{suffix}", db.name);
        let installer = db.client().await;
        installer
            .batch_execute(&format!(
                "drop role if exists {name}; create role {name} login;
                 grant create, usage on schema public to {name};
                 {}",
                grants.replace("{role}", &name)
            ))
            .await
            .unwrap();
        Role {
            url: format!("{} user={name}", db.url),
            admin_url: db.url.clone(),
            name,
        }
    }

    async fn client(&self) -> Client {
        connect(&self.url).await
    }

    async fn drop_all(self) {
        connect(&self.admin_url)
            .await
            .batch_execute(&format!(
                "drop owned by {0} cascade; drop role {0}",
                self.name
            ))
            .await
            .unwrap();
    }
}

fn denied(result: Result<impl std::fmt::Debug, tokio_postgres::Error>, what: &str) -> String {
    let err = result.expect_err(&format!("{what} must be refused"));
    err.as_db_error()
        .unwrap_or_else(|| panic!("{what}: {err:?}"))
        .message()
        .to_string()
}

/// Sequences what is committed and returns the log as (table, op, topics, data).
async fn sequenced(installer: &Client) -> Vec<(String, String, Vec<String>, Value)> {
    installer
        .execute("select rowcast.sequence()", &[])
        .await
        .unwrap();
    installer
        .query(
            "select coalesce(r.table_name, ''), e.op, l.topics, coalesce(e.data, 'null') \
             from rowcast.log l join rowcast.events e on e.txid = l.txid and e.id = l.event_id \
             left join rowcast.routings r on r.id = l.routing_id order by l.pos",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test]
async fn a_user_types_cast_to_json_runs_with_the_writers_rights_never_rowcasts() {
    let db = TestDb::migrated().await;
    let owner = Role::new(&db, "caster", "select rowcast.grant_admin('{role}');").await;
    let client = owner.client().await;
    client
        .batch_execute(
            "create table proof (who text, super boolean);
             create type mood as enum ('ok', 'bad');
             create function mood_json(m mood) returns json language plpgsql as $$
             begin
                 insert into public.proof select current_user, r.rolsuper from pg_roles r where r.rolname = current_user;
                 return to_json(m::text);
             end $$;
             create cast (mood as json) with function mood_json(mood);
             create table mine (id int primary key, m mood);
             select rowcast.watch('mine');
             insert into mine values (1, 'ok');
             update mine set m = 'bad';",
        )
        .await
        .unwrap();
    let installer = db.client().await;
    let log = sequenced(&installer).await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(
        log[0].3,
        json!({"id": 1, "m": "ok"}),
        "the cast still shapes the row"
    );
    let proof: Vec<(String, bool)> = installer
        .query("select who, super from proof", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!proof.is_empty(), "the cast ran");
    assert!(
        proof.iter().all(|(who, sup)| who == &owner.name && !sup),
        "user code ran with other rights: {proof:?}"
    );
    // The service's side (sequencing, reading the log) never ran it.
    let calls = proof.len();
    installer
        .query("select * from rowcast.sequence_step(10)", &[])
        .await
        .unwrap();
    // What the service reads of the log after a batch.
    installer
        .query(
            "select l.pos, l.topics, e.data::text, e.old::text,
                    rowcast.left_key(r, l.kept, e.data, e.old)
             from rowcast.log l join rowcast.events e on e.txid = l.txid and e.id = l.event_id
             left join rowcast.routings r on r.id = l.routing_id",
            &[],
        )
        .await
        .unwrap();
    let after: i64 = installer
        .query_one("select count(*) from proof", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after as usize, calls);
    drop(client);
    owner.drop_all().await;
}

#[tokio::test]
async fn a_tenant_admin_reads_and_changes_nothing_of_another_tenant() {
    let db = TestDb::migrated().await;
    let a = Role::new(&db, "tenant_a", "select rowcast.grant_admin('{role}');").await;
    let b = Role::new(&db, "tenant_b", "select rowcast.grant_admin('{role}');").await;
    let as_b = b.client().await;
    as_b.batch_execute(
        "create table b_people (id int primary key, client_id int, ssn text);
         select rowcast.watch('b_people', routes => '{\"client_id\": \"user\"}', exclude => array['ssn']);
         insert into b_people values (1, 7, '123-45-6789');
         create table b_notes (id int primary key, body text);
         select rowcast.watch('b_notes');
         insert into b_notes values (1, 'private');",
    )
    .await
    .unwrap();
    let as_a = a.client().await;
    as_a.batch_execute(
        "create table a_things (id int primary key); select rowcast.watch('a_things');
         insert into a_things values (1);",
    )
    .await
    .unwrap();
    let installer = db.client().await;
    let before = sequenced(&installer).await;
    assert_eq!(before.len(), 3);

    for sql in [
        "select * from rowcast.events",
        "select * from rowcast.log",
        "select * from rowcast.routings",
        "select * from rowcast.mappings",
        "select * from rowcast.sequencer",
        "update rowcast.routings set route_topics = '{user}'",
        "delete from rowcast.routings",
        "insert into rowcast.routings (table_name, topic, key_columns, route_columns, route_topics) \
         values ('b_notes', 'x', '{}', '{body}', '{user}')",
        "insert into rowcast.mappings (relid, kind, fields) values ('b_notes'::regclass, 'booking', '{}')",
        "select rowcast.sequence()",
        "select * from rowcast.sequence_step(10)",
        "select * from rowcast.unsequenced()",
        "select rowcast.prune(0, '0s', 10)",
    ] {
        let message = denied(as_a.execute(sql, &[]).await, sql);
        assert!(message.contains("permission denied"), "{sql}: {message}");
    }
    for sql in [
        "select rowcast.watch('b_notes', routes => '{\"body\": \"user\"}')",
        "select rowcast.watch('b_people')",
        "select rowcast.unwatch('b_people')",
        "drop trigger rowcast_capture on b_people",
        "select rowcast.arm_triggers('b_people', 1, 'notify', '{}')",
    ] {
        let message = denied(as_a.execute(sql, &[]).await, sql);
        assert!(
            message.contains("owner") || message.contains("permission denied"),
            "{sql}: {message}"
        );
    }
    // A may not even register B's table: a registration names settings, and an
    // identical earlier one is reused, so it would tell A what B chose.
    let message = denied(
        as_a.query_one(
            "select routing_id from rowcast.register('b_people', topic => 'user', routes => '{\"ssn\": \"leak\"}')",
            &[],
        )
        .await,
        "registering another tenant's table",
    );
    assert!(message.contains("only the owner"), "{message}");
    // A registration of B's table that B's trigger does not name (here the installer's)
    // is inert: not even a writer of B's table can use it.
    let squat: i32 = db
        .client()
        .await
        .query_one(
            "select routing_id from rowcast.register('b_people', topic => 'user', routes => '{\"ssn\": \"leak\"}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    as_b.execute(
        "insert into rowcast.events (relid, op, data, routing_id) \
         values ('b_people'::regclass, 'INSERT', '{\"id\": 9, \"ssn\": \"x\"}', $1)",
        &[&squat],
    )
    .await
    .unwrap();
    let problem: Option<String> = as_a
        .query_one(
            "select rowcast.registration_problem('b_people'::regclass, array['1', 'b_people'::regclass::oid::text, 'notify'])",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        problem, None,
        "another tenant's registration is not described"
    );
    // A forged event for B's table is refused by the log's policy.
    let message = denied(
        as_a.execute(
            "insert into rowcast.events (relid, op, data, routing_id) \
             values ('b_people'::regclass, 'INSERT', '{\"client_id\": 7}', 1)",
            &[],
        )
        .await,
        "a forged event",
    );
    assert!(message.contains("row-level security"), "{message}");

    // A sees its own tables and events only.
    let watched: Vec<String> = as_a
        .query("select \"table\"::text from rowcast.watched", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(watched, vec!["a_things".to_string()]);
    let captured: Vec<String> = as_a
        .query("select table_name from rowcast.captured", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(captured, vec!["a_things".to_string()]);

    // B's capture is as B set it: ssn excluded, routed by client_id.
    as_b.execute("update b_people set client_id = 8", &[])
        .await
        .unwrap();
    let after = sequenced(&installer).await;
    assert_eq!(after[3].2, Vec::<String>::new(), "{after:?}");
    let last = after.last().unwrap();
    assert_eq!(last.0, "b_people");
    assert_eq!(last.2, vec!["b_people", "b_people:1", "user:8", "user:7"]);
    assert!(last.3.get("ssn").is_none(), "{last:?}");
    let b_sees: i64 = as_b
        .query_one("select count(*) from rowcast.captured", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(b_sees, 4);
    drop((as_a, as_b));
    a.drop_all().await;
    b.drop_all().await;
}

#[tokio::test]
async fn a_hand_made_capture_trigger_cannot_publish_as_another_table() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings", "user:7"], None).await;
    let attacker = Role::new(&db, "forger", "select rowcast.grant_admin('{role}');").await;
    let installer = db.client().await;
    let (reg, relid): (i32, String) = {
        let row = installer
            .query_one(
                "select registration, \"table\"::oid::text from rowcast.watched \
                 where \"table\" = 'bookings'::regclass",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let as_attacker = attacker.client().await;
    as_attacker
        .batch_execute(&format!(
            "create table mine (id int primary key, client_id int, status text);
             create trigger rowcast_capture after insert or update or delete on mine
                 for each row execute function rowcast.capture('{reg}', '{relid}', 'notify');
             insert into mine values (1, 7, 'CONFIRMED');"
        ))
        .await
        .expect("the attacker's own table accepts its own trigger");
    // The older form of the attack (relid, name, registration, mapping, wake) only
    // breaks the attacker's own writes.
    as_attacker
        .batch_execute(&format!(
            "create table other (id int primary key, client_id int);
             create trigger rowcast_capture after insert on other
                 for each row execute function rowcast.capture('{relid}', 'bookings', '{reg}', '', 'notify');"
        ))
        .await
        .unwrap();
    assert!(
        as_attacker
            .execute("insert into other values (1, 7)", &[])
            .await
            .is_err()
    );
    let problem: String = installer
        .query_one(
            "select problem from rowcast.watched where \"table\" = 'mine'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(problem.contains("another table"), "{problem}");

    // The next real booking is the first thing the subscriber sees.
    installer
        .query_one(crate::pipeline::NEW_BOOKING, &[&7i64, &3i64])
        .await
        .unwrap();
    let events = ws.events(1).await;
    assert_eq!(events[0]["table"], "bookings");
    assert_eq!(events[0]["pos"], 2, "the forged event had position 1");
    ws.expect_silence(Duration::from_millis(300)).await;
    let forged: Vec<String> = installer
        .query_one("select topics from rowcast.log where pos = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(forged.is_empty(), "{forged:?}");
    app.stop().await;
    drop(as_attacker);
    attacker.drop_all().await;
}

#[tokio::test]
async fn writers_cause_events_only_for_operations_they_may_do() {
    let db = TestDb::migrated().await;
    let installer = db.client().await;
    installer
        .batch_execute(
            "create table t (id int primary key, a text, b text);
             select rowcast.watch('t');
             insert into t values (1, 'x', 'y');",
        )
        .await
        .unwrap();
    let writer = Role::new(
        &db,
        "colwriter",
        "grant select on t to {role}; grant update (a) on t to {role};",
    )
    .await;
    let client = writer.client().await;
    client
        .execute("update t set a = 'z' where id = 1", &[])
        .await
        .expect("a column-level privilege is enough to write, and so to capture");
    for op in ["INSERT", "DELETE", "TRUNCATE"] {
        let sql = format!(
            "insert into rowcast.events (relid, op, data) values ('t'::regclass, '{op}', '{{}}')"
        );
        let message = denied(client.execute(&sql, &[]).await, op);
        assert!(message.contains("row-level security"), "{op}: {message}");
    }
    for sql in [
        "insert into rowcast.events (relid, op, data, ts) values ('t'::regclass, 'UPDATE', '{}', now())",
        "insert into rowcast.events (relid, op, data, txid) values ('t'::regclass, 'UPDATE', '{}', '1')",
        "insert into rowcast.events (relid, op, data, id) values ('t'::regclass, 'UPDATE', '{}', 1)",
    ] {
        let message = denied(client.execute(sql, &[]).await, sql);
        assert!(message.contains("permission denied"), "{sql}: {message}");
    }
    let log = sequenced(&installer).await;
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].3, json!({"id": 1, "a": "z", "b": "y"}));
    drop(client);
    writer.drop_all().await;
}

#[tokio::test]
async fn writes_through_a_partitioned_table_and_cascades_are_captured_as_the_watched_table() {
    let db = TestDb::migrated().await;
    let installer = db.client().await;
    installer
        .batch_execute(
            "create table parents (id int primary key);
             create table kids (id int, parent_id int references parents on delete cascade,
                                region text, secret text, primary key (id, region)) partition by list (region);
             create table kids_eu partition of kids for values in ('eu');
             create table kids_us (secret text, region text not null, parent_id int, id int not null);
             alter table kids attach partition kids_us for values in ('us');
             select rowcast.watch('kids', routes => '{\"parent_id\": \"parent\"}', exclude => array['secret']);
             create table notes (id int primary key, parent_id int references parents on delete cascade);
             select rowcast.watch('notes');
             create view notes_v as select * from notes;
             insert into parents values (1);",
        )
        .await
        .unwrap();
    let writer = Role::new(
        &db,
        "kidwriter",
        "grant select, insert, update, delete on kids to {role}; grant select, delete on parents to {role};
         grant select, insert on notes_v to {role};",
    )
    .await;
    let client = writer.client().await;
    client
        .batch_execute(
            "insert into kids values (1, 1, 'eu', 's1'), (2, 1, 'us', 's2');
             insert into notes_v values (1, 1);",
        )
        .await
        .expect("a writer with rights on the partitioned table and the view only");
    let mover = Role::new(&db, "kidmover", "grant select, update on kids to {role};").await;
    mover
        .client()
        .await
        .execute("update kids set region = 'us' where id = 1", &[])
        .await
        .expect("a row moved between partitions by a writer with only update");
    client
        .execute("delete from parents where id = 1", &[])
        .await
        .expect("a cascade into a watched table the writer has no rights on");
    let log = sequenced(&installer).await;
    let summary: Vec<(String, String)> = log.iter().map(|e| (e.0.clone(), e.1.clone())).collect();
    assert_eq!(
        summary,
        [
            ("kids", "INSERT"),
            ("kids", "INSERT"),
            ("notes", "INSERT"),
            ("kids", "DELETE"),
            ("kids", "INSERT"),
            ("kids", "DELETE"),
            ("kids", "DELETE"),
            ("notes", "DELETE"),
        ]
        .map(|(t, o)| (t.to_string(), o.to_string()))
    );
    // A partition with other column numbers still routes and excludes by name.
    assert_eq!(log[1].2, vec!["kids", "kids:2:us", "parent:1"]);
    assert_eq!(log[1].3, json!({"id": 2, "parent_id": 1, "region": "us"}));
    assert!(log.iter().all(|e| e.3.get("secret").is_none()), "{log:?}");
    drop(client);
    writer.drop_all().await;
    mover.drop_all().await;
}

#[tokio::test]
async fn a_renamed_excluded_column_stays_excluded_even_when_another_takes_its_name() {
    let db = TestDb::migrated().await;
    let installer = db.client().await;
    installer
        .batch_execute(
            "create table cards (id int primary key, holder text, card text);
             select rowcast.watch('cards', exclude => array['card']);
             begin;
             insert into cards values (1, 'ann', '4111-1');
             alter table cards rename column card to card_number;
             insert into cards values (2, 'bob', '4111-2');
             commit;
             alter table cards rename column holder to card;
             insert into cards values (3, 'cyd', '4111-3');
             update cards set card_number = '4111-4' where id = 3;
             update cards set card = 'dee' where id = 3;
             alter table cards drop column card_number;
             alter table cards add column card_number text;
             insert into cards values (4, 'eve', '4111-5');
             alter table cards drop column card_number, add column note text;
             alter table cards rename to wallets;
             alter table wallets add column card_number text;
             insert into wallets values (5, 'fay', 'n', '4111-6');",
        )
        .await
        .unwrap();
    let log = sequenced(&installer).await;
    let rows: Vec<Value> = log.iter().map(|e| e.3.clone()).collect();
    assert_eq!(
        rows,
        vec![
            json!({"id": 1, "holder": "ann"}),
            json!({"id": 2, "holder": "bob"}),
            json!({"id": 3, "card": "cyd"}),
            json!({"id": 3, "card": "dee"}),
            json!({"id": 4, "card": "eve"}),
            json!({"id": 5, "card": "fay", "note": "n"}),
        ],
        "the update of only the excluded column yields nothing"
    );
    let stored: i64 = installer
        .query_one(
            "select count(*) from rowcast.events where data::text like '%4111%' or old::text like '%4111%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "a card number reached the log");
    let exclude: Vec<String> = installer
        .query_one(
            "select exclude from rowcast.watched where \"table\" = 'wallets'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(exclude, vec!["card_number"]);
}

#[tokio::test]
async fn a_table_named_like_a_routed_topic_publishes_on_its_own_escaped_topic() {
    let db = TestDb::migrated().await;
    let installer = db.client().await;
    installer
        .batch_execute(
            r#"create table "user:7" (id int primary key);
               create schema "b.c";
               create table "b.c"."d,e f" (id int primary key);
               create table orders (id int primary key, client_id int);
               select rowcast.watch('"user:7"');
               select rowcast.watch('"b.c"."d,e f"');
               select rowcast.watch('orders', routes => '{"client_id": "user"}');"#,
        )
        .await
        .unwrap();
    let app = TestApp::start(&db).await;
    let mut user7 = app.ws().await;
    user7.subscribe(&["user:7"], None).await;
    let mut table = app.ws().await;
    table.subscribe(&["user%3A7"], None).await;
    installer
        .batch_execute(
            r#"insert into "user:7" values (1); insert into "b.c"."d,e f" values (1);
               insert into orders values (1, 7);"#,
        )
        .await
        .unwrap();
    let got = user7.events(1).await;
    assert_eq!(got[0]["table"], "orders", "user:7 gets only routed events");
    let got = table.events(1).await;
    assert_eq!(got[0]["table"], "user:7");
    assert_eq!(got[0]["topics"], json!(["user%3A7", "user%3A7:1"]));
    let topics: Vec<String> = installer
        .query_one("select topics from rowcast.log where pos = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(topics, vec!["b%2Ec.d%2Ce%20f", "b%2Ec.d%2Ce%20f:1"]);
    user7.expect_silence(Duration::from_millis(200)).await;

    // A table renamed the way the event trigger did not see it still holds its topic.
    installer
        .batch_execute("alter index orders rename to purchases")
        .await
        .unwrap();
    let name: String = installer
        .query_one(
            "select table_name from rowcast.watched where \"table\" = 'purchases'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        name, "purchases",
        "ALTER INDEX ... RENAME on a table is followed"
    );
    // Renamed without the event trigger: the table never publishes on its old name,
    // which another table may take.
    installer
        .batch_execute(
            "alter event trigger rowcast_follow_ddl disable;
             alter table purchases rename to orders_v2;
             alter event trigger rowcast_follow_ddl enable;
             create table purchases (id int primary key);
             select rowcast.watch('purchases');
             insert into orders_v2 values (2, 7);
             insert into purchases values (1);",
        )
        .await
        .unwrap();
    db.wait_sequenced(5).await;
    let topics: Vec<Vec<String>> = installer
        .query(
            "select topics from rowcast.log where pos > 3 order by pos",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        topics,
        vec![vec![], vec!["purchases".to_string(), "purchases:1".into()]]
    );
    let problem: String = installer
        .query_one(
            "select problem from rowcast.watched where \"table\" = 'orders_v2'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(problem.contains("delivered to nobody"), "{problem}");
    let escaped: String = installer
        .query_one(
            "select rowcast.topic_escape('a' || chr(8192) || 'b c')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(escaped, "a%E2%80%80b%20c");

    for (sql, what) in [
        (
            "select rowcast.watch('orders_v2', topic => 'user:8')",
            "topic",
        ),
        ("select rowcast.watch('orders_v2', topic => 'b.c')", "topic"),
        (
            "select rowcast.watch('orders_v2', routes => '{\"client_id\": \"a:b\"}')",
            "routes",
        ),
        (
            "select rowcast.watch('orders_v2', routes => '{\"client_id\": \"*\"}')",
            "routes",
        ),
    ] {
        let message = denied(installer.execute(sql, &[]).await, sql);
        assert!(
            message.contains(what) && message.contains("colons"),
            "{message}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn renaming_a_routed_column_a_mapped_column_or_the_table_keeps_delivery_as_it_was() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["user:7"], None).await;
    let installer = db.client().await;
    installer
        .batch_execute(
            "alter table bookings rename column client_id to customer_id;
             alter table bookings rename column status to state;
             alter table bookings rename to reservations;",
        )
        .await
        .unwrap();
    let problems = rowcast::capture::registry::problems(&installer)
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    installer
        .batch_execute(
            "insert into reservations (id, customer_id, provider_id, starts_at, ends_at, price)
                 values (1, 7, 3, '2026-11-22T10:00:00Z', '2026-11-22T11:00:00Z', 10);
             update reservations set state = 'CONFIRMED' where id = 1;",
        )
        .await
        .unwrap();
    let events = ws.events(2).await;
    assert_eq!(events[0]["event"], "booking.created");
    assert_eq!(events[1]["event"], "booking.accepted");
    assert_eq!(events[0]["table"], "reservations");
    assert_eq!(events[0]["topics"][0], "reservations");
    assert!(
        events[0]["topics"]
            .as_array()
            .unwrap()
            .contains(&json!("user:7"))
    );
    let routes: Value = installer
        .query_one(
            "select routes from rowcast.watched where table_name = 'reservations'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        routes,
        json!({"customer_id": "user", "provider_id": "provider"})
    );
    app.stop().await;
}

#[tokio::test]
async fn a_dropped_routing_column_is_shown_logged_once_and_counted() {
    let db = TestDb::demo().await;
    let installer = db.client().await;
    installer
        .batch_execute("alter table payouts drop column provider_id")
        .await
        .unwrap();
    let problem: String = installer
        .query_one(
            "select problem from rowcast.watched where table_name = 'payouts'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        problem.contains(r#"routing column "provider_id" was dropped"#),
        "{problem}"
    );
    let service = ServiceProcess::start(&db.url, None).await;
    let metrics = reqwest::get(format!("http://{}/metrics", service.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("rowcast_registration_problems 1"),
        "{metrics}"
    );
    let log = service.log();
    assert_eq!(
        log.matches("registration no longer fits the table").count(),
        1,
        "{log}"
    );
    service.terminate().await;
}

#[tokio::test]
async fn installed_by_a_database_owner_renames_are_reported_and_exclusions_still_hold() {
    let db = TestDb::empty().await;
    let owner = Role::new(&db, "dbowner", "").await;
    db.client()
        .await
        .batch_execute(&format!(
            "alter database {} owner to {}",
            db.name, owner.name
        ))
        .await
        .unwrap();
    let mut client = owner.client().await;
    rowcast::migrate::migrate(&mut client)
        .await
        .expect("a database owner may install rowcast");
    client
        .batch_execute(
            "create table orders (id int primary key, client_id int, card text);
             select rowcast.watch('orders', routes => '{\"client_id\": \"user\"}', exclude => array['card']);
             alter table orders rename column client_id to customer_id;
             alter table orders rename column card to card_no;
             insert into orders values (1, 7, '4111');",
        )
        .await
        .unwrap();
    let problems = rowcast::capture::registry::problems(&client).await.unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .problem
            .contains(r#"routing column "client_id" was renamed to "customer_id""#),
        "{problems:?}"
    );
    let log = sequenced(&client).await;
    assert_eq!(log[0].3, json!({"id": 1, "customer_id": 7}));
    // Watching again follows the rename.
    client
        .batch_execute(
            "select rowcast.watch('orders', routes => '{\"customer_id\": \"user\"}', exclude => array['card_no']);
             update orders set customer_id = 8;",
        )
        .await
        .unwrap();
    assert!(
        rowcast::capture::registry::problems(&client)
            .await
            .unwrap()
            .is_empty()
    );
    let log = sequenced(&client).await;
    assert_eq!(log[1].2, vec!["orders", "orders:1", "user:8", "user:7"]);
    drop(client);
    connect(&owner.admin_url)
        .await
        .batch_execute(&format!("alter database {} owner to postgres", db.name))
        .await
        .unwrap();
    owner.drop_all().await;
}

#[tokio::test]
async fn a_prisma_shaped_table_keeps_its_topics_and_exclusions_through_an_orm_migration() {
    let db = TestDb::migrated().await;
    let installer = db.client().await;
    installer
        .batch_execute(
            r#"create type "BookingStatus" as enum ('pending', 'accepted', 'awaiting_host');
               create table "Booking" ("id" text primary key, "userId" int, "status" "BookingStatus",
                                       "cardToken" text, "startTime" timestamp(3));
               select rowcast.watch('"Booking"', routes => '{"userId": "user"}', exclude => array['cardToken']);"#,
        )
        .await
        .unwrap();
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["user:7"], None).await;
    installer
        .batch_execute(
            r#"insert into "Booking" values ('ck1', 7, 'pending', 'tok_1', '2026-12-02 10:00:00.123');
               begin;
               alter table "Booking" rename column "userId" to "ownerId";
               alter table "Booking" rename column "cardToken" to "paymentToken";
               alter table "Booking" rename to "Reservation";
               commit;
               update "Reservation" set "status" = 'awaiting_host', "paymentToken" = 'tok_2' where "id" = 'ck1';"#,
        )
        .await
        .unwrap();
    let events = ws.events(2).await;
    assert_eq!(events[0]["table"], "Booking");
    assert_eq!(
        events[0]["data"],
        json!({"id": "ck1", "userId": 7, "status": "pending", "startTime": "2026-12-02T10:00:00.123"})
    );
    assert_eq!(events[1]["table"], "Reservation");
    assert_eq!(
        events[1]["topics"],
        json!(["Reservation", "Reservation:ck1", "user:7"])
    );
    assert_eq!(
        events[1]["data"],
        json!({"id": "ck1", "ownerId": 7, "status": "awaiting_host", "startTime": "2026-12-02T10:00:00.123"})
    );
    assert_eq!(events[1]["old"], json!({"status": "pending"}));
    let watched = installer
        .query_one(
            "select routes, exclude, problem from rowcast.watched where table_name = 'Reservation'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(watched.get::<_, Value>(0), json!({"ownerId": "user"}));
    assert_eq!(watched.get::<_, Vec<String>>(1), vec!["paymentToken"]);
    assert_eq!(watched.get::<_, Option<String>>(2), None);
    app.stop().await;
}

#[tokio::test]
async fn no_lock_or_old_registration_lets_a_role_forge_what_it_did_not_write() {
    let db = TestDb::migrated().await;
    let installer = db.client().await;
    installer
        .batch_execute(
            "create table accounts (id int primary key, client_id int);
             select rowcast.watch('accounts', routes => '{\"client_id\": \"user\"}');
             insert into accounts values (1, 7);",
        )
        .await
        .unwrap();
    let old_reg: String = installer
        .query_one(
            "select (rowcast.capture_args('accounts'::regclass))[1]",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    installer
        .batch_execute("select rowcast.watch('accounts')")
        .await
        .unwrap();
    let mallory = Role::new(&db, "mallory", "").await;
    let inserter = Role::new(&db, "inserter", "grant insert on accounts to {role};").await;
    let forge = |op: &str, reg: &str| {
        format!(
            "insert into rowcast.events (relid, op, data, routing_id) \
             values ('accounts'::regclass, '{op}', '{{\"id\": 1, \"client_id\": 9}}', {reg})"
        )
    };
    let as_mallory = mallory.client().await;
    as_mallory
        .batch_execute("begin; prepare p as delete from accounts;")
        .await
        .expect("preparing takes the table's lock without the right to run it");
    let message = denied(
        as_mallory.execute(&forge("DELETE", &old_reg), &[]).await,
        "an event under a parse-time lock",
    );
    assert!(message.contains("row-level security"), "{message}");
    let as_inserter = inserter.client().await;
    as_inserter
        .batch_execute(
            "begin; lock table accounts in row exclusive mode; insert into accounts values (2, 8);",
        )
        .await
        .unwrap();
    for op in ["DELETE", "UPDATE"] {
        let message = denied(
            as_inserter.execute(&forge(op, &old_reg), &[]).await,
            "an operation the role did not do",
        );
        assert!(message.contains("row-level security"), "{op}: {message}");
        as_inserter
            .batch_execute("rollback; begin; insert into accounts values (2, 8);")
            .await
            .unwrap();
    }
    // A registration the table's trigger no longer names routes nothing captured since.
    as_inserter
        .execute(&forge("INSERT", &old_reg), &[])
        .await
        .expect("an insert event by a role that inserted");
    as_inserter.batch_execute("commit").await.unwrap();
    // Writes work under row_security = off, as pg_dump's restore sets it.
    as_inserter
        .batch_execute("set row_security = off; insert into accounts values (3, 9);")
        .await
        .expect("a restore-style write");
    let log = sequenced(&installer).await;
    let topics: Vec<Vec<String>> = log.iter().map(|e| e.2.clone()).collect();
    assert_eq!(
        topics,
        vec![
            vec!["accounts".to_string(), "accounts:1".into(), "user:7".into()],
            vec!["accounts".to_string(), "accounts:2".into()],
            vec![],
            vec!["accounts".to_string(), "accounts:3".into()],
        ]
    );
    drop((as_mallory, as_inserter));
    mallory.drop_all().await;
    inserter.drop_all().await;
}

/// The insert policy's one check (`rowcast.may_append`) sets no search_path, so it names
/// every function, operator and type with its schema: a role that shadows them on the
/// search path gets no forged event past the check, and a writer whose search path puts
/// that role's schema first never runs the role's code, in the capture trigger either
/// (on its usual path and on the one that changes the writer's settings and puts them
/// back).
#[tokio::test]
async fn functions_and_operators_shadowing_capture_and_the_append_check_are_never_called() {
    let db = TestDb::migrated().await;
    let installer = db.client().await;
    installer
        .batch_execute(
            "create table accounts (id int primary key, client_id int, secret text, note text,
                                    seen timestamptz);
             select rowcast.watch('accounts', exclude => '{secret}');
             insert into accounts values (1, 7);",
        )
        .await
        .unwrap();
    let mallory = Role::new(&db, "shadower", "").await;
    let writer = Role::new(
        &db,
        "app",
        "grant select, insert, update, delete on accounts to {role};",
    )
    .await;
    let as_mallory = mallory.client().await;
    // Every function and operator the check uses, with the argument types it calls
    // them with, in schema public, each raising when called.
    let mut traps = String::from(
        "create function public.trapped() returns boolean language plpgsql as $$
         begin raise exception 'shadow ran as %', current_user; end $$;",
    );
    for (name, args, returns) in [
        ("has_any_column_privilege", "oid, text", "boolean"),
        ("has_table_privilege", "oid, text", "boolean"),
        ("pg_stat_get_xact_tuples_inserted", "oid", "bigint"),
        ("pg_stat_get_xact_tuples_updated", "oid", "bigint"),
        ("pg_stat_get_xact_tuples_deleted", "oid", "bigint"),
        ("jsonb_typeof", "jsonb", "text"),
        ("length", "text", "integer"),
        ("pg_partition_ancestors", "regclass", "setof regclass"),
        ("to_jsonb", "anyelement", "jsonb"),
        ("current_setting", "text", "text"),
        ("set_config", "text, text, boolean", "text"),
        ("pg_column_size", "jsonb", "integer"),
        (
            "pg_identify_object_as_address",
            "oid, oid, integer",
            "text[]",
        ),
        ("jsonb_object_keys", "jsonb", "setof text"),
        ("pg_sequence_last_value", "regclass", "bigint"),
    ] {
        let value = if returns == "boolean" {
            "public.trapped()".to_string()
        } else {
            format!(
                "case when public.trapped() then null::{} end",
                returns.trim_start_matches("setof ")
            )
        };
        traps.push_str(&format!(
            "create function public.{name}({args}) returns {returns} language sql as $$ select {value} $$;"
        ));
    }
    for (i, (op, left, right, returns)) in [
        ("=", "text", "text", "boolean"),
        ("=", "oid", "oid", "boolean"),
        ("<>", "oid", "oid", "boolean"),
        ("<=", "integer", "integer", "boolean"),
        (">", "bigint", "integer", "boolean"),
        ("~", "text", "text", "boolean"),
        ("->>", "jsonb", "text", "text"),
        ("<>", "text", "text", "boolean"),
        ("=", "jsonb", "jsonb", "boolean"),
        ("<>", "jsonb", "jsonb", "boolean"),
        ("->", "jsonb", "text", "jsonb"),
        ("-", "jsonb", "text[]", "jsonb"),
        ("||", "text[]", "text", "text[]"),
        (">", "integer", "integer", "boolean"),
        ("-", "integer", "integer", "integer"),
    ]
    .into_iter()
    .enumerate()
    {
        let value = if returns == "boolean" {
            "public.trapped()".to_string()
        } else {
            format!("case when public.trapped() then null::{returns} end")
        };
        traps.push_str(&format!(
            "create function public.trap_op{i}(a {left}, b {right}) returns {returns} language sql as $$ select {value} $$;
             create operator public.{op} (leftarg = {left}, rightarg = {right}, function = public.trap_op{i});"
        ));
    }
    as_mallory.batch_execute(&traps).await.unwrap();
    as_mallory
        .batch_execute("set search_path = public, pg_catalog")
        .await
        .unwrap();
    let shadowed: bool = as_mallory
        .query_one("select 'a' = 'a'", &[])
        .await
        .map(|_| false)
        .unwrap_or(true);
    assert!(shadowed, "the traps are what this search path calls");
    for sql in [
        "insert into rowcast.events (relid, op, data) values ('accounts'::regclass, 'INSERT', '{}')",
        "insert into rowcast.events (relid, op, data) values ('accounts'::regclass, 'DELETE', '{}')",
        "insert into rowcast.events (relid, op, data) values ('accounts'::regclass, 'TRUNCATE', '{}')",
        "insert into rowcast.events (relid, op, data, old) values (0, 'PUBLISH', '{}', '{\"topic\": \"accounts\", \"event\": \"x\"}')",
    ] {
        let message = denied(as_mallory.execute(sql, &[]).await, sql);
        assert!(message.contains("row-level security"), "{sql}: {message}");
    }
    let as_writer = writer.client().await;
    let long = "n".repeat(2000);
    as_writer
        .batch_execute(&format!(
            "set search_path = public, pg_catalog;
             insert into accounts values (2, 8, 's', '{long}', '2026-12-06 12:00:00+00');
             update accounts set client_id = 9 where id = 2;
             update accounts set client_id = 9 where id = 2;
             set timezone = 'Asia/Tokyo';
             set row_security = off;
             set intervalstyle = 'sql_standard';
             update accounts set seen = '2026-12-06 22:00:00' where id = 2;
             delete from accounts where id = 2;
             select rowcast.publish('stats:global', 'stats.updated', '{{}}');"
        ))
        .await
        .expect("a writer with the shadowing schema first on its path writes and is captured");
    let settings = as_writer
        .query_one(
            "select pg_catalog.current_setting('TimeZone'), pg_catalog.current_setting('row_security'), \
             pg_catalog.current_setting('IntervalStyle')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            settings.get::<_, String>(0),
            settings.get::<_, String>(1),
            settings.get::<_, String>(2)
        ),
        (
            "Asia/Tokyo".to_string(),
            "off".to_string(),
            "sql_standard".to_string()
        ),
        "the writer's settings are its own again after the capture"
    );
    let log = sequenced(&installer).await;
    let ops: Vec<&str> = log.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        ops,
        ["INSERT", "INSERT", "UPDATE", "UPDATE", "DELETE", "PUBLISH"],
        "the update that changed nothing has no event"
    );
    for (_, op, _, data) in &log[1..5] {
        assert!(data.get("secret").is_none(), "{op}: {data}");
        assert_eq!(data["note"].as_str().map(str::len), Some(2000), "{op}");
    }
    assert_eq!(log[2].3["client_id"], 9);
    assert_eq!(
        log[3].3["seen"], "2026-12-06T13:00:00+00:00",
        "serialised in UTC"
    );
    let olds: Vec<Value> = installer
        .query(
            "select e.old from rowcast.events e where e.op = 'UPDATE' order by e.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        olds,
        [
            json!({"client_id": 8}),
            json!({"seen": "2026-12-06T12:00:00+00:00"}),
        ],
        "a large old row is trimmed to the columns that changed"
    );
    drop((as_mallory, as_writer));
    mallory.drop_all().await;
    writer.drop_all().await;
}

/// Function bodies are parsed in the caller's session, and any role may turn
/// `standard_conforming_strings` off (a backslash in a '...' literal then escapes the
/// next character): the event name checks still refuse a line break, which would break
/// an SSE stream's `event:` line.
#[tokio::test]
async fn an_event_name_check_holds_without_standard_conforming_strings() {
    let db = TestDb::migrated().await;
    let installer = db.client().await;
    let app = Role::new(&db, "publisher", "").await;
    let client = app.client().await;
    client
        .batch_execute("set standard_conforming_strings = off")
        .await
        .unwrap();
    for name in ["x\ny", "a-b", "a\rretry: 1", "reset", "subscribed"] {
        let message = denied(
            client
                .execute("select rowcast.publish('stats:global', $1, '{}')", &[&name])
                .await,
            name,
        );
        assert!(message.contains("event name"), "{name:?}: {message}");
        let old = json!({"topic": "stats:global", "event": name});
        let message = denied(
            client
                .execute(
                    "insert into rowcast.events (relid, op, data, old) values (0, 'PUBLISH', '{}', $1)",
                    &[&old],
                )
                .await,
            name,
        );
        assert!(
            message.contains("row-level security"),
            "{name:?}: {message}"
        );
    }
    client
        .execute(
            "select rowcast.publish('stats:global', 'stats.updated', '{}')",
            &[],
        )
        .await
        .expect("a name the check admits");
    let log = sequenced(&installer).await;
    assert_eq!(log.len(), 1);
    drop(client);
    app.drop_all().await;
}

/// A captured row reads the same whatever the writer's session says about time zones,
/// float digits, interval, bytea and date styles, identifier quoting or row-level
/// security, on the row path and the statement path, and the writer's settings are its
/// own again after each write.
#[tokio::test]
async fn a_captured_row_reads_the_same_whatever_the_writers_session_settings() {
    let db = TestDb::migrated().await;
    let installer = db.client().await;
    installer
        .batch_execute(
            r#"create table "Readings" (id int primary key, f float8, iv interval, b bytea, at timestamptz,
                                        r tstzrange, c regclass);
               create table readings_set (like "Readings" including all);
               select rowcast.watch('"Readings"');
               select rowcast.watch('readings_set');
               select rowcast.capture_statements('readings_set');"#,
        )
        .await
        .unwrap();
    let writer = Role::new(
        &db,
        "sessions",
        r#"grant select, insert, update on "Readings", readings_set to {role};"#,
    )
    .await;
    let client = writer.client().await;
    let odd = "set extra_float_digits = 0; set intervalstyle = 'iso_8601'; \
               set bytea_output = 'escape'; set timezone = 'America/New_York'; \
               set row_security = off; set datestyle = 'SQL, DMY'; set quote_all_identifiers = on;";
    // A zone without an offset whose abbreviation is not UTC.
    let gmt = "reset all; set timezone = 'GMT'; set datestyle = 'Postgres';";
    let show = "select current_setting('extra_float_digits'), current_setting('IntervalStyle'), \
                current_setting('bytea_output'), current_setting('TimeZone'), \
                current_setting('row_security'), current_setting('DateStyle'), \
                current_setting('quote_all_identifiers')";
    for (id, settings) in [(1, ""), (2, odd), (3, gmt)] {
        client.batch_execute(settings).await.unwrap();
        let before = client.query_one(show, &[]).await.unwrap();
        for table in [r#""Readings""#, "readings_set"] {
            client
                .batch_execute(&format!(
                    "insert into {table} values ({id}, 0.1::float8 + 0.2, '1 day 2 hours', '\\x01ff', \
                     '2026-12-06 12:00:00+00', '[2026-12-06 12:00+00,2026-12-07 00:00+00)', 'readings_set');
                     update {table} set f = f * 3, at = at + interval '1 hour' where id = {id};"
                ))
                .await
                .unwrap();
        }
        let after = client.query_one(show, &[]).await.unwrap();
        for column in 0..7 {
            assert_eq!(
                before.get::<_, String>(column),
                after.get::<_, String>(column),
                "setting {column} is the writer's own again"
            );
        }
    }
    let rows = installer
        .query(
            "select e.relid::regclass::text, e.op, e.data - 'id', e.old - 'id' \
             from rowcast.events e order by e.relid, (e.data ->> 'id')::int, e.id",
            &[],
        )
        .await
        .unwrap();
    let captured: Vec<(String, String, Value, Option<Value>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(captured.len(), 12, "{captured:#?}");
    let insert = json!({"f": 0.30000000000000004, "iv": "1 day 02:00:00", "b": "\\x01ff",
                        "at": "2026-12-06T12:00:00+00:00",
                        "r": "[\"2026-12-06 12:00:00+00\",\"2026-12-07 00:00:00+00\")",
                        "c": "public.readings_set"});
    for pair in captured.chunks(2) {
        let [(_, ins_op, ins, _), (_, upd_op, upd, old)] = pair else {
            unreachable!()
        };
        assert_eq!((ins_op.as_str(), upd_op.as_str()), ("INSERT", "UPDATE"));
        assert_eq!(ins, &insert, "{captured:#?}");
        assert_eq!(upd["at"], "2026-12-06T13:00:00+00:00", "{captured:#?}");
        assert_eq!(upd["f"], 0.9000000000000001, "{captured:#?}");
        assert_eq!(old.as_ref(), Some(&insert), "{captured:#?}");
    }
    drop(client);
    writer.drop_all().await;
}
