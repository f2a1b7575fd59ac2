//! The dashboard in a real browser (headless Chromium), and `rowcast demo` as a process.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::pipeline::NEW_BOOKING;
use crate::support::browser::{Browser, chromium_for};
use crate::support::{TestApp, TestDb, WAIT, eventually, test_config};

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-artifacts")
        .join(name)
}

const STATUS: &str = "document.getElementById('status-text').textContent";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_row_written_with_sql_and_survives_losing_websocket() {
    // CI installs Chromium (.ci/run) and fails here without it; elsewhere this skips, saying so.
    let Some(binary) = chromium_for(
        "dashboard::the_dashboard_shows_a_row_written_with_sql_and_survives_losing_websocket",
    ) else {
        return;
    };
    let db = TestDb::demo().await;
    let app = TestApp::start(&db).await;
    let addr = app.addr;
    let mut browser = Browser::launch(&binary).await;
    browser.goto(&format!("http://{addr}/")).await;
    assert!(
        browser
            .wait_for(&format!("{STATUS}.startsWith('live')"), WAIT)
            .await,
        "the page never went live: {}",
        browser.eval(STATUS).await
    );
    let writer = db.client().await;
    writer
        .query_one(NEW_BOOKING, &[&4242i64, &77i64])
        .await
        .unwrap();
    assert!(
        browser
            .wait_for(
                "document.getElementById('feed').textContent.includes('4242')",
                WAIT
            )
            .await,
        "the booking written with SQL never appeared"
    );
    // The counts render on the next frame after the feed.
    assert!(
        browser
            .wait_for(
                "document.getElementById('b-pending').textContent === '1'",
                WAIT
            )
            .await,
        "pending bookings: {}",
        browser
            .eval("document.getElementById('b-pending').textContent")
            .await
    );
    browser.screenshot(&artifact("dashboard.png")).await;

    // The WebSocket path goes away: the server restarts with /ws turned off.
    app.stop().await;
    assert!(
        browser
            .wait_for(&format!("{STATUS} === 'reconnecting'"), WAIT)
            .await,
        "the page did not show that it is reconnecting: {}",
        browser.eval(STATUS).await
    );
    let mut config = test_config(&db.url);
    config.listen = addr;
    config.session.websocket = false;
    let _app = TestApp::start_with(config).await;
    writer
        .query_one(NEW_BOOKING, &[&5353i64, &77i64])
        .await
        .unwrap();
    assert!(
        browser
            .wait_for(
                "document.getElementById('feed').textContent.includes('5353')",
                WAIT * 3
            )
            .await,
        "no event after falling back: status {}",
        browser.eval(STATUS).await
    );
    let status = browser.eval(STATUS).await;
    let status = status.as_str().unwrap();
    assert!(
        status.contains("sse") || status.contains("polling"),
        "{status}"
    );
    browser
        .screenshot(&artifact("dashboard-fallback.png"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rowcast_demo_serves_the_page_and_produces_events_within_seconds() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rowcast"))
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--pace-ms",
            "50",
        ])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut head = 0;
    let produced = eventually(WAIT * 3, async || {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/api/stats")).await {
            let stats: serde_json::Value = response.json().await.unwrap();
            head = stats["head"].as_i64().unwrap();
        }
        head >= 10
    })
    .await;
    assert!(produced, "the demo produced only {head} events");
    let page = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/rowcast.js"));
    let js = reqwest::get(format!("http://127.0.0.1:{port}/rowcast.js"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(js.contains("export class Rowcast"));
    // SIGTERM: the demo stops its throwaway cluster and exits cleanly.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "demo exited with {status}");
}
