//! Faults on a cluster of the test's own: the service rides them out.

use crate::pipeline::NEW_BOOKING;
use crate::support::cluster::Cluster;
use crate::support::{DEMO_SQL, TestApp, TestDb, connect, positions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_across_a_postgres_restart_are_all_delivered() {
    let cluster = Cluster::start_own();
    let own = cluster.own.as_ref().expect("an own cluster");
    let db = TestDb::empty_on(&cluster).await;
    {
        let mut client = db.client().await;
        rowcast::migrate::migrate(&mut client).await.unwrap();
        client.batch_execute(DEMO_SQL).await.unwrap();
    }
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings"], None).await;
    let writer = db.client().await;
    for i in 0..10i64 {
        writer.query_one(NEW_BOOKING, &[&i, &1i64]).await.unwrap();
    }
    assert_eq!(
        positions(&ws.events(10).await),
        (1..=10).collect::<Vec<_>>()
    );

    own.stop("fast");
    own.start();
    let writer = connect(&db.url).await;
    for i in 0..10i64 {
        writer.query_one(NEW_BOOKING, &[&i, &1i64]).await.unwrap();
    }
    // The open session is fed again once the tailer and sequencer have reconnected.
    assert_eq!(
        positions(&ws.events(10).await),
        (11..=20).collect::<Vec<_>>()
    );
    app.stop().await;
}
