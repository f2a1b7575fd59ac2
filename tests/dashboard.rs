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

#[tokio::test]
async fn polling_only_clients_on_another_origin_kept_from_a_first_screen_or_a_snapshot_show_the_table()
 {
    let Some(binary) = chromium_for(
        "dashboard::polling_only_clients_on_another_origin_kept_from_a_first_screen_or_a_snapshot_show_the_table",
    ) else {
        return;
    };
    let db = TestDb::demo().await;
    let installer = db.client().await;
    installer
        .batch_execute(
            "insert into bookings (client_id, provider_id, starts_at, ends_at, price)
             select 7, 3, now(), now() + interval '1 hour', i from generate_series(1, 20) i",
        )
        .await
        .unwrap();
    installer
        .batch_execute("select rowcast.sequence()")
        .await
        .unwrap();
    // The backend's first screen: rows and head in one snapshot.
    let screen: serde_json::Value = installer
        .query_one(
            "select jsonb_build_object(
                 'rows', (select jsonb_agg(jsonb_build_object('table', 'bookings', 'data', to_jsonb(b) - 'card_token'))
                          from bookings b),
                 'head', rowcast.head())",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let app = TestApp::start(&db).await;
    let addr = app.addr;
    let mut browser = Browser::launch(&binary).await;
    // The page comes from another origin than the service.
    let page = another_origin().await;
    browser.goto(&format!("http://{page}/")).await;
    // Three clients that may only poll: one kept from the backend's first screen, one
    // from the service's /snapshot, one live only.
    browser
        .eval(&format!(
            "window.got = [];
             import('http://{addr}/rowcast.js').then((m) => {{
               const screen = {screen};
               const url = 'http://{addr}';
               window.kept = new m.Rowcast({{ url, topics: ['bookings'], transports: ['poll'], pollInterval: 100,
                                               since: screen.head, state: {{ initial: screen.rows }} }});
               window.kept.start();
               window.snap = new m.Rowcast({{ url, topics: ['bookings'], transports: ['poll'], pollInterval: 100,
                                               state: {{ snapshot: true }} }});
               // The page renders the snapshot-kept rows, one list item per row.
               const list = document.createElement('ul');
               list.id = 'rows';
               document.body.appendChild(list);
               window.snap.on('change', () => {{
                 const rows = [...(window.snap.rows.get('bookings') || new Map()).values()].sort((a, b) => a.id - b.id);
                 list.replaceChildren(...rows.map((r) => {{
                   const li = document.createElement('li');
                   li.textContent = r.id + ':' + r.status;
                   return li;
                 }}));
               }});
               window.snap.start();
               window.live = new m.Rowcast({{ url, topics: ['bookings'], transports: ['poll'], pollInterval: 100 }});
               window.live.on('*', (e) => window.got.push(e.pos));
               window.live.start();
             }});"
        ))
        .await;
    assert!(
        browser
            .wait_for(
                "window.kept && window.kept.status === 'polling' && window.snap.status === 'polling'
                 && window.live.status === 'polling' && window.live.lastPos !== null",
                WAIT
            )
            .await,
        "the clients never started polling"
    );
    assert_eq!(
        browser.eval("location.origin").await,
        format!("http://{page}")
    );
    let opened: i64 = browser.eval("window.live.lastPos").await.as_i64().unwrap();
    installer
        .batch_execute(
            "update bookings set status = 'CONFIRMED' where id % 3 = 0;
             delete from bookings where id % 5 = 0;
             insert into bookings (client_id, provider_id, starts_at, ends_at, price)
             select 8, 3, now(), now() + interval '1 hour', i from generate_series(1, 5) i;",
        )
        .await
        .unwrap();
    let expected: String = installer
        .query_one(
            "select string_agg(id || ':' || status, ',' order by id) from bookings",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rendered =
        "[...document.querySelectorAll('#rows li')].map((li) => li.textContent).join(',')";
    assert!(
        browser
            .wait_for(&format!("{rendered} === '{expected}'"), WAIT)
            .await,
        "the page shows {} and the table holds {expected}",
        browser.eval(rendered).await
    );
    for client in ["kept", "snap"] {
        let shown = format!(
            "[...window.{client}.rows.get('bookings').values()].sort((a, b) => a.id - b.id)
              .map((r) => r.id + ':' + r.status).join(',')"
        );
        assert!(
            browser
                .wait_for(&format!("{shown} === '{expected}'"), WAIT)
                .await,
            "the {client} rows {} are not the table {expected}",
            browser.eval(&shown).await
        );
    }
    // The live-only client gets what was written after it opened, and only that.
    assert!(
        browser.wait_for("window.got.length >= 10", WAIT).await,
        "the live-only client got {}",
        browser.eval("window.got").await
    );
    let got = browser.eval("window.got").await;
    let got: Vec<i64> = got
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_i64())
        .collect();
    assert!(
        !got.is_empty() && got.iter().all(|pos| *pos > opened),
        "{got:?} after {opened}"
    );
    app.stop().await;
}

/// Serves a blank page at a new address: an origin that is not the service's.
async fn another_origin() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "<!doctype html><title>another origin</title>";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}
