//! Schema changes made while the service runs and applications write: a routing column,
//! a mapped column, an excluded column and the table itself renamed, each in its own
//! transaction, between concurrent writers' inserts and updates.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::support::service::ServiceProcess;
use crate::support::{TestDb, WAIT, WsClient, connect, eventually};

/// Part of every card token written; no frame and no stored event may hold it.
const SECRET: &str = "SECRET-CARD";

/// Concurrent writers.
const WRITERS: usize = 4;

/// Writes each writer commits between two renames (and after the last one).
const WRITES_PER_PHASE: u64 = 120;

/// Client ids the writers spread their bookings over; a WebSocket client follows the first.
const USERS: [i64; 3] = [7, 8, 9];

/// The names the writers know the table and the renamed columns by.
#[derive(Clone, Debug)]
struct Names {
    table: String,
    client: String,
    status: String,
    token: String,
}

/// One committed write, and the event it must yield (none for an update of the excluded
/// column only).
#[derive(Clone, Debug)]
struct Write {
    id: i64,
    client: i64,
    provider: i64,
    op: &'static str,
    event: Option<&'static str>,
    status: &'static str,
    old_status: Option<&'static str>,
    names: Names,
}

#[derive(Clone, Copy)]
enum Step {
    Insert,
    Status(&'static str, &'static str),
    TokenOnly,
}

/// The current names of the table and of the columns with the numbers `attnums`
/// (client, status, token), read from the catalog.
async fn current_names(client: &Client, relid: u32, attnums: &[i16]) -> Names {
    let row = client
        .query_one(
            "select c.relname::text,
                    array(select a.attname::text
                          from unnest($2::int2[]) with ordinality as x(n, o)
                          join pg_attribute a on a.attrelid = c.oid and a.attnum = x.n
                          order by x.o)
             from pg_class c where c.oid = $1",
            &[&relid, &attnums],
        )
        .await
        .unwrap();
    let columns: Vec<String> = row.get(1);
    Names {
        table: row.get(0),
        client: columns[0].clone(),
        status: columns[1].clone(),
        token: columns[2].clone(),
    }
}

/// What a statement that raced a rename fails with: the name it used is gone.
fn renamed_under_it(err: &tokio_postgres::Error) -> bool {
    [
        SqlState::UNDEFINED_COLUMN,
        SqlState::UNDEFINED_TABLE,
        SqlState::FEATURE_NOT_SUPPORTED, // "cached plan must not change result type"
    ]
    .iter()
    .any(|code| err.code() == Some(code))
}

