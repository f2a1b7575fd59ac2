//! Typed domain events end to end: plain SQL writes to the demo schema (and to an app
//! schema with other names, mapped in its watch registration) reach subscribers as the
//! exact sequence of domain events, on the topics of the people involved.

use serde_json::{Value, json};

use crate::support::{TestApp, TestDb, WsClient, expect_events, run};

async fn subscribed(app: &TestApp, topics: &[&str]) -> WsClient {
    let mut ws = app.ws().await;
    ws.subscribe(topics, None).await;
    ws
}

#[tokio::test]
async fn domains_a_meeting_reaches_its_participants_and_court_rep_on_their_topics() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let mut meeting = subscribed(&app, &["meeting:1"]).await;
    let mut first = subscribed(&app, &["participant:11"]).await;
    let mut second = subscribed(&app, &["participant:12"]).await;
    let mut rep = subscribed(&app, &["court_rep:2"]).await;

    run(
        &db.client().await,
        &[
            "insert into meetings (id, title, court_rep_id, organization_id, scheduled_at) \
             values (1, 'Group', 2, 3, '2026-11-22T10:00:00Z')",
            "update meetings set started_at = clock_timestamp() where id = 1",
            "insert into attendance (id, meeting_id, participant_id) values (1, 1, 11)",
            "insert into attendance (id, meeting_id, participant_id) values (2, 1, 12)",
            "update attendance set left_at = clock_timestamp(), status = 'LEFT' where id = 1",
            "update attendance set left_at = clock_timestamp(), status = 'LEFT' where id = 2",
            "update attendance set minutes = 55 where id = 1",
            "insert into court_cards (id, meeting_id, participant_id, court_rep_id) values (1, 1, 11, 2)",
            "update court_cards set status = 'SIGNED', signed_at = clock_timestamp() where id = 1",
            "update meetings set ended_at = clock_timestamp() where id = 1",
        ],
    )
    .await;

    let all = expect_events(
        &mut meeting,
        &[
            "meeting.created",
            "meeting.started",
            "participant.joined",
            "participant.joined",
            "participant.left",
            "participant.left",
            "attendance.updated",
            "court_card.created",
            "court_card.updated",
            "meeting.ended",
        ],
    )
    .await;
    let mine = expect_events(
        &mut first,
        &[
            "participant.joined",
            "participant.left",
            "attendance.updated",
            "court_card.created",
            "court_card.updated",
        ],
    )
    .await;
    expect_events(&mut second, &["participant.joined", "participant.left"]).await;
    expect_events(
        &mut rep,
        &[
            "meeting.created",
            "meeting.started",
            "court_card.created",
            "court_card.updated",
            "meeting.ended",
        ],
    )
    .await;

    let left = &mine[1];
    assert_eq!(left["table"], "attendance");
    assert_eq!(
        left["topics"],
        json!(["attendance", "attendance:1", "meeting:1", "participant:11"])
    );
    assert_eq!(left["data"]["participant_id"], 11);
    assert!(left["data"]["left_at"].is_string());
    assert_eq!(left["old"], json!({"left_at": null, "status": "JOINED"}));
    let started = &all[1];
    assert_eq!(started["old"], json!({"started_at": null}));
    assert_eq!(
        started["topics"],
        json!(["meetings", "meeting:1", "court_rep:2", "organization:3"])
    );
}

/// The booking scenario's writes: a booking accepted, paid, held in escrow, released
/// and paid out, then a second booking rejected. Client 7, provider 3.
const DEMO_BOOKING: [&str; 10] = [
    "insert into bookings (id, client_id, provider_id, starts_at, ends_at, price) \
     values (1, 7, 3, '2026-11-22T10:00:00Z', '2026-11-22T11:00:00Z', 10)",
    "update bookings set status = 'CONFIRMED' where id = 1",
    "insert into payments (id, booking_id, client_id, provider_id, amount) values (1, 1, 7, 3, 10)",
    "update payments set status = 'ESCROW' where id = 1",
    "update payments set status = 'RELEASED' where id = 1",
    "insert into payouts (id, provider_id, payment_id, amount) values (1, 3, 1, 10)",
    "update payouts set status = 'PROCESSING' where id = 1",
    "update payouts set status = 'COMPLETED' where id = 1",
    "insert into bookings (id, client_id, provider_id, starts_at, ends_at, price) \
     values (2, 7, 3, '2026-11-23T10:00:00Z', '2026-11-23T11:00:00Z', 10)",
    "update bookings set status = 'REJECTED' where id = 2",
];

