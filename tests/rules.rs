//! Event rules as data: the presets name every change as the built-in domains always
//! did, an app not shaped like the demo gets its own vocabulary from rules, `watch`
//! refuses rules that do not fit with a clear error, and rules follow schema changes.

use std::collections::BTreeSet;

use rowcast::events::{Change, Op};
use rowcast::events::{Event, Mapping, Rule, frame};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::support::{TestApp, TestDb, expect_events, run};

/// The message of the database error a statement fails with.
async fn refused(client: &Client, sql: &str) -> String {
    let err = client.execute(sql, &[]).await.unwrap_err();
    err.as_db_error()
        .unwrap_or_else(|| panic!("{sql}: {err}"))
        .message()
        .to_string()
}

/// The rules a watched table's current registration holds, as the service reads them.
async fn stored_rules(client: &Client, table: &str) -> Mapping {
    let row = client
        .query_one(
            "select m.id, m.rules::text from rowcast.watched w
             join rowcast.routings r on r.id = w.registration
             join rowcast.mappings m on m.id = r.mapping_id
             where w.table_name = $1",
            &[&table],
        )
        .await
        .unwrap_or_else(|err| panic!("{table}: {err}"));
    let rules = Rule::parse_all(row.get(1)).expect("stored rules the service can read");
    Mapping::new(row.get(0), rules)
}