/// Writes bookings until `stop`: each an insert, then status updates (each with a new
/// card token) or an update of the card token only, every write its own transaction.
/// Every statement names the table and all three renamed columns, so a committed one
/// proves the names its change was captured under. A write that fails because a name it
/// used was renamed is retried under the new names.
/// Returns the committed writes and how many statements a rename failed.
async fn writer(
    url: String,
    w: usize,
    relid: u32,
    attnums: Vec<i16>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> (Vec<Write>, u64) {
    let client = connect(&url).await;
    let mut names = current_names(&client, relid, &attnums).await;
    let mut writes = Vec::new();
    let mut raced = 0u64;
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let user = USERS[(w + n) % USERS.len()];
        let provider = 100 + w as i64;
        let steps: &[Step] = match n % 3 {
            0 => &[
                Step::Insert,
                Step::Status("CONFIRMED", "booking.accepted"),
                Step::Status("CANCELLED", "booking.cancelled"),
            ],
            1 => &[Step::Insert, Step::Status("CANCELLED", "booking.cancelled")],
            _ => &[
                Step::Insert,
                Step::Status("CONFIRMED", "booking.accepted"),
                Step::TokenOnly,
            ],
        };
        let mut id = 0i64;
        let mut status = "PENDING";
        for (s, step) in steps.iter().enumerate() {
            let token = format!("{SECRET}-{w}-{n}-{s}");
            let mut attempts = 0;
            loop {
                let Names {
                    table: t,
                    client: c,
                    status: st,
                    token: tok,
                } = &names;
                let result = match *step {
                    Step::Insert => client
                        .query_one(
                            &format!(
                                r#"insert into "{t}" ("{c}", "{st}", "{tok}", provider_id, starts_at, ends_at, price)
                                   values ($1, 'PENDING', $3, $2, '2026-12-01T10:00:00Z', '2026-12-01T11:00:00Z', 10)
                                   returning id"#
                            ),
                            &[&user, &provider, &token],
                        )
                        .await
                        .map(|row| row.get::<_, i64>(0)),
                    Step::Status(to, _) => client
                        .execute(
                            &format!(
                                r#"update "{t}" set "{st}" = $1, "{tok}" = $2
                                   where id = $3 and "{c}" = $4"#
                            ),
                            &[&to, &token, &id, &user],
                        )
                        .await
                        .map(|rows| {
                            assert_eq!(rows, 1);
                            id
                        }),
                    Step::TokenOnly => client
                        .execute(
                            &format!(
                                r#"update "{t}" set "{tok}" = $1
                                   where id = $2 and "{c}" = $3 and "{st}" = $4"#
                            ),
                            &[&token, &id, &user, &status],
                        )
                        .await
                        .map(|rows| {
                            assert_eq!(rows, 1);
                            id
                        }),
                };
                match result {
                    Ok(written) => {
                        id = written;
                        let write = match *step {
                            Step::Insert => Write {
                                id,
                                client: user,
                                provider,
                                op: "INSERT",
                                event: Some("booking.created"),
                                status: "PENDING",
                                old_status: None,
                                names: names.clone(),
                            },
                            Step::Status(to, event) => {
                                let old = status;
                                status = to;
                                Write {
                                    id,
                                    client: user,
                                    provider,
                                    op: "UPDATE",
                                    event: Some(event),
                                    status: to,
                                    old_status: Some(old),
                                    names: names.clone(),
                                }
                            }
                            Step::TokenOnly => Write {
                                id,
                                client: user,
                                provider,
                                op: "UPDATE",
                                event: None,
                                status,
                                old_status: Some(status),
                                names: names.clone(),
                            },
                        };
                        writes.push(write);
                        done.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    Err(err) if renamed_under_it(&err) => {
                        raced += 1;
                        attempts += 1;
                        assert!(attempts < 100, "writer {w} keeps failing: {err}");
                        names = current_names(&client, relid, &attnums).await;
                    }
                    Err(err) => panic!("writer {w}: a write failed: {err:?}"),
                }
            }
        }
    }
    (writes, raced)
}

/// Waits (bounded) until every writer has committed `more` writes after `from`.
async fn each_writer_commits(done: &[Arc<AtomicU64>], from: &[u64], more: u64) {
    let committed = eventually(WAIT * 3, async || {
        done.iter()
            .zip(from)
            .all(|(d, f)| d.load(Ordering::SeqCst) >= f + more)
    })
    .await;
    assert!(
        committed,
        "writers stalled: {:?} from {from:?}",
        done.iter()
            .map(|d| d.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    );
}

/// Reads every event a WebSocket receives (so that the service never sees a slow
/// client) until `target` is set and that many have arrived; no gap between two of them
/// may last longer than the harness's wait once the writers are done.
fn collect(
    mut ws: WsClient,
    target: watch::Receiver<Option<usize>>,
) -> tokio::task::JoinHandle<(WsClient, Vec<Value>)> {
    tokio::spawn(async move {
        let mut events = Vec::new();
        let mut last = tokio::time::Instant::now();
        loop {
            let wanted = *target.borrow();
            if let Some(n) = wanted {
                if events.len() >= n {
                    return (ws, events);
                }
                assert!(
                    last.elapsed() < WAIT,
                    "only {} of {n} events arrived",
                    events.len()
                );
            }
            if let Some(message) = ws.recv_within(Duration::from_millis(100)).await {
                assert_eq!(message["type"], "event", "expected an event, got {message}");
                events.push(message);
                last = tokio::time::Instant::now();
            } else if wanted.is_none() {
                last = tokio::time::Instant::now();
            }
        }
    })
}

fn topics(event: &Value) -> Vec<&str> {
    event["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_while_writers_write_keep_topics_names_and_exclusions_and_lose_nothing() {
    let db = TestDb::demo().await;
    let admin = db.client().await;
    let row = admin
        .query_one(
            "select 'bookings'::regclass::oid,
                    array(select a.attnum from unnest(array['client_id', 'status', 'card_token']) with ordinality as x(n, o)
                          join pg_attribute a on a.attrelid = 'bookings'::regclass and a.attname = x.n order by x.o),
                    (select count(*) from rowcast.events)",
            &[],
        )
        .await
        .unwrap();
    let (relid, attnums, before): (u32, Vec<i16>, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(before, 0, "the demo schema starts with an empty log");

    let service = ServiceProcess::start(&db.url, None).await;
    let mut table_ws = WsClient::connect(service.addr).await;
    table_ws
        .subscribe(&["bookings", "reservations"], Some(0))
        .await;
    let mut user_ws = WsClient::connect(service.addr).await;
    user_ws.subscribe(&["user:7"], None).await;
    let (table_target, target) = watch::channel(None);
    let table_events = collect(table_ws, target);
    let (user_target, target) = watch::channel(None);
    let user_events = collect(user_ws, target);

    let stop = Arc::new(AtomicBool::new(false));
    let done: Vec<Arc<AtomicU64>> = (0..WRITERS).map(|_| Arc::default()).collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                db.url.clone(),
                w,
                relid,
                attnums.clone(),
                stop.clone(),
                done[w].clone(),
            ))
        })
        .collect();

    // Each rename in its own transaction, while every writer keeps committing.
    for rename in [
        "alter table bookings rename column client_id to customer_id",
        "alter table bookings rename column status to state",
        "alter table bookings rename column card_token to payment_token",
        "alter table bookings rename to reservations",
    ] {
        let from: Vec<u64> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
        each_writer_commits(&done, &from, WRITES_PER_PHASE).await;
        admin.batch_execute(rename).await.unwrap();
    }
    let from: Vec<u64> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
    each_writer_commits(&done, &from, WRITES_PER_PHASE).await;
    stop.store(true, Ordering::SeqCst);
    let mut writes = Vec::new();
    let mut raced = 0;
    for handle in writers {
        let (w, r) = tokio::time::timeout(WAIT, handle)
            .await
            .expect("a writer did not stop")
            .expect("a writer panicked");
        writes.extend(w);
        raced += r;
    }
    let expected: Vec<&Write> = writes.iter().filter(|w| w.event.is_some()).collect();
    let for_user: Vec<&Write> = expected.iter().copied().filter(|w| w.client == 7).collect();
    eprintln!(
        "{} committed writes, {} with an event ({} for user:7); {} statements failed by a rename and were retried",
        writes.len(),
        expected.len(),
        for_user.len(),
        raced
    );
    // Every writer wrote under the old and the new names.
    for (client, table) in [("client_id", "bookings"), ("customer_id", "reservations")] {
        assert!(writes.iter().any(|w| w.names.client == client));
        assert!(writes.iter().any(|w| w.names.table == table));
    }

    // Exactly one event per committed write (none for the excluded column alone),
    // every one routed by a registration, at positions 1..=n.
    db.wait_sequenced(expected.len() as i64).await;
    let positions = db.positions().await;
    assert_eq!(
        positions,
        (1..=expected.len() as i64).collect::<Vec<_>>(),
        "one position per committed write, gap-free"
    );
    let unrouted: i64 = admin
        .query_one(
            "select count(*) from rowcast.log where routing_id is null",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unrouted, 0, "events sequenced without their registration");

    table_target.send_replace(Some(expected.len()));
    user_target.send_replace(Some(for_user.len()));
    let (mut table_ws, table_events) = table_events.await.unwrap();
    table_ws.expect_silence(Duration::from_millis(300)).await;
    let (mut user_ws, user_events) = user_events.await.unwrap();
    user_ws.expect_silence(Duration::from_millis(300)).await;
    let pos: Vec<i64> = table_events
        .iter()
        .map(|e| e["pos"].as_i64().unwrap())
        .collect();
    assert_eq!(
        pos, positions,
        "the table topics deliver every position once"
    );

    // Nothing excluded in any frame, under either name.
    for event in table_events.iter().chain(&user_events) {
        let frame = event.to_string();
        assert!(
            !frame.contains(SECRET),
            "an excluded value was sent: {frame}"
        );
        for part in ["data", "old"] {
            for column in ["card_token", "payment_token"] {
                assert!(event[part].get(column).is_none(), "{frame}");
            }
        }
    }
    let stored: i64 = admin
        .query_one(
            "select count(*) from rowcast.events where data::text like $1 or old::text like $1",
            &[&format!("%{SECRET}%")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "an excluded value reached the log");

    // Each row's events in the order its writes committed, named, routed and attributed
    // under the names the write used.
    let mut by_row: BTreeMap<i64, Vec<&Value>> = BTreeMap::new();
    for event in &table_events {
        by_row
            .entry(event["data"]["id"].as_i64().unwrap())
            .or_default()
            .push(event);
    }
    let mut wanted: BTreeMap<i64, Vec<&Write>> = BTreeMap::new();
    for write in &expected {
        wanted.entry(write.id).or_default().push(write);
    }
    assert_eq!(
        by_row.keys().collect::<Vec<_>>(),
        wanted.keys().collect::<Vec<_>>()
    );
    for (id, writes) in &wanted {
        let events = &by_row[id];
        assert_eq!(events.len(), writes.len(), "row {id}: {events:#?}");
        for (event, write) in events.iter().zip(writes) {
            let names = &write.names;
            let context = format!("{write:?} delivered as {event}");
            assert_eq!(event["event"], write.event.unwrap(), "{context}");
            assert_eq!(event["op"], write.op, "{context}");
            assert_eq!(event["table"], names.table.as_str(), "{context}");
            let topics = topics(event);
            assert_eq!(topics[0], names.table, "{context}");
            for topic in [
                format!("booking:{id}"),
                format!("user:{}", write.client),
                format!("provider:{}", write.provider),
            ] {
                assert!(topics.contains(&topic.as_str()), "{topic}: {context}");
            }
            assert_eq!(topics.len(), 4, "{context}");
            let data = &event["data"];
            assert_eq!(data[&names.client], write.client, "{context}");
            assert_eq!(data[&names.status], write.status, "{context}");
            let other_client = if names.client == "client_id" {
                "customer_id"
            } else {
                "client_id"
            };
            let other_status = if names.status == "status" {
                "state"
            } else {
                "status"
            };
            assert!(data.get(other_client).is_none(), "{context}");
            assert!(data.get(other_status).is_none(), "{context}");
            match write.old_status {
                Some(old) => assert_eq!(event["old"][&names.status], old, "{context}"),
                None => assert!(event.get("old").is_none(), "{context}"),
            }
        }
    }

    // user:7 gets every event of its rows, before and after the rename, and nothing else.
    let user_pos: Vec<i64> = user_events
        .iter()
        .map(|e| e["pos"].as_i64().unwrap())
        .collect();
    let table_user_pos: Vec<i64> = table_events
        .iter()
        .filter(|e| {
            let data = &e["data"];
            data.get("client_id").or_else(|| data.get("customer_id")) == Some(&json!(7))
        })
        .map(|e| e["pos"].as_i64().unwrap())
        .collect();
    assert_eq!(user_pos, table_user_pos);
    assert_eq!(user_pos.len(), for_user.len());
    assert!(user_events.iter().all(|e| topics(e).contains(&"user:7")));
    let names_seen: HashSet<&str> = user_events
        .iter()
        .map(|e| e["table"].as_str().unwrap())
        .collect();
    assert_eq!(names_seen, HashSet::from(["bookings", "reservations"]));

    // The registration followed every rename, and nothing is reported broken.
    let watched = admin
        .query(
            "select \"table\"::text, routes, exclude, columns, problem from rowcast.watched",
            &[],
        )
        .await
        .unwrap();
    for row in &watched {
        let (table, problem): (String, Option<String>) = (row.get(0), row.get(4));
        assert_eq!(problem, None, "{table}");
    }
    let reservations = watched
        .iter()
        .find(|r| r.get::<_, String>(0) == "reservations")
        .expect("reservations is watched");
    assert_eq!(
        reservations.get::<_, Value>(1),
        json!({"customer_id": "user", "provider_id": "provider"})
    );
    assert_eq!(reservations.get::<_, Vec<String>>(2), vec!["payment_token"]);
    assert_eq!(reservations.get::<_, Value>(3)["status"], "state");
    let problems = rowcast::capture::registry::problems(&admin).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");

    let log = service.log();
    for complaint in [
        "delivered as row.*",
        "registration no longer fits",
        "mapping not found",
        "unreadable",
    ] {
        assert!(
            !log.contains(complaint),
            "the service logged {complaint:?}:\n{log}"
        );
    }
    let status = service.terminate().await;
    assert!(status.success(), "{status}");
}