/// The column a booking-domain field is in, for the demo schema: the field's name.
fn demo_column(_table: &str, field: &str) -> String {
    field.to_string()
}

/// Runs a booking scenario and checks what the client and the provider receive; `col`
/// names the column of a field in an event's table (rows keep the app's column names).
/// Returns the provider's events.
async fn booking_scenario(
    db: &TestDb,
    writes: &[&str],
    col: fn(&str, &str) -> String,
) -> Vec<Value> {
    let app = TestApp::start(db).await;
    let mut client = subscribed(&app, &["user:7"]).await;
    let mut provider = subscribed(&app, &["provider:3"]).await;
    run(&db.client().await, writes).await;
    let for_client = expect_events(
        &mut client,
        &[
            "booking.created",
            "booking.accepted",
            "payment.created",
            "payment.status_changed",
            "payment.status_changed",
            "booking.created",
            "booking.rejected",
        ],
    )
    .await;
    let for_provider = expect_events(
        &mut provider,
        &[
            "booking.created",
            "booking.accepted",
            "payment.created",
            "payment.status_changed",
            "payment.status_changed",
            "payout.created",
            "payout.status_changed",
            "payout.status_changed",
            "booking.created",
            "booking.rejected",
        ],
    )
    .await;
    let table = |e: &Value| e["table"].as_str().unwrap().to_string();
    for (i, e) in for_client.iter().enumerate() {
        assert!(
            e["data"].get(col(&table(e), "client_id")).is_some(),
            "{i}: {e}"
        );
    }
    // Rows keep the app's column names, whatever the domain calls them.
    let escrow = &for_provider[3];
    let status = col(&table(escrow), "status");
    assert_eq!(
        escrow["data"][&status].as_str().unwrap().to_uppercase(),
        "ESCROW"
    );
    assert_eq!(
        escrow["old"][&status].as_str().unwrap().to_uppercase(),
        "PAID"
    );
    let completed = &for_provider[7];
    let status = col(&table(completed), "status");
    assert_eq!(completed["data"][&status], "COMPLETED");
    assert_eq!(completed["old"], json!({ status: "PROCESSING" }));
    for e in &for_provider {
        let (status, id) = (col(&table(e), "status"), col(&table(e), "id"));
        assert!(e["data"][&status].is_string(), "{e}");
        assert!(
            e["data"][&id].is_number() || e["data"][&id].is_string(),
            "{e}"
        );
    }
    for_provider
}

#[tokio::test]
async fn domains_a_booking_is_created_accepted_paid_released_and_paid_out() {
    let db = TestDb::demo().await;
    let events = booking_scenario(&db, &DEMO_BOOKING, demo_column).await;
    assert_eq!(events[1]["table"], "bookings");
    assert_eq!(events[1]["old"], json!({"status": "PENDING"}));
    assert_eq!(events[9]["data"]["status"], "REJECTED");
    assert!(
        events[0]["data"].get("card_token").is_none(),
        "excluded column leaked"
    );
}

