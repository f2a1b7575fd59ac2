//! Operator endpoints: metrics, readiness, stats.

use std::time::Duration;

use crate::pipeline::NEW_BOOKING;
use crate::support::cluster::Cluster;
use crate::support::{DEMO_SQL, TestApp, TestDb, WAIT, eventually, wait_until};

async fn get(app: &TestApp, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{}{path}", app.addr))
        .await
        .expect("http request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Parses Prometheus text: every non-comment line is `name{labels} value`.
fn metric(text: &str, name: &str) -> f64 {
    let mut total = 0.0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("metric line has a value");
        let value: f64 = value.parse().expect("metric value is a number");
        let base = series.split('{').next().unwrap();
        if base == name {
            total += value;
        }
    }
    total
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_counters_move_after_writes() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings"], None).await;
    let (status, before) = get(&app, "/metrics").await;
    assert_eq!(status, 200);
    let published = metric(&before, "rowcast_events_published_total");
    let delivered = metric(&before, "rowcast_deliveries_total");
    let writer = db.client().await;
    for i in 0..5i64 {
        writer.query_one(NEW_BOOKING, &[&i, &1i64]).await.unwrap();
    }
    ws.events(5).await;
    let (_, after) = get(&app, "/metrics").await;
    // Counters are process-wide and other tests run alongside: they only grow.
    assert!(metric(&after, "rowcast_events_published_total") >= published + 5.0);
    assert!(metric(&after, "rowcast_deliveries_total") >= delivered + 5.0);
    assert!(
        after.contains("# TYPE rowcast_deliveries_total counter"),
        "{after}"
    );
    assert!(
        metric(&after, "rowcast_sequencer_round_seconds_count") > 0.0,
        "{after}"
    );

    let (status, body) = get(&app, "/api/stats").await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["head"], 5);
    assert_eq!(stats["feed_live"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_unready_when_postgres_goes_away_and_ready_again_after() {
    let cluster = Cluster::start_own();
    let own = cluster.own.as_ref().unwrap();
    let db = TestDb::empty_on(&cluster).await;
    {
        let mut client = db.client().await;
        rowcast::migrate::migrate(&mut client).await.unwrap();
        client.batch_execute(DEMO_SQL).await.unwrap();
    }
    let app = TestApp::start(&db).await;
    wait_until("the service is ready", async || {
        get(&app, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(get(&app, "/healthz").await.0, 200);
    own.stop("fast").unwrap();
    let (status, body) = get(&app, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        get(&app, "/healthz").await.0,
        200,
        "the process is still healthy"
    );
    own.resume().unwrap();
    let mut body = String::new();
    let ready = eventually(WAIT, async || {
        let status;
        (status, body) = get(&app, "/readyz").await;
        status == 200
    })
    .await;
    assert!(ready, "not ready again: {body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_with_1001_and_exits_0() {
    let db = TestDb::demo().await;
    let service = crate::support::service::ServiceProcess::start(&db.url, None).await;
    let mut ws = crate::support::WsClient::connect(service.addr).await;
    ws.subscribe(&["bookings"], None).await;
    let started = tokio::time::Instant::now();
    let exiting = tokio::spawn(service.terminate());
    assert_eq!(ws.closed_with().await, 1001);
    let status = exiting.await.unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn dashboards_on_other_origins_may_load_the_client_and_poll() {
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let client = reqwest::Client::new();
    let js = client
        .get(format!("http://{}/rowcast.js", app.addr))
        .header("origin", "https://dash.example")
        .send()
        .await
        .unwrap();
    assert_eq!(js.headers()["access-control-allow-origin"], "*");
    let preflight = client
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{}/events?topics=bookings", app.addr),
        )
        .header("origin", "https://dash.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
}
