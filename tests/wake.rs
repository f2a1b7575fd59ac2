//! The wake-up flag: writers never wait on it, and an event whose writer sent no wake-up
//! is still sequenced long before the fallback timer.

use std::time::Duration;

use tokio::time::{Instant, timeout};

use crate::support::cluster::Cluster;
use crate::support::{TestApp, TestDb, WAIT, connect, eventually, test_config, wait_until};

/// Far beyond every bound checked here: an event picked up only by this timer fails.
const FALLBACK: Duration = Duration::from_secs(60);

async fn watched_items(db: &TestDb) {
    db.client()
        .await
        .batch_execute(
            "create table items (id bigserial primary key, v int not null);
             select rowcast.watch('items', wake => 'notify');",
        )
        .await
        .unwrap();
}

async fn pending(client: &tokio_postgres::Client) -> Option<bool> {
    client
        .query_opt("select pending from rowcast.wake", &[])
        .await
        .unwrap()
        .map(|row| row.get(0))
}

async fn sequenced(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("select count(*) from rowcast.log", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until `count` events have positions, or panics after `limit`.
async fn sequenced_within(client: &tokio_postgres::Client, count: i64, limit: Duration) {
    let mut n = 0;
    let done = eventually(limit, async || {
        n = sequenced(client).await;
        n >= count
    })
    .await;
    assert!(
        done,
        "only {n} of {count} events sequenced within {limit:?}"
    );
}

fn slow_fallback(db: &TestDb) -> rowcast::Config {
    let mut config = test_config(&db.url);
    config.sequencer.poll_interval = FALLBACK;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_never_wait_for_a_writer_that_set_the_wake_flag_and_stays_open() {
    let db = TestDb::migrated().await;
    watched_items(&db).await;
    let observer = db.client().await;

    // The holder writes first after a clear, so it sets the flag and holds the flag
    // row's lock until it commits, which it does not do for a while.
    let holder = db.client().await;
    holder
        .batch_execute("begin; insert into items (v) values (0);")
        .await
        .unwrap();
    assert_eq!(
        pending(&holder).await,
        Some(true),
        "the holder set the flag"
    );
    assert_eq!(
        pending(&observer).await,
        Some(false),
        "others still see it clear, so they try to take the row"
    );

    // Other writers commit promptly: none waits on the holder's row lock.
    let mut writers = Vec::new();
    for w in 0..8 {
        let url = db.url.clone();
        writers.push(tokio::spawn(async move {
            let client = connect(&url).await;
            for _ in 0..5 {
                let started = Instant::now();
                timeout(
                    Duration::from_secs(2),
                    client.execute("insert into items (v) values ($1)", &[&w]),
                )
                .await
                .expect("a writer waited on the wake flag")
                .unwrap();
                assert!(started.elapsed() < Duration::from_secs(2));
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }

    // With the service running (and a fallback timer too slow to matter) the others'
    // events are sequenced while the holder is still open, and so are later ones.
    let app = TestApp::start_with(slow_fallback(&db)).await;
    sequenced_within(&observer, 40, WAIT).await;
    let writer = db.client().await;
    for v in 0..5 {
        let started = Instant::now();
        timeout(
            Duration::from_secs(2),
            writer.execute("insert into items (v) values ($1)", &[&v]),
        )
        .await
        .expect("a writer waited on the wake flag")
        .unwrap();
        sequenced_within(&observer, 41 + v as i64, Duration::from_secs(2)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    holder.batch_execute("commit").await.unwrap();
    sequenced_within(&observer, 46, WAIT).await;
    assert_eq!(db.positions().await, (1..=46).collect::<Vec<_>>());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_writer_saw_the_flag_set_is_sequenced_long_before_the_fallback_timer() {
    // A cluster of its own: other tests' open transactions would keep the sequencer
    // re-checking, and it could clear the flag before the late writer reads it.
    let cluster = Cluster::start_own();
    let db = TestDb::empty_on(&cluster).await;
    rowcast::migrate::migrate(&mut db.client().await)
        .await
        .unwrap();
    watched_items(&db).await;
    let app = TestApp::start_with(slow_fallback(&db)).await;
    let admin = db.client().await;

    let listener = rowcast::db::Listener::connect(
        &rowcast::db::pg_config(&db.url).unwrap(),
        &["rowcast_wake"],
    )
    .await
    .unwrap();
    let late = db.client().await;
    // A wake-up is under way: the flag is set, so the late writer sends none. The
    // sequencer may clear the flag between the two statements (then the late writer
    // sets it and would NOTIFY): try again until the late writer has not taken the row.
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts <= 20, "could not build the race");
        admin
            .batch_execute("update rowcast.wake set pending = true")
            .await
            .unwrap();
        late.batch_execute("begin; insert into items (v) values (1);")
            .await
            .unwrap();
        let taken = admin
            .batch_execute("select from rowcast.wake for update nowait")
            .await
            .is_err();
        if !taken {
            break;
        }
        late.batch_execute("rollback").await.unwrap();
    }

    // The wake-up arrives: the sequencer clears the flag and reads while `late` is
    // still in progress, so `late`'s event is not in that batch.
    admin.batch_execute("notify rowcast_wake").await.unwrap();
    timeout(WAIT, listener.notified()).await.unwrap();
    wait_until("the sequencer clears the flag", async || {
        pending(&admin).await == Some(false)
    })
    .await;
    // A batch that starts after the clear (the re-checks follow it within milliseconds)
    // has ended, with `late` still in progress: the sequencing connection (the holder of
    // the leader's advisory lock) is idle after a batch, or after the read that follows
    // a batch in the same round trip, started since.
    let cleared: std::time::SystemTime = admin
        .query_one("select clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    wait_until("a batch after the clear has ended", async || {
        admin
            .query_one(
                "select exists (select from pg_stat_activity a \
                 join pg_locks l on l.pid = a.pid and l.locktype = 'advisory' \
                   and l.granted and l.objsubid = 1 \
                 where a.datname = current_database() and a.pid <> pg_backend_pid() \
                   and a.query not like '%rearm(%' and a.state = 'idle' \
                   and a.query_start > $1::timestamptz)",
                &[&cleared],
            )
            .await
            .unwrap()
            .get(0)
    })
    .await;
    assert_eq!(sequenced(&admin).await, 0);

    // `late` commits without a wake-up of its own; the re-check still finds it.
    late.batch_execute("commit").await.unwrap();
    let committed = Instant::now();
    sequenced_within(&admin, 1, Duration::from_secs(2)).await;
    assert!(
        timeout(Duration::from_millis(100), listener.notified())
            .await
            .is_err(),
        "the late writer sent a wake-up, so this test did not build the race"
    );
    assert!(committed.elapsed() < FALLBACK / 10);
    app.stop().await;
}

#[tokio::test]
async fn writers_wake_the_sequencer_when_the_flag_row_is_gone_and_the_sequencer_re_seeds_it() {
    let db = TestDb::migrated().await;
    watched_items(&db).await;
    let admin = db.client().await;
    // What a crash does to the unlogged table.
    admin
        .batch_execute("delete from rowcast.wake")
        .await
        .unwrap();
    let listener = rowcast::db::Listener::connect(
        &rowcast::db::pg_config(&db.url).unwrap(),
        &["rowcast_wake"],
    )
    .await
    .unwrap();
    for v in 0..2 {
        admin
            .execute("insert into items (v) values ($1)", &[&v])
            .await
            .unwrap();
        timeout(Duration::from_secs(2), listener.notified())
            .await
            .expect("a writer finding no flag row must NOTIFY");
    }
    assert_eq!(pending(&admin).await, None);

    let app = TestApp::start_with(slow_fallback(&db)).await;
    sequenced_within(&admin, 2, WAIT).await;
    assert_eq!(pending(&admin).await, Some(false), "re-seeded");
    app.stop().await;
}

#[tokio::test]
async fn a_repeatable_read_writer_wakes_the_sequencer_even_when_the_flag_is_set() {
    let db = TestDb::migrated().await;
    watched_items(&db).await;
    let admin = db.client().await;
    admin
        .batch_execute("update rowcast.wake set pending = true")
        .await
        .unwrap();
    let listener = rowcast::db::Listener::connect(
        &rowcast::db::pg_config(&db.url).unwrap(),
        &["rowcast_wake"],
    )
    .await
    .unwrap();
    admin
        .batch_execute(
            "begin isolation level repeatable read; insert into items (v) values (1); commit;",
        )
        .await
        .unwrap();
    timeout(Duration::from_secs(2), listener.notified())
        .await
        .expect("a repeatable-read writer must NOTIFY");
    // A read-committed writer sees the flag set and stays quiet.
    admin
        .execute("insert into items (v) values (2)", &[])
        .await
        .unwrap();
    assert!(
        timeout(Duration::from_millis(300), listener.notified())
            .await
            .is_err()
    );
}

/// Whether the flag's hint (the sequence writers read instead of the flag row) is set.
async fn hint(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "select pg_sequence_last_value('rowcast.wake_hint') is not null",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_hint_follows_the_flag_and_a_hint_left_by_a_rolled_back_writer_is_cleared_by_the_next_round()
 {
    let db = TestDb::migrated().await;
    watched_items(&db).await;
    let admin = db.client().await;
    let listener = rowcast::db::Listener::connect(
        &rowcast::db::pg_config(&db.url).unwrap(),
        &["rowcast_wake"],
    )
    .await
    .unwrap();
    assert!(!hint(&admin).await);
    // The first writer sets the flag and the hint; the next one reads the hint and
    // sends nothing.
    admin
        .batch_execute("insert into items (v) values (1)")
        .await
        .unwrap();
    timeout(WAIT, listener.notified()).await.unwrap();
    assert_eq!(pending(&admin).await, Some(true));
    assert!(hint(&admin).await);
    admin
        .batch_execute("insert into items (v) values (2)")
        .await
        .unwrap();
    assert!(
        timeout(Duration::from_millis(300), listener.notified())
            .await
            .is_err()
    );

    // A round clears both.
    let app = TestApp::start_with(slow_fallback(&db)).await;
    sequenced_within(&admin, 2, WAIT).await;
    wait_until("a round clears the flag and the hint", async || {
        pending(&admin).await == Some(false) && !hint(&admin).await
    })
    .await;
    app.stop().await;

    // A writer that sets both and rolls back leaves the hint set (it is not
    // transactional) but not the flag; the sequencer's next round clears the hint.
    admin
        .batch_execute("begin; insert into items (v) values (3); rollback;")
        .await
        .unwrap();
    assert_eq!(pending(&admin).await, Some(false));
    assert!(hint(&admin).await);
    let app = TestApp::start_with(slow_fallback(&db)).await;
    wait_until("a round clears the hint", async || !hint(&admin).await).await;
    // And the next writer wakes the sequencer again.
    admin
        .batch_execute("insert into items (v) values (4)")
        .await
        .unwrap();
    sequenced_within(&admin, 3, WAIT).await;
    app.stop().await;
}