#[tokio::test]
async fn domains_the_booking_scenario_on_an_app_schema_with_other_names() {
    let db = TestDb::migrated().await;
    db.client()
        .await
        .batch_execute(
            r#"
            create schema shop;
            create table shop.reservations (
                reservation_no bigint primary key,
                customer bigint not null,
                vendor bigint not null,
                state varchar(20) not null default 'new',
                total numeric(30, 2) not null default 0
            );
            create table shop.charges (
                charge_id bigint primary key,
                reservation_no bigint not null references shop.reservations,
                customer bigint not null,
                vendor bigint not null,
                charge_state text not null default 'paid'
            );
            create type shop.payout_phase as enum ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED');
            create table shop.disbursements (
                disb_id uuid primary key,
                vendor bigint not null,
                charge_id bigint not null references shop.charges,
                phase shop.payout_phase not null default 'PENDING'
            );
            select rowcast.watch('shop.reservations', topic => 'booking',
                   routes => '{"customer": "user", "vendor": "provider"}',
                   domain => 'booking',
                   columns => '{"id": "reservation_no", "status": "state", "client_id": "customer", "provider_id": "vendor"}');
            select rowcast.watch('shop.charges', topic => 'payment',
                   routes => '{"reservation_no": "booking", "customer": "user", "vendor": "provider"}',
                   domain => 'payment',
                   columns => '{"id": "charge_id", "status": "charge_state", "booking_id": "reservation_no", "client_id": "customer", "provider_id": "vendor"}');
            select rowcast.watch('shop.disbursements', topic => 'payout',
                   routes => '{"vendor": "provider"}',
                   domain => 'payout',
                   columns => '{"id": "disb_id", "status": "phase", "payment_id": "charge_id", "provider_id": "vendor"}');
            "#,
        )
        .await
        .unwrap();
    let payout = "'6f1c1f0e-8a47-4c53-9b0e-3c2f4a1d2e10'";
    let writes = [
        "insert into shop.reservations (reservation_no, customer, vendor, total) \
         values (1, 7, 3, 12345678901234567890.12)"
            .to_string(),
        "update shop.reservations set state = 'approved' where reservation_no = 1".into(),
        "insert into shop.charges (charge_id, reservation_no, customer, vendor) values (1, 1, 7, 3)"
            .into(),
        "update shop.charges set charge_state = 'escrow' where charge_id = 1".into(),
        "update shop.charges set charge_state = 'released' where charge_id = 1".into(),
        format!("insert into shop.disbursements (disb_id, vendor, charge_id) values ({payout}, 3, 1)"),
        format!("update shop.disbursements set phase = 'PROCESSING' where disb_id = {payout}"),
        format!("update shop.disbursements set phase = 'COMPLETED' where disb_id = {payout}"),
        "insert into shop.reservations (reservation_no, customer, vendor) values (2, 7, 3)".into(),
        "update shop.reservations set state = 'declined' where reservation_no = 2".into(),
    ];
    let writes: Vec<&str> = writes.iter().map(String::as_str).collect();
    fn shop_column(table: &str, field: &str) -> String {
        let column = match (table, field) {
            ("shop.reservations", "id") => "reservation_no",
            ("shop.reservations", "status") => "state",
            ("shop.charges", "id") => "charge_id",
            ("shop.charges", "status") => "charge_state",
            ("shop.disbursements", "id") => "disb_id",
            ("shop.disbursements", "status") => "phase",
            (_, "client_id") => "customer",
            (_, "provider_id") => "vendor",
            (_, other) => other,
        };
        column.to_string()
    }
    let events = booking_scenario(&db, &writes, shop_column).await;

    let accepted = &events[1];
    assert_eq!(accepted["table"], "shop.reservations");
    assert_eq!(
        accepted["data"],
        json!({"reservation_no": 1, "state": "approved", "customer": 7, "vendor": 3, "total": 12345678901234567890.12})
    );
    assert_eq!(accepted["old"], json!({"state": "new"}));
    assert_eq!(
        accepted["topics"],
        json!(["shop.reservations", "booking:1", "user:7", "provider:3"])
    );
    assert_eq!(events[3]["data"]["reservation_no"], 1);
    assert_eq!(
        events[5]["data"]["disb_id"],
        "6f1c1f0e-8a47-4c53-9b0e-3c2f4a1d2e10"
    );
    assert_eq!(events[5]["data"]["charge_id"], 1);
    assert!(events[5]["data"].get("payment_id").is_none());
}

#[tokio::test]
async fn domains_a_course_is_requested_assigned_rescheduled_completed_and_another_cancelled() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let mut organization = subscribed(&app, &["organization:4"]).await;
    let mut instructor = subscribed(&app, &["instructor:8"]).await;
    run(
        &db.client().await,
        &[
            "insert into courses (id, organization_id, title, requested_by) values (1, 4, 'First aid', 7)",
            "update courses set instructor_id = 8, status = 'ASSIGNED' where id = 1",
            "update courses set scheduled_for = '2026-12-01T09:00:00Z', status = 'SCHEDULED' where id = 1",
            "update courses set scheduled_for = '2026-12-08T09:00:00Z' where id = 1",
            "update courses set status = 'COMPLETED' where id = 1",
            "insert into courses (id, organization_id, title, requested_by) values (2, 4, 'CPR', 7)",
            "update courses set status = 'CANCELLED' where id = 2",
        ],
    )
    .await;
    let all = expect_events(
        &mut organization,
        &[
            "course.requested",
            "course.assigned",
            "course.rescheduled",
            "course.rescheduled",
            "course.completed",
            "course.requested",
            "course.cancelled",
        ],
    )
    .await;
    expect_events(
        &mut instructor,
        &[
            "course.assigned",
            "course.rescheduled",
            "course.rescheduled",
            "course.completed",
        ],
    )
    .await;
    assert_eq!(all[2]["old"]["scheduled_for"], Value::Null);
    assert_eq!(all[3]["data"]["scheduled_for"], "2026-12-08T09:00:00+00:00");
    assert_eq!(
        all[3]["old"],
        json!({"scheduled_for": "2026-12-01T09:00:00+00:00"})
    );
    assert_eq!(all[4]["old"], json!({"status": "SCHEDULED"}));
}

