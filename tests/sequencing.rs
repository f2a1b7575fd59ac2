//! Positions under concurrency: gap-free, unique, and in each row's change order.

use std::collections::HashMap;
use std::time::Duration;

use rowcast::capture::log::MalformedRow;
use rowcast::capture::tail::{self, TailConfig};
use rowcast::events::Mappings;
use rowcast::events::{Change, Op};
use rowcast::hub::Hub;
use tokio_util::sync::CancellationToken;

use crate::bus::metric;
use crate::pipeline::NEW_BOOKING;
use crate::support::service::ServiceProcess;
use crate::support::{TestApp, TestDb, WAIT, WsClient, connect, eventually, positions, wait_until};

/// A small deterministic generator (xorshift), so failures replay.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const WRITERS: u64 = 16;
const WRITES: u64 = 500;
const SHARED_ROWS: i64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_out_of_order_commits_get_gap_free_positions_in_row_order() {
    let db = TestDb::migrated().await;
    let setup = db.client().await;
    setup
        .batch_execute(&format!(
            "create table items (id bigint primary key, v int not null, writer int);
             insert into items select g, 0, null from generate_series(1, {SHARED_ROWS}) g;
             create sequence item_ids start 1000;
             select rowcast.watch('items', topic => 'item');"
        ))
        .await
        .unwrap();
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["items"], None).await;

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let url = db.url.clone();
        writers.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w + 1));
            let mut mine: Vec<i64> = Vec::new();
            let mut done = 0;
            while done < WRITES {
                let tx = client.transaction().await.unwrap();
                // One to three writes per transaction.
                let n = 1 + rng.below(3);
                let mut contended = false;
                for _ in 0..n {
                    match rng.below(10) {
                        // One shared row per transaction at most: two would deadlock.
                        0..=5 if !contended => {
                            contended = true;
                            // Contended: rows shared by every writer.
                            let id = 1 + rng.below(SHARED_ROWS as u64) as i64;
                            tx.execute("update items set v = v + 1, writer = $2 where id = $1", &[&id, &(w as i32)])
                                .await
                                .unwrap();
                        }
                        6..=7 => {
                            let id: i64 = tx
                                .query_one("insert into items select nextval('item_ids'), 0, $1 returning id", &[&(w as i32)])
                                .await
                                .unwrap()
                                .get(0);
                            mine.push(id);
                        }
                        8 if !mine.is_empty() => {
                            let id = mine.remove(rng.below(mine.len() as u64) as usize);
                            tx.execute("delete from items where id = $1", &[&id]).await.unwrap();
                        }
                        _ => {
                            if let Some(&id) = mine.last() {
                                tx.execute("update items set v = v + 1 where id = $1", &[&id]).await.unwrap();
                            }
                        }
                    }
                    done += 1;
                }
                // Some transactions stay open while others commit past them (pacing, on
                // purpose: nothing to wait for).
                if rng.below(25) == 0 {
                    tokio::time::sleep(Duration::from_millis(10 + rng.below(40))).await;
                }
                if rng.below(30) == 0 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let client = db.client().await;
    let captured: i64 = client
        .query_one("select count(*) from rowcast.events", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        captured > (WRITERS * WRITES / 2) as i64,
        "only {captured} events"
    );
    db.wait_sequenced(captured).await;
    let expected: Vec<i64> = (1..=captured).collect();
    assert_eq!(
        db.positions().await,
        expected,
        "positions must be exactly 1..N"
    );

    // Every row's versions appear in increasing order in the log ...
    let rows = client
        .query(
            "select (e.data->>'id')::bigint, e.op, (e.data->>'v')::int from rowcast.log l \
             join rowcast.events e on e.id = l.event_id order by l.pos",
            &[],
        )
        .await
        .unwrap();
    let mut last_v: HashMap<i64, i32> = HashMap::new();
    for row in &rows {
        let (id, op, v): (i64, String, i32) = (row.get(0), row.get(1), row.get(2));
        if op == "UPDATE" {
            let prev = last_v.get(&id).copied().unwrap_or(0);
            assert_eq!(v, prev + 1, "row {id}: version {v} after {prev}");
        }
        last_v.insert(id, v);
    }
    // ... and reach the subscriber the same way.
    let events = ws.events(captured as usize).await;
    assert_eq!(positions(&events), expected);
    let mut last_v: HashMap<i64, i64> = HashMap::new();
    for event in &events {
        let id = event["data"]["id"].as_i64().unwrap();
        let v = event["data"]["v"].as_i64().unwrap();
        if event["op"] == "UPDATE" {
            assert_eq!(v, last_v.get(&id).copied().unwrap_or(0) + 1);
        }
        last_v.insert(id, v);
    }
}

fn handed_off(pos: i64) -> Result<Change, MalformedRow> {
    Ok(Change {
        pos,
        table: "bookings".into(),
        op: Op::Insert,
        topics: vec!["bookings".into()],
        ts: "2026-01-01T00:00:00.000Z".into(),
        data: Some(serde_json::value::to_raw_value(&serde_json::json!({ "id": pos })).unwrap()),
        old: None,
        mapping_id: None,
        kept: None,
        left_key: None,
    })
}