/// The row of the one event in the log, as stored.
async fn only_logged_row(client: &Client) -> Value {
    client
        .query_one(
            "select e.data from rowcast.log l join rowcast.events e on e.txid = l.txid and e.id = l.event_id",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn op(name: &str) -> Op {
    match name {
        "INSERT" => Op::Insert,
        "UPDATE" => Op::Update,
        "DELETE" => Op::Delete,
        "TRUNCATE" => Op::Truncate,
        other => panic!("no op {other}"),
    }
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).unwrap()
}

fn change(table: &str, op: Op, data: &str, old: Option<&str>) -> Change {
    Change {
        pos: 1,
        table: table.into(),
        op,
        topics: vec![table.into()],
        ts: "2026-11-22T10:00:00.123Z".into(),
        data: Some(raw(data)),
        old: old.map(raw),
        mapping_id: Some(1),
        kept: None,
        left_key: None,
    }
}

/// The event the mapping names for a change.
fn name_of(mapping: &Mapping, op: Op, data: &str, old: Option<&str>) -> String {
    Event::of(&change("t", op, data, old), Ok(Some(mapping)))
        .name()
        .to_string()
}

#[tokio::test]
async fn presets_name_every_change_as_the_built_in_domains_did() {
    let db = TestDb::demo().await;
    let client = db.client().await;
    let booking = stored_rules(&client, "bookings").await;
    let row = |status: &str| {
        format!(r#"{{"id": 9007199254740993, "status": {status}, "client_id": 7, "price": 1.5}}"#)
    };
    for (from, to, name) in [
        (r#""PENDING""#, r#""CONFIRMED""#, "booking.accepted"),
        (r#""PENDING""#, r#""accepted""#, "booking.accepted"),
        (r#""PENDING""#, r#""Approved""#, "booking.accepted"),
        (r#""PENDING""#, r#""REJECTED""#, "booking.rejected"),
        (r#""PENDING""#, r#""declined""#, "booking.rejected"),
        (r#""CONFIRMED""#, r#""CANCELLED""#, "booking.cancelled"),
        (r#""CONFIRMED""#, r#""canceled""#, "booking.cancelled"),
        (r#""CONFIRMED""#, r#""COMPLETED""#, "booking.status_changed"),
        (r#""CONFIRMED""#, r#""PENDING""#, "booking.status_changed"),
        (r#""PENDING""#, r#""ON_HOLD""#, "booking.status_changed"),
        (r#""CONFIRMED""#, r#""APPROVED""#, "booking.status_changed"),
        (r#""PENDING""#, "null", "booking.status_changed"),
        ("null", r#""PENDING""#, "booking.status_changed"),
        ("null", r#""CONFIRMED""#, "booking.accepted"),
        (r#""pending""#, r#""PENDING""#, "booking.updated"),
    ] {
        let old = format!(r#"{{"status": {from}}}"#);
        assert_eq!(
            name_of(&booking, Op::Update, &row(to), Some(&old)),
            name,
            "{from} -> {to}"
        );
    }
    let confirmed = row(r#""CONFIRMED""#);
    assert_eq!(
        name_of(&booking, Op::Update, &confirmed, Some(r#"{"price": 1}"#)),
        "booking.updated"
    );
    assert_eq!(
        name_of(&booking, Op::Insert, &confirmed, None),
        "booking.created"
    );
    assert_eq!(
        name_of(&booking, Op::Delete, &confirmed, None),
        "booking.deleted"
    );

    for table in ["payments", "payouts"] {
        let kind = &table[..table.len() - 1];
        let mapping = stored_rules(&client, table).await;
        let r = r#"{"id": 5, "status": "ESCROW"}"#;
        for (op_, old, name) in [
            (Op::Insert, None, "created"),
            (Op::Update, Some(r#"{"status": "PAID"}"#), "status_changed"),
            (Op::Update, Some(r#"{"status": "escrow"}"#), "updated"),
            (Op::Update, Some(r#"{"amount": 1}"#), "updated"),
            (Op::Delete, None, "deleted"),
        ] {
            assert_eq!(
                name_of(&mapping, op_, r, old),
                format!("{kind}.{name}"),
                "{table} {op_:?} {old:?}"
            );
        }
    }

    let meeting = stored_rules(&client, "meetings").await;
    let m = |started: &str, ended: &str| {
        format!(r#"{{"id": 5, "started_at": {started}, "ended_at": {ended}}}"#)
    };
    let t1 = r#""2026-11-24T18:02:11+00:00""#;
    let t2 = r#""2026-11-24T19:00:00+00:00""#;
    for (data, old, name) in [
        (m(t1, "null"), r#"{"started_at": null}"#, "meeting.started"),
        (m(t1, t2), r#"{"ended_at": null}"#, "meeting.ended"),
        (
            m(t1, t2),
            r#"{"started_at": null, "ended_at": null}"#,
            "meeting.ended",
        ),
        (
            m(t2, "null"),
            r#"{"started_at": "2026-11-24T18:02:11+00:00"}"#,
            "meeting.updated",
        ),
        (
            m("null", "null"),
            r#"{"started_at": "2026-11-24T18:02:11+00:00"}"#,
            "meeting.updated",
        ),
        (m(t1, "null"), r#"{"title": "x"}"#, "meeting.updated"),
    ] {
        assert_eq!(
            name_of(&meeting, Op::Update, &data, Some(old)),
            name,
            "{old}"
        );
    }
    assert_eq!(
        name_of(&meeting, Op::Insert, &m("null", "null"), None),
        "meeting.created"
    );

    let attendance = stored_rules(&client, "attendance").await;
    let a = |left: &str| {
        format!(r#"{{"id": 1, "meeting_id": 5, "participant_id": 11, "left_at": {left}}}"#)
    };
    assert_eq!(
        name_of(&attendance, Op::Insert, &a("null"), None),
        "participant.joined"
    );
    assert_eq!(
        name_of(
            &attendance,
            Op::Update,
            &a(t2),
            Some(r#"{"left_at": null}"#)
        ),
        "participant.left"
    );
    assert_eq!(
        name_of(
            &attendance,
            Op::Update,
            &a("null"),
            Some(r#"{"left_at": "2026-11-24T19:00:00+00:00"}"#)
        ),
        "attendance.updated"
    );
    assert_eq!(
        name_of(&attendance, Op::Delete, &a(t2), None),
        "attendance.deleted"
    );

    let court_card = stored_rules(&client, "court_cards").await;
    let card = r#"{"id": 3, "status": "SIGNED"}"#;
    assert_eq!(
        name_of(&court_card, Op::Insert, card, None),
        "court_card.created"
    );
    assert_eq!(
        name_of(
            &court_card,
            Op::Update,
            card,
            Some(r#"{"status": "ISSUED"}"#)
        ),
        "court_card.updated"
    );

    let course = stored_rules(&client, "courses").await;
    let c = |status: &str, instructor: &str, date: &str| {
        format!(
            r#"{{"id": 1, "status": "{status}", "instructor_id": {instructor}, "scheduled_for": {date}}}"#
        )
    };
    let d1 = r#""2026-12-01""#;
    for (data, old, name) in [
        (
            c("COMPLETED", "8", d1),
            r#"{"status": "SCHEDULED"}"#,
            "course.completed",
        ),
        (
            c("done", "8", d1),
            r#"{"status": "SCHEDULED"}"#,
            "course.completed",
        ),
        (
            c("CANCELLED", "8", d1),
            r#"{"status": "SCHEDULED"}"#,
            "course.cancelled",
        ),
        (
            c("Canceled", "null", "null"),
            r#"{"status": "REQUESTED"}"#,
            "course.cancelled",
        ),
        // completion wins over a new instructor in the same update
        (
            c("COMPLETED", "8", d1),
            r#"{"status": "SCHEDULED", "instructor_id": 7}"#,
            "course.completed",
        ),
        (
            c("ASSIGNED", "8", "null"),
            r#"{"status": "REQUESTED", "instructor_id": null}"#,
            "course.assigned",
        ),
        (
            c("ASSIGNED", "9", d1),
            r#"{"instructor_id": 8}"#,
            "course.assigned",
        ),
        (
            c("SCHEDULED", "8", d1),
            r#"{"scheduled_for": null}"#,
            "course.rescheduled",
        ),
        (
            c("SCHEDULED", "8", r#""2026-12-02""#),
            r#"{"scheduled_for": "2026-12-01"}"#,
            "course.rescheduled",
        ),
        // the instructor cleared while the date moves: the date names it
        (
            c("SCHEDULED", "null", d1),
            r#"{"instructor_id": 8, "scheduled_for": null}"#,
            "course.rescheduled",
        ),
        (
            c("REQUESTED", "null", d1),
            r#"{"instructor_id": 8}"#,
            "course.updated",
        ),
        (
            c("SCHEDULED", "8", d1),
            r#"{"status": "ASSIGNED"}"#,
            "course.updated",
        ),
        (
            c("SCHEDULED", "8", d1),
            r#"{"title": "x"}"#,
            "course.updated",
        ),
    ] {
        assert_eq!(
            name_of(&course, Op::Update, &data, Some(old)),
            name,
            "{old}"
        );
    }
    assert_eq!(
        name_of(&course, Op::Insert, &c("REQUESTED", "null", "null"), None),
        "course.requested"
    );
    assert_eq!(
        name_of(&course, Op::Delete, &c("REQUESTED", "null", "null"), None),
        "course.deleted"
    );
}

/// An example frame of docs/events.md.
#[derive(serde::Deserialize)]
struct Example<'a> {
    pos: i64,
    event: String,
    table: String,
    op: String,
    topics: Vec<String>,
    ts: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    old: Option<&'a RawValue>,
}

#[tokio::test]
async fn docs_examples_are_what_the_presets_and_the_serialiser_send() {
    let db = TestDb::demo().await;
    let client = db.client().await;
    run(
        &client,
        &[
            "create table course_requests (id bigint primary key, state text, teacher_id bigint,
                                           starts_on date, org_id bigint, title text)",
            r#"select rowcast.watch('public.course_requests', topic => 'course',
                   routes  => '{"org_id": "organization", "teacher_id": "instructor"}',
                   domain  => 'course',
                   columns => '{"status": "state", "instructor_id": "teacher_id",
                                "scheduled_for": "starts_on", "organization_id": "org_id"}')"#,
        ],
    )
    .await;
    let docs = include_str!("../docs/events.md");
    let mut seen = BTreeSet::new();
    for block in docs.split("```json\n").skip(1) {
        let text = block.split("\n```").next().unwrap();
        let example: Example = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let mapping = match example.table.as_str() {
            "squads" => None,
            table => Some(stored_rules(&client, table).await),
        };
        let change = Change {
            pos: example.pos,
            table: example.table.clone(),
            op: op(&example.op),
            topics: example.topics.clone(),
            ts: example.ts.clone(),
            data: example.data.map(|r| raw(r.get())),
            old: example.old.map(|r| raw(r.get())),
            mapping_id: mapping.as_ref().map(|m| m.id),
            kept: None,
            left_key: None,
        };
        let event = Event::of(&change, Ok(mapping.as_ref()));
        assert_eq!(event.name(), example.event, "{text}");
        assert_eq!(frame(&change, &event), text);
        seen.insert(example.event.clone());
    }
    let mut all: BTreeSet<String> = client
        .query("select distinct event from rowcast.preset_rules", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    all.extend(Event::GENERIC.map(String::from));
    assert_eq!(
        seen, all,
        "every event has an example, and no other name does"
    );
    for name in &all {
        assert!(
            docs.contains(&format!("\n#### {name}\n")),
            "no section for {name}"
        );
    }
}

/// The column names of a table, in order.
async fn columns_of(client: &Client, table: &str) -> BTreeSet<String> {
    client
        .query(
            "select attname::text from pg_attribute where attrelid = $1::text::regclass and attnum > 0 and not attisdropped",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn keys(data: &Value) -> BTreeSet<String> {
    data.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn an_app_shaped_like_prisma_or_moodle_gets_its_own_events_from_rules() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    run(
        &client,
        &[
            r#"create type "BookingStatus" as enum ('cancelled', 'accepted', 'rejected', 'pending', 'awaiting_host');
               create table "Booking" ("id" text primary key, "uid" text not null, "userId" int,
                                       "status" "BookingStatus" not null default 'pending',
                                       "startTime" timestamp(3) not null, "endTime" timestamp(3) not null,
                                       "paid" boolean not null default false);
               create table "Payment" ("id" text primary key, "bookingId" text, "amount" numeric(12, 2),
                                       "success" boolean not null default false,
                                       "refunded" boolean not null default false);
               create table "CourseCompletion" ("id" text primary key, "userId" int, "courseId" int,
                                                "completedAt" timestamp(3));
               create table mdl_course_completions (id bigint primary key, userid bigint, course bigint,
                                                    timeenrolled bigint, timecompleted bigint);"#,
            // The booking preset, plus one status no built-in knows and one boolean.
            r#"select rowcast.watch('Booking', topic => 'booking', routes => '{"userId": "user"}',
                      domain => 'booking',
                      rules => '[{"when": "status -> awaiting_host", "event": "booking.awaiting_host"},
                                 {"when": "paid -> true", "event": "booking.paid"}]')"#,
            // No status at all: rules over booleans, and a name for every operation.
            r#"select rowcast.watch('Payment', topic => 'payment', rules => '[
                      {"when": "insert", "event": "payment.created"},
                      {"when": "refunded -> true", "event": "payment.refunded"},
                      {"when": "success -> true", "event": "payment.succeeded"},
                      {"when": "update", "event": "payment.updated"}]')"#,
            // A completion that is a timestamp becoming non-null.
            r#"select rowcast.watch('CourseCompletion', topic => 'completion', routes => '{"userId": "user"}',
                      rules => '[{"when": "\"completedAt\" set", "event": "course.completed"}]')"#,
            // Moodle: a unix-epoch bigint.
            r#"select rowcast.watch('mdl_course_completions', topic => 'completion', routes => '{"userid": "user"}',
                      rules => '[{"when": "timecompleted set", "event": "course.completed"},
                                 {"when": "insert", "event": "course.enrolled"}]')"#,
        ],
    )
    .await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["user:7", "Payment"], None).await;
    run(
        &client,
        &[
            r#"insert into "Booking" values ('ck1', 'u-1', 7, 'pending', '2026-12-02 10:00:00.123', '2026-12-02 11:00:00')"#,
            r#"update "Booking" set "status" = 'awaiting_host' where "id" = 'ck1'"#,
            r#"update "Booking" set "status" = 'accepted' where "id" = 'ck1'"#,
            r#"update "Booking" set "paid" = true where "id" = 'ck1'"#,
            r#"update "Booking" set "startTime" = '2026-12-03 10:00:00' where "id" = 'ck1'"#,
            r#"update "Booking" set "status" = 'cancelled' where "id" = 'ck1'"#,
            r#"insert into "Payment" values ('pay1', 'ck1', 12.50, false, false)"#,
            r#"update "Payment" set "success" = true where "id" = 'pay1'"#,
            r#"update "Payment" set "refunded" = true where "id" = 'pay1'"#,
            r#"delete from "Payment" where "id" = 'pay1'"#,
            r#"insert into "CourseCompletion" values ('cc1', 7, 3, null)"#,
            r#"update "CourseCompletion" set "completedAt" = '2026-12-04 09:00:00.5' where "id" = 'cc1'"#,
            "insert into mdl_course_completions values (1, 7, 3, 1764000000, null)",
            "update mdl_course_completions set timecompleted = 1764900000 where id = 1",
            "update mdl_course_completions set timecompleted = 1764900001 where id = 1",
        ],
    )
    .await;
    let events = expect_events(
        &mut ws,
        &[
            "booking.created",
            "booking.awaiting_host",
            "booking.accepted",
            "booking.paid",
            "booking.updated",
            "booking.cancelled",
            "payment.created",
            "payment.succeeded",
            "payment.refunded",
            "row.deleted",
            "row.inserted",
            "course.completed",
            "course.enrolled",
            "course.completed",
            "row.updated",
        ],
    )
    .await;
    // `data` is the app's row under the app's own column names, for every event.
    let tables = [
        ("Booking", "\"Booking\""),
        ("Payment", "\"Payment\""),
        ("CourseCompletion", "\"CourseCompletion\""),
        ("mdl_course_completions", "mdl_course_completions"),
    ];
    for (name, sql_name) in tables {
        let columns = columns_of(&client, sql_name).await;
        for event in events.iter().filter(|e| e["table"] == name) {
            assert_eq!(keys(&event["data"]), columns, "{event}");
        }
    }
    assert_eq!(events[1]["data"]["status"], "awaiting_host");
    assert_eq!(events[1]["old"], json!({"status": "pending"}));
    assert_eq!(events[11]["data"]["completedAt"], "2026-12-04T09:00:00.5");
    assert_eq!(events[13]["data"]["timecompleted"], 1764900000);
    app.stop().await;
}

#[tokio::test]
async fn watch_refuses_rules_that_do_not_fit_the_table_and_changes_nothing() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    run(
        &client,
        &[
            r#"create type mood as enum ('calm', 'busy');
               create table jobs (id int primary key, "doneAt" timestamptz, mood mood, urgent boolean,
                                  level numeric, note text, secret text);
               select rowcast.watch('jobs', rules => '[{"when": "\"doneAt\" set", "event": "job.done"}]');"#,
        ],
    )
    .await;
    let cases = [
        (
            r#"[{"when": "doneat set", "event": "job.done"}]"#,
            r#"the rule for job.done reads column "doneat", which table public.jobs does not have (did you mean "doneAt"?)"#,
        ),
        (
            r#"[{"when": "mood -> asleep", "event": "job.x"}]"#,
            "compares column \"mood\" of table public.jobs with 'asleep', which is not a value of its type public.mood (its values: calm, busy)",
        ),
        (
            r#"[{"when": "urgent -> yes", "event": "job.x"}]"#,
            "compares boolean column \"urgent\" of table public.jobs with 'yes': use true or false",
        ),
        (
            r#"[{"when": "level -> high", "event": "job.x"}]"#,
            "compares numeric column \"level\" of table public.jobs with 'high', which is not a plain decimal number",
        ),
        (
            r#"[{"when": "\"doneAt\" -> 2026-12-01", "event": "job.x"}]"#,
            "\"->\" works on text, enum, boolean and numeric columns (use set, cleared or changed)",
        ),
        (
            r#"[{"when": "note becomes x", "event": "job.x"}]"#,
            "rule 'note becomes x' cannot be read",
        ),
        (
            r#"[{"when": "note -> 'a", "event": "job.x"}]"#,
            "unterminated quoted value",
        ),
        (
            r#"[{"when": "insert", "event": "job done"}]"#,
            "event name 'job done' must be letters, digits and underscores",
        ),
        (
            r#"[{"event": "job.done"}]"#,
            "a rule without \"when\" removes an event of the domain's preset, but 'job.done' is not one",
        ),
        (
            r#"{"when": "insert", "event": "job.done"}"#,
            "rules must be a JSON array",
        ),
        (
            r#"[{"when": "insert", "name": "job.done"}]"#,
            "rule 1 of rules must be an object {\"when\": \"<rule>\", \"event\": \"<name>\"}",
        ),
        (
            r#"[{"when": "secret changed", "event": "job.x"}]"#,
            "reads column \"secret\" of table public.jobs, which is excluded",
        ),
    ];
    for (rules, wanted) in cases {
        let sql = format!(
            "select rowcast.watch('jobs', exclude => array['secret'], rules => '{}')",
            rules.replace('\'', "''")
        );
        let message = refused(&client, &sql).await;
        assert!(message.contains(wanted), "{rules}: {message}");
    }
    // A refused watch changes nothing.
    let rules: Value = client
        .query_one(
            "select rules from rowcast.watched where table_name = 'jobs'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rules,
        json!([{"when": "doneAt set", "event": "job.done", "from": "rules"}])
    );
    // Start from a preset and override one rule: a status of an enum, and no
    // booking.status_changed; the preset's synonyms the enum does not have are left out.
    run(
        &client,
        &[
            r#"select rowcast.watch('jobs', domain => 'booking', columns => '{"status": "mood"}',
                    rules => '[{"when": "mood -> busy", "event": "booking.accepted"},
                               {"event": "booking.status_changed"}]')"#,
        ],
    )
    .await;
    let rules: Value = client
        .query_one(
            "select rules from rowcast.watched where table_name = 'jobs'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let shown: Vec<(String, String)> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["when"].as_str().unwrap_or("-").to_string(),
                r["event"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let shown: Vec<(&str, &str)> = shown
        .iter()
        .map(|(w, e)| (w.as_str(), e.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("mood -> busy", "booking.accepted"),
            ("-", "booking.status_changed"),
            ("insert", "booking.created"),
            ("delete", "booking.deleted"),
            ("update", "booking.updated"),
        ]
    );
}

#[tokio::test]
async fn rules_follow_a_renamed_column_and_a_dropped_or_retyped_one_is_shown() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    run(
        &client,
        &[
            "create table tasks (id int primary key, owner int, finished_at timestamptz, archived boolean,
                                 urgent boolean)",
            r#"select rowcast.watch('tasks', routes => '{"owner": "user"}',
                      rules => '[{"when": "finished_at set", "event": "task.finished"},
                                 {"when": "archived -> true", "event": "task.archived"},
                                 {"when": "urgent -> true", "event": "task.escalated"}]')"#,
        ],
    )
    .await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["user:7"], None).await;
    run(
        &client,
        &[
            "insert into tasks values (1, 7, null, false, false)",
            "alter table tasks rename column finished_at to \"finishedAt\"",
            "update tasks set \"finishedAt\" = now() where id = 1",
        ],
    )
    .await;
    expect_events(&mut ws, &["row.inserted", "task.finished"]).await;
    let watched = client
        .query_one(
            "select rules, problem from rowcast.watched where table_name = 'tasks'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(watched.get::<_, Value>(0)[0]["when"], "finishedAt set");
    assert_eq!(watched.get::<_, Option<String>>(1), None);

    // A type change the rule's values no longer fit is shown too.
    run(
        &client,
        &["alter table tasks alter column urgent type int using urgent::int"],
    )
    .await;
    let problem: String = client
        .query_one(
            "select problem from rowcast.watched where table_name = 'tasks'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        problem.contains(r#"the rule for task.escalated no longer fits column "urgent""#)
            && problem.contains("which is not a plain decimal number"),
        "{problem}"
    );
    run(
        &client,
        &[
            r#"select rowcast.watch('tasks', routes => '{"owner": "user"}',
                    rules => '[{"when": "finishedAt set", "event": "task.finished"},
                               {"when": "archived -> true", "event": "task.archived"},
                               {"when": "urgent -> 1", "event": "task.escalated"}]')"#,
        ],
    )
    .await;

    // A dropped column's rule stops firing, and stays stopped when another column takes
    // the dropped one's name: the rule read the column, not the name.
    run(
        &client,
        &[
            "alter table tasks drop column archived",
            "alter table tasks add column note text",
            "alter table tasks rename column note to archived",
            "update tasks set owner = 7, \"finishedAt\" = null, archived = 'true' where id = 1",
        ],
    )
    .await;
    let problem: String = client
        .query_one(
            "select problem from rowcast.watched where table_name = 'tasks'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        problem.contains(
            r#"column "archived", which the rule for task.archived read, was dropped: the rule no longer fires"#
        ),
        "{problem}"
    );
    expect_events(&mut ws, &["row.updated"]).await;
    app.stop().await;
}

#[tokio::test]
async fn a_schema_change_that_cannot_be_followed_keeps_a_re_added_excluded_column_excluded() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    run(
        &client,
        &[
            r#"create type ticket_state as enum ('open', 'closed');
               create table tickets (id int primary key, st ticket_state, path text, api_key text, status text);"#,
            // A value with a backslash, a label another role may rename, and a domain
            // whose status column is about to change type.
            r#"select rowcast.watch('tickets', exclude => array['api_key'], domain => 'booking',
                      rules => $$[{"when": "path -> 'C:\\a, b'", "event": "ticket.moved"},
                                  {"when": "st -> closed", "event": "ticket.closed"}]$$)"#,
            "alter type ticket_state rename value 'closed' to 'shut'",
            // Rules carried forward by column number: no re-reading, no failure.
            "alter table tickets rename column path to location",
        ],
    )
    .await;
    let rules: Value = client
        .query_one(
            "select rules from rowcast.watched where table_name = 'tickets'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rules[0]["when"], r"location -> 'C:\a, b'");
    // Each rule as rowcast.watched writes it reads back as the same rule.
    for rule in rules
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["from"] == "rules")
    {
        let when = rule["when"].as_str().unwrap();
        client
            .execute("select rowcast.parse_rule($1)", &[&when])
            .await
            .unwrap_or_else(|err| panic!("{when}: {err}"));
    }
    // Now a change that does not fit the preset (status is no longer text), and the
    // excluded column dropped and added again the way migration tools change a type.
    run(
        &client,
        &[
            "alter table tickets alter column status type int using 0",
            "alter table tickets add column api_key_new bytea;
             alter table tickets drop column api_key;
             alter table tickets rename column api_key_new to api_key;",
            "insert into tickets (id, st, location, api_key) values (1, 'open', 'x', 'sk_live_SECRET')",
            "select rowcast.sequence()",
        ],
    )
    .await;
    let data = only_logged_row(&client).await;
    assert!(data.get("api_key").is_none(), "{data}");
    assert_eq!(data["location"], "x");
}

#[tokio::test]
async fn rule_text_reads_back_as_the_same_rule_whatever_the_names_and_values() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let columns = [
        "plain",
        "Mixed Case",
        "a->b",
        "quote\"d",
        "trailing ",
        "x,y",
        "ü",
    ];
    let values = [
        "done",
        "in progress",
        "it's",
        "a, b",
        "C:\\a",
        "*",
        " padded ",
        "''",
    ];
    for column in columns {
        for test in ["set", "cleared", "changed", "becomes_any"] {
            let rule = json!({"op": "UPDATE", "test": test, "column": column});
            let back: Value = client
                .query_one(
                    "select rowcast.parse_rule(rowcast.rule_text($1, $2))",
                    &[&rule, &column],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(back, rule, "{column} {test}");
        }
        let rule = json!({"op": "UPDATE", "test": "becomes", "column": column, "values": values});
        let back: Value = client
            .query_one(
                "select rowcast.parse_rule(rowcast.rule_text($1, $2))",
                &[&rule, &column],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(back, rule, "{column}");
    }
}

#[tokio::test]
async fn rules_are_bounded_in_number_and_size() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    run(&client, &["create table t (id int primary key, s text)"]).await;
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"when": "insert", "event": format!("t.e{i}")}))
        .collect();
    let err = client
        .execute(
            "select rowcast.watch('t', rules => $1)",
            &[&Value::Array(many)],
        )
        .await
        .unwrap_err();
    let err = err.as_db_error().unwrap().message().to_string();
    assert!(err.contains("at most 100 rules"), "{err}");
    let values: Vec<String> = (0..101).map(|i| format!("v{i}")).collect();
    let rules = json!([{"when": format!("s -> {}", values.join(", ")), "event": "t.x"}]);
    let err = client
        .execute("select rowcast.watch('t', rules => $1)", &[&rules])
        .await
        .unwrap_err();
    let err = err.as_db_error().unwrap().message().to_string();
    assert!(err.contains("more than 100 values"), "{err}");
    let rules = json!([{"when": format!("s -> {}", "x".repeat(1001)), "event": "t.x"}]);
    let err = client
        .execute("select rowcast.watch('t', rules => $1)", &[&rules])
        .await
        .unwrap_err();
    let err = err.as_db_error().unwrap().message().to_string();
    assert!(err.contains("at most 1000 characters"), "{err}");
}

#[tokio::test]
async fn an_sse_client_asking_for_unnamed_events_gets_every_rule_named_event_as_a_message() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    run(
        &client,
        &[
            "create table jobs (id int primary key, done_at timestamptz)",
            r#"select rowcast.watch('jobs', rules => '[{"when": "done_at set", "event": "job.finished"}]')"#,
        ],
    )
    .await;
    let app = TestApp::start(&db).await;
    let mut named = crate::support::sse::open(app.addr, "topics=jobs", None)
        .await
        .unwrap();
    let mut unnamed = crate::support::sse::open(app.addr, "topics=jobs&unnamed=1", None)
        .await
        .unwrap();
    for stream in [&mut named, &mut unnamed] {
        assert_eq!(stream.next().await.event.as_deref(), Some("subscribed"));
    }
    run(
        &client,
        &[
            "insert into jobs values (1, null)",
            "update jobs set done_at = now() where id = 1",
        ],
    )
    .await;
    for expected in ["row.inserted", "job.finished"] {
        let block = named.next().await;
        assert_eq!(block.event.as_deref(), Some(expected));
        let block = unnamed.next().await;
        assert_eq!(block.event, None, "{block:?}");
        assert_eq!(block.json()["event"], expected);
        assert_eq!(
            block.id.as_deref(),
            Some(block.json()["pos"].to_string().as_str())
        );
    }
    let refused = crate::support::sse::open(app.addr, "topics=jobs&unnamed=yes", None).await;
    assert_eq!(refused.err().map(|(status, _)| status), Some(400));
    app.stop().await;
}

#[tokio::test]
async fn an_excluded_column_added_again_stays_excluded_even_when_a_routing_column_was_dropped() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    run(
        &client,
        &[
            "create table accounts (id int primary key, owner int, api_key text)",
            r#"select rowcast.watch('accounts', routes => '{"owner": "user"}', exclude => array['api_key'])"#,
            // The registration can no longer be followed: its routing column is gone.
            "alter table accounts drop column owner",
            "alter table accounts add column api_key_new bytea;
             alter table accounts drop column api_key;
             alter table accounts rename column api_key_new to api_key;",
            "insert into accounts (id, api_key) values (1, 'sk_live_SECRET')",
            "select rowcast.sequence()",
        ],
    )
    .await;
    let data = only_logged_row(&client).await;
    assert_eq!(data, json!({"id": 1}));
}