#[tokio::test]
async fn domains_tables_no_domain_knows_give_row_events_on_their_routing_topics() {
    let db = TestDb::migrated().await;
    let writer = db.client().await;
    run(
        &writer,
        &["create table squads (id bigint primary key, team_id bigint not null, name text);
           create table wallets (id bigint primary key, team_id bigint not null, balance numeric);
           create table sessions (id bigint primary key, user_id bigint not null, note text);
           create table ratings (id bigint primary key, session_id bigint not null references sessions,
                                 user_id bigint not null, score int);
           select rowcast.watch('squads', topic => 'squad', routes => '{\"team_id\": \"team\"}');
           select rowcast.watch('wallets', topic => 'wallet', routes => '{\"team_id\": \"team\"}');
           select rowcast.watch('sessions', topic => 'session', routes => '{\"user_id\": \"user\"}');
           select rowcast.watch('ratings', topic => 'rating',
                  routes => '{\"user_id\": \"user\", \"session_id\": \"session\"}');"],
    )
    .await;
    let app = TestApp::start(&db).await;
    let mut team = subscribed(&app, &["team:5"]).await;
    let mut admin = subscribed(&app, &["sessions", "ratings"]).await;
    let mut user = subscribed(&app, &["user:7"]).await;
    run(
        &writer,
        &[
            "insert into squads values (1, 5, 'a')",
            "insert into wallets values (1, 5, 0)",
            "update wallets set balance = 12 where id = 1",
            "delete from squads where id = 1",
            "insert into squads values (2, 6, 'other team')",
            "insert into sessions values (1, 7, 'x')",
            "insert into sessions values (2, 8, 'y')",
            "insert into ratings values (1, 1, 7, 4)",
            "update ratings set score = 5 where id = 1",
            "delete from sessions where id = 2",
        ],
    )
    .await;
    let events = expect_events(
        &mut team,
        &["row.inserted", "row.inserted", "row.updated", "row.deleted"],
    )
    .await;
    let tables: Vec<&str> = events
        .iter()
        .map(|e| e["table"].as_str().unwrap())
        .collect();
    assert_eq!(tables, ["squads", "wallets", "wallets", "squads"]);
    assert_eq!(events[2]["old"], json!({"balance": 0}));
    expect_events(
        &mut admin,
        &[
            "row.inserted",
            "row.inserted",
            "row.inserted",
            "row.updated",
            "row.deleted",
        ],
    )
    .await;
    let mine = expect_events(&mut user, &["row.inserted", "row.inserted", "row.updated"]).await;
    assert_eq!(mine[1]["table"], "ratings");
    assert_eq!(
        mine[1]["topics"],
        json!(["ratings", "rating:1", "session:1", "user:7"])
    );
}

#[tokio::test]
async fn domains_values_survive_exactly_big_ids_long_numerics_and_other_time_zones() {
    let db = TestDb::demo().await;
    let writer = db.client().await;
    run(
        &writer,
        &[
            "create table wallets (id bigint primary key, team_id bigint, balance numeric);
           select rowcast.watch('wallets', routes => '{\"team_id\": \"team\"}');",
        ],
    )
    .await;
    let app = TestApp::start(&db).await;
    let mut ws = subscribed(&app, &["bookings", "wallets", "meetings"]).await;
    run(
        &writer,
        &[
            "insert into bookings (id, client_id, provider_id, starts_at, ends_at, price) \
             values (9007199254740993, 9007199254740995, 3, '2026-11-22T10:00:00Z', '2026-11-22T11:00:00Z', 9999999999.99)",
            "update bookings set status = 'CONFIRMED' where id = 9007199254740993",
            "insert into wallets values (1, 5, 12345678901234567890.123456789)",
            "set timezone = 'Asia/Tokyo'; \
             insert into meetings (id, title, court_rep_id, organization_id, scheduled_at) \
             values (1, 'm', 2, 3, '2026-11-22 19:00:00')",
        ],
    )
    .await;
    let created = ws.recv_text().await;
    assert!(
        created.contains(r#""event":"booking.created""#),
        "{created}"
    );
    assert!(created.contains(r#""id": 9007199254740993"#), "{created}");
    assert!(
        created.contains(r#""client_id": 9007199254740995"#),
        "{created}"
    );
    assert!(created.contains(r#""price": 9999999999.99"#), "{created}");
    assert!(created.contains(r#""topics":["bookings","booking:9007199254740993","user:9007199254740995","provider:3"]"#), "{created}");
    let accepted = ws.recv_text().await;
    assert!(
        accepted.contains(r#""event":"booking.accepted""#),
        "{accepted}"
    );
    assert!(accepted.contains(r#""id": 9007199254740993"#), "{accepted}");
    let wallet = ws.recv_text().await;
    assert!(wallet.contains(r#""event":"row.inserted""#), "{wallet}");
    assert!(
        wallet.contains(r#""balance": 12345678901234567890.123456789"#),
        "{wallet}"
    );
    let meeting: Value = serde_json::from_str(&ws.recv_text().await).unwrap();
    assert_eq!(meeting["event"], "meeting.created");
    assert_eq!(meeting["data"]["scheduled_at"], "2026-11-22T10:00:00+00:00");
}

#[tokio::test]
async fn domains_watch_refuses_bad_mappings_with_the_table_and_column() {
    let db = TestDb::demo().await;
    let client = db.client().await;
    client
        .batch_execute(
            "create table course_requests (id bigint primary key, state int, teacher_id bigint,
                                           starts_on date, status_note text)",
        )
        .await
        .unwrap();
    let refused = |sql: &'static str| {
        let client = &client;
        async move {
            let err = client.execute(sql, &[]).await.unwrap_err();
            err.as_db_error()
                .expect("a database error")
                .message()
                .to_string()
        }
    };
    let message = refused("select rowcast.watch('course_requests', domain => 'course')").await;
    assert_eq!(
        message,
        r#"rowcast.watch: domain course needs field "status": table public.course_requests has no column "status" (map it with columns => '{"status": "your_column"}', or give your own rule for course.completed)"#
    );
    let message = refused(
        r#"select rowcast.watch('course_requests', domain => 'course',
           columns => '{"status": "state", "instructor_id": "teacher_id", "scheduled_for": "starts_on"}')"#,
    )
    .await;
    assert!(
        message.contains(r#"field "status" needs a status column"#)
            && message.contains(r#"column "state" of table public.course_requests is integer"#),
        "{message}"
    );
    let message = refused(
        r#"select rowcast.watch('course_requests', domain => 'course',
           columns => '{"status": "status_note", "instructor_id": "teacher", "scheduled_for": "starts_on"}')"#,
    )
    .await;
    assert!(
        message.contains(r#"field "instructor_id" is mapped to column "teacher", which table public.course_requests does not have"#),
        "{message}"
    );
    let message = refused(
        r#"select rowcast.watch('course_requests', domain => 'course', columns => '{"teacher": "teacher_id"}')"#,
    )
    .await;
    assert!(
        message.contains(r#"domain course has no field "teacher""#),
        "{message}"
    );
    let message = refused("select rowcast.watch('course_requests', domain => 'courses')").await;
    assert!(message.contains("unknown domain 'courses'"), "{message}");
    assert!(message.contains("court_card"), "{message}");
    let message = refused(
        "select rowcast.watch('bookings', domain => 'booking', exclude => array['status'])",
    )
    .await;
    assert!(
        message.contains(r#"column "status" of table public.bookings, which is excluded"#),
        "{message}"
    );
    // A refused watch changes nothing: bookings keeps its registration.
    let kind: String = client
        .query_one(
            "select domain from rowcast.watched where table_name = 'bookings'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "booking");
    // And a sound mapping is accepted, stored once, and reused by an identical watch.
    for _ in 0..2 {
        client
            .batch_execute(
                r#"select rowcast.watch('course_requests', domain => 'course',
                   columns => '{"status": "status_note", "instructor_id": "teacher_id", "scheduled_for": "starts_on"}')"#,
            )
            .await
            .unwrap();
    }
    let row = client
        .query_one(
            "select count(*), min(fields::text) from rowcast.mappings where relid = 'course_requests'::regclass",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(
        row.get::<_, String>(1),
        r#"{"id": "id", "status": "status_note", "instructor_id": "teacher_id", "scheduled_for": "starts_on"}"#
    );
    let shown: String = client
        .query_one(
            "select mapping->>'status' from rowcast.watched where table_name = 'course_requests'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "status_note");
    // Events refer to mappings by id: they never change.
    let err = client
        .execute("update rowcast.mappings set kind = 'booking'", &[])
        .await
        .unwrap_err();
    assert!(
        err.as_db_error().unwrap().message().contains("immutable"),
        "{err}"
    );
}

#[tokio::test]
async fn domains_a_mapping_broken_after_watch_is_reported_at_start_and_its_rows_arrive_as_row_events()
 {
    let db = TestDb::demo().await;
    let writer = db.client().await;
    run(&writer, &["alter table courses drop column scheduled_for"]).await;
    let problems = rowcast::capture::registry::problems(&writer).await.unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].table, "courses");
    assert!(
        problems[0].problem.contains(
            r#"column "scheduled_for", which the course domain reads as "scheduled_for", was dropped"#
        ),
        "{problems:?}"
    );
    let unmapped = rowcast::events::mapping::unmapped_rows();
    let app = TestApp::start(&db).await;
    let mut ws = subscribed(&app, &["courses", "bookings"]).await;
    run(
        &writer,
        &[
            "insert into courses (id, organization_id, title, requested_by) values (1, 4, 'x', 7)",
            "update courses set status = 'COMPLETED' where id = 1",
            "insert into bookings (id, client_id, provider_id, starts_at, ends_at, price) \
             values (1, 7, 3, '2026-11-22T10:00:00Z', '2026-11-22T11:00:00Z', 10)",
        ],
    )
    .await;
    let events = expect_events(&mut ws, &["row.inserted", "row.updated", "booking.created"]).await;
    assert_eq!(events[1]["old"], json!({"status": "REQUESTED"}));
    assert!(rowcast::events::mapping::unmapped_rows() >= unmapped + 2);
}

#[tokio::test]
async fn domains_a_replay_reads_each_event_with_the_mapping_it_was_captured_with() {
    let db = TestDb::demo().await;
    let writer = db.client().await;
    run(
        &writer,
        &[
            "select rowcast.watch('bookings', topic => 'booking')",
            "insert into bookings (id, client_id, provider_id, starts_at, ends_at, price) \
             values (1, 7, 3, '2026-11-22T10:00:00Z', '2026-11-22T11:00:00Z', 10)",
            "alter table bookings rename column status to state;
             select rowcast.watch('bookings', topic => 'booking', domain => 'booking',
                    columns => '{\"status\": \"state\"}');",
            "update bookings set state = 'CONFIRMED' where id = 1",
            "alter table bookings rename column state to status;
             select rowcast.watch('bookings', topic => 'booking', domain => 'booking');",
            "update bookings set status = 'CANCELLED' where id = 1",
        ],
    )
    .await;
    // Sequenced before the service starts: its tailer begins after them, so only the
    // replay reads them (and loads their mappings).
    run(&writer, &["select rowcast.sequence()"]).await;
    db.wait_sequenced(3).await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["booking:1"], Some(0)).await;
    let events = expect_events(
        &mut ws,
        &["row.inserted", "booking.accepted", "booking.cancelled"],
    )
    .await;
    // Each row as it was captured, under the column names of that time.
    assert_eq!(events[0]["data"]["status"], "PENDING");
    assert_eq!(events[1]["data"]["state"], "CONFIRMED");
    assert!(events[1]["data"].get("status").is_none());
    assert_eq!(events[1]["old"], json!({"state": "PENDING"}));
    assert_eq!(events[2]["old"], json!({"status": "CONFIRMED"}));
}