/// The local sequencer hands its batches to the tailer: one that follows the head is
/// published without a read, the part of one already published is skipped, and one
/// after a gap is not published (the tailer reads the log instead). The changes offered
/// here are not in the log, so only the hand-off can publish them.
#[tokio::test]
async fn the_tailer_publishes_handed_off_changes_that_follow_its_head_and_not_after_a_gap() {
    let db = TestDb::demo().await;
    let hub = Hub::new(0);
    let mut member = hub.join(64);
    hub.subscribe(member.id(), ["bookings".to_string()], false);
    let config = TailConfig {
        poll_interval: Duration::from_secs(600),
        ..TailConfig::default()
    };
    let (feed, offers) = tail::feed(&config, hub.clone());
    let shutdown = CancellationToken::new();
    let tailer = tokio::spawn(tail::run(
        rowcast::db::pg_config(&db.url).unwrap(),
        config,
        hub.clone(),
        Mappings::new(),
        offers,
        shutdown.clone(),
    ));
    wait_until("the tailer is connected", async || hub.feed_live()).await;
    let mut next = async || {
        let event = tokio::time::timeout(WAIT, member.events.recv())
            .await
            .expect("an event was published")
            .expect("the session is live");
        event.pos
    };

    feed.round().offer(vec![handed_off(1), handed_off(2)]);
    assert_eq!((next().await, next().await), (1, 2));
    feed.round().offer(vec![handed_off(5)]);
    feed.round().offer(vec![handed_off(2), handed_off(3)]);
    assert_eq!(
        next().await,
        3,
        "the gap's offer was not published, the overlap once"
    );
    assert_eq!(hub.head(), 3);

    shutdown.cancel();
    tailer.await.unwrap();
}

/// Sequential scans of `rowcast.events` and `rowcast.log` so far, as PostgreSQL's
/// statistics report them, once the service's connections have reported what they did
/// until now.
async fn sequential_scans(client: &tokio_postgres::Client) -> (i64, i64) {
    statistics_reported(client).await;
    let row = client
        .query_one(
            "select (select seq_scan from pg_stat_user_tables where relid = 'rowcast.events'::regclass), \
                    (select seq_scan from pg_stat_user_tables where relid = 'rowcast.log'::regclass)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Waits until PostgreSQL's statistics hold what every service connection did until now.
/// A backend reports when a statement ends (just before it shows as idle), at most once a
/// second: a connection idle after a statement that ended more than a second from now has
/// reported everything before now. The sequencer and the tailer run statements on timers
/// far shorter than a second; a connection still idle a second from now since before now
/// (a spare of the pool) did nothing in between and is not waited for.
async fn statistics_reported(client: &tokio_postgres::Client) {
    let now: std::time::SystemTime = client
        .query_one("select clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    let waiting = async || -> Vec<String> {
        client
            .query(
                "select 'a second from now has not passed' \
                 where clock_timestamp() <= $1::timestamptz + interval '1 second' \
                 union all \
                 select format('%s (%s since %s): %s', pid, state, state_change, query) \
                 from pg_stat_activity \
                 where datname = current_database() and application_name = 'rowcast' \
                   and not (state = 'idle' and (state_change > $1::timestamptz + interval '1 second' \
                                               or state_change < $1::timestamptz))",
                &[&now],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    if !eventually(WAIT, async || waiting().await.is_empty()).await {
        panic!(
            "the service's connections did not all report their statistics: {:?}",
            waiting().await
        );
    }
}

#[tokio::test]
async fn sequencer_rounds_keep_reading_by_index_after_starting_on_an_empty_log() {
    let db = TestDb::migrated().await;
    let writer = db.client().await;
    writer
        .batch_execute("create table ticks (id int primary key); select rowcast.watch('ticks');")
        .await
        .unwrap();
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["ticks"], None).await;
    // One event per round, so that every statement of the sequencer and of the hand-off
    // runs often enough for PostgreSQL to settle on the plan it keeps, while the tables
    // are still nearly empty.
    let mut tick = async |id: i32| {
        writer
            .execute("insert into ticks values ($1)", &[&id])
            .await
            .unwrap();
        let event = ws.recv().await;
        assert_eq!(event["data"]["id"], id);
    };
    for id in 1..=12 {
        tick(id).await;
    }
    let stats = db.client().await;
    let before = sequential_scans(&stats).await;
    for id in 13..=30 {
        tick(id).await;
    }
    let after = sequential_scans(&stats).await;
    assert_eq!(
        after, before,
        "(events, log) sequential scans while 18 more events were sequenced and delivered"
    );
}

/// The sequencing replica's tailer gets each batch from its sequencer (the read of what a
/// batch sequenced is sent in the same round trip, after the batch): while a client gets
/// every event, the tailer reads the log only as its probe (once per
/// `tail.poll_interval`) and for the odd hand-off that came too late, not once per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequencing_replica_publishes_its_batches_without_reading_them_again() {
    let db = TestDb::demo().await;
    let service = ServiceProcess::start(&db.url, None).await;
    let leads = eventually(WAIT, async || {
        metric(&service, "rowcast_sequencer_leading").await == 1.0
    })
    .await;
    assert!(leads, "the replica sequences:\n{}", service.log());
    let mut ws = WsClient::connect(service.addr).await;
    ws.subscribe(&["bookings"], None).await;

    let reads_before = metric(&service, "rowcast_tailer_reads_total").await;
    let client = db.client().await;
    let writes = 100;
    for _ in 0..writes {
        client
            .query_one(NEW_BOOKING, &[&1i64, &2i64])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut received = Vec::new();
    while received.len() < writes {
        let text = ws.recv_text().await;
        let event: serde_json::Value = serde_json::from_str(&text).unwrap();
        if event["type"] == "event" {
            received.push(event["pos"].as_i64().unwrap());
        }
    }
    let first = received[0];
    assert_eq!(
        received,
        (first..first + writes as i64).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let reads = metric(&service, "rowcast_tailer_reads_total").await - reads_before;
    assert!(
        reads < (writes / 4) as f64,
        "{reads} reads of the log by the tailer for {writes} one-event batches:\n{}",
        service.log()
    );
}
