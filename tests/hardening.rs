//! Hardening of the HTTP side (issue 14, items 7-11): required `aud` / `iss`, no silently
//! disabled authentication, idle and half-sent connections dropped and counted per IP, a
//! `since` beyond the head never reported as the head, and operator endpoints kept off the
//! public listener.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;

use crate::pipeline::NEW_BOOKING;
use crate::support::{TestApp, TestDb, WAIT, eventually, sse, test_config, wait_until};

const SECRET: &str = "a-hardening-test-secret-long-enough";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The status of a WebSocket handshake on `/ws?token=` (101 when upgraded).
async fn ws_status(app: &TestApp, token: &str) -> u16 {
    let url = format!("ws://{}/ws?token={token}", app.addr);
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("websocket handshake timed out")
    {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(err) => panic!("handshake failed oddly: {err}"),
    }
}

/// The status and body of `GET <path>` with `Authorization: Bearer <token>` (the body is
/// read only when it is not a stream).
async fn get_with(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("http request timed out")
        .expect("http request failed");
    let status = response.status().as_u16();
    let streaming = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
    if streaming {
        return (status, String::new());
    }
    let body = tokio::time::timeout(WAIT, response.text())
        .await
        .expect("http body timed out")
        .unwrap();
    (status, body)
}

// ---- item 7: a configured audience or issuer is required -------------------------------

#[tokio::test]
async fn tokens_without_the_configured_aud_or_iss_are_refused_on_ws_sse_and_http() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.auth.algorithm = Some("HS256".into());
    config.auth.secret = Some(SECRET.into());
    config.auth.audience = Some("dashboards".into());
    config.auth.issuer = Some("https://auth.example".into());
    let app = TestApp::start_with(config).await;

    let full =
        json!({"sub": "7", "exp": now() + 600, "aud": "dashboards", "iss": "https://auth.example"});
    let without = |claim: &str| {
        let mut claims = full.clone();
        claims.as_object_mut().unwrap().remove(claim);
        hs256(&claims)
    };
    let mut neither = full.clone();
    neither.as_object_mut().unwrap().remove("aud");
    neither.as_object_mut().unwrap().remove("iss");
    let refused = [
        ("no aud", without("aud"), &["aud"][..]),
        ("no iss", without("iss"), &["iss"]),
        // Either missing claim may be the one named.
        ("neither aud nor iss", hs256(&neither), &["aud", "iss"]),
    ];
    for (what, token, claims) in &refused {
        assert_eq!(ws_status(&app, token).await, 401, "/ws with {what}");
        for path in ["/sse?topics=user:7", "/events?topics=user:7"] {
            let (status, body) = get_with(app.addr, path, Some(token)).await;
            assert_eq!(status, 401, "{path} with {what}: {body}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["code"], "unauthorized");
            let message = body["message"].as_str().unwrap();
            assert!(
                claims
                    .iter()
                    .any(|claim| message.contains(&format!("no {claim} claim"))),
                "{path} with {what}: {message}"
            );
        }
    }

    let good = hs256(&full);
    assert_eq!(ws_status(&app, &good).await, 101, "/ws with aud and iss");
    for path in ["/sse?topics=user:7", "/events?topics=user:7"] {
        let (status, body) = get_with(app.addr, path, Some(&good)).await;
        assert_eq!(status, 200, "{path} with aud and iss: {body}");
    }
    app.stop().await;
}

// ---- item 8: a secret alone turns HS256 on; a key without its algorithm refuses --------

#[tokio::test]
async fn a_secret_without_an_algorithm_turns_hs256_authentication_on() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.auth.secret = Some(SECRET.into());
    assert_eq!(config.auth.algorithm, None);
    let app = TestApp::start_with(config).await;

    let token = hs256(&json!({"sub": "7", "exp": now() + 600}));
    assert_eq!(ws_status(&app, "").await, 401, "/ws without a token");
    assert_eq!(ws_status(&app, "not.a.jwt").await, 401, "/ws with garbage");
    assert_eq!(
        ws_status(&app, &token).await,
        101,
        "/ws with an HS256 token"
    );
    for path in ["/sse?topics=user:7", "/events?topics=user:7"] {
        assert_eq!(get_with(app.addr, path, None).await.0, 401, "{path}");
        assert_eq!(
            get_with(app.addr, path, Some(&token)).await.0,
            200,
            "{path}"
        );
        let other = path.replace("user:7", "user:8");
        assert_eq!(
            get_with(app.addr, &other, Some(&token)).await.0,
            403,
            "{other}: the default policy applies"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_public_key_without_an_algorithm_refuses_to_start_and_says_what_is_missing() {
    let db = TestDb::migrated().await;
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa_public.pem");
    let mut config = test_config(&db.url);
    config.auth.public_key_file = Some(key.into());
    let err = match rowcast::Application::build(config).await {
        Ok(_) => panic!("a public key without auth.algorithm must not start"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("auth.algorithm"), "{err}");
    assert!(err.contains("RS256") && err.contains("ES256"), "{err}");

    // An audience with no key at all would be ignored: refused too.
    let mut config = test_config(&db.url);
    config.auth.audience = Some("dashboards".into());
    let err = match rowcast::Application::build(config).await {
        Ok(_) => panic!("auth.audience without a key must not start"),
        Err(err) => err.to_string(),
    };
    assert!(
        err.contains("auth.audience") && err.contains("auth.secret"),
        "{err}"
    );
}

#[tokio::test]
async fn rowcast_serve_with_a_public_key_but_no_algorithm_exits_with_the_reason() {
    let db = TestDb::migrated().await;
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa_public.pem");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rowcast"));
    command
        .args([
            "serve",
            "--database-url",
            &db.url,
            "--listen",
            "127.0.0.1:0",
        ])
        .env("ROWCAST_AUTH__PUBLIC_KEY_FILE", key)
        .env_remove("ROWCAST_AUTH__ALGORITHM")
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("rowcast serve must exit, not serve without authentication")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("auth.algorithm"), "{stderr}");
    assert!(!stderr.contains("rowcast listening"), "{stderr}");
}

// ---- item 9: idle and half-sent connections are dropped, and every one counts per IP ---

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: rowcast\r\n\r\n";

/// Reads one HTTP/1.1 response (headers and a `Content-Length` body) within [`WAIT`].
async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let read = async {
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.expect("reading a response");
            assert_eq!(n, 1, "the connection closed before a response: {raw:?}");
            raw.push(byte[0]);
        }
        let head = String::from_utf8(raw).unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .expect("a content-length");
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        (status, head, String::from_utf8(body).unwrap())
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("no response within the wait")
}

/// How long after the call the server closed the connection (nothing else may arrive).
async fn closed_after(stream: &mut TcpStream) -> Duration {
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("the server must close the connection within the wait");
    match read {
        Ok(0) | Err(_) => started.elapsed(),
        Ok(n) => panic!(
            "expected the connection to close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
}

async fn healthz_on(stream: &mut TcpStream) {
    stream.write_all(HEALTHZ).await.unwrap();
    let (status, _, body) = read_response(stream).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn a_kept_alive_connection_that_sends_nothing_more_is_closed_after_the_idle_timeout() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.limits.idle_timeout = Duration::from_millis(500);
    config.limits.handshake_timeout = Duration::from_secs(5);
    let app = TestApp::start_with(config).await;

    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // Kept alive: two requests on one connection, each answered.
    healthz_on(&mut stream).await;
    healthz_on(&mut stream).await;
    let closed = closed_after(&mut stream).await;
    assert!(
        closed >= Duration::from_millis(400),
        "closed after {closed:?}, before the idle timeout"
    );
    assert!(closed < Duration::from_secs(3), "closed after {closed:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_half_sent_second_request_on_a_kept_alive_connection_is_dropped() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    // Far longer than the test's waits: only the header timeout can close it.
    config.limits.idle_timeout = Duration::from_secs(600);
    config.limits.handshake_timeout = Duration::from_millis(500);
    let app = TestApp::start_with(config).await;

    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    healthz_on(&mut stream).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: rowcast\r\n")
        .await
        .unwrap();
    let closed = closed_after(&mut stream).await;
    assert!(closed < Duration::from_secs(3), "closed after {closed:?}");

    // The same for a request trickling in byte by byte, slower than the header timeout.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    healthz_on(&mut stream).await;
    let trickle = async {
        for byte in b"GET /healthz HTTP/1.1\r\n" {
            if stream.write_all(&[*byte]).await.is_err() {
                return;
            }
            // Trickling on purpose, slower than the header timeout.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT, trickle).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("a trickled request must be dropped");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "got {:?}",
        String::from_utf8_lossy(&rest)
    );
    app.stop().await;
}

#[tokio::test]
async fn idle_http_connections_count_toward_max_connections_per_ip() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.limits.max_connections_per_ip = 3;
    config.limits.idle_timeout = Duration::from_secs(600);
    config.limits.handshake_timeout = Duration::from_secs(1);
    let app = TestApp::start_with(config).await;

    // Three plain HTTP connections, answered once each and then idle: no session among them.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        healthz_on(&mut stream).await;
        idle.push(stream);
    }
    // A fourth is refused with 429 and closed.
    let mut fourth = TcpStream::connect(app.addr).await.unwrap();
    fourth
        .write_all(b"GET /events?topics=bookings HTTP/1.1\r\nHost: rowcast\r\n\r\n")
        .await
        .unwrap();
    let (status, head, body) = read_response(&mut fourth).await;
    assert_eq!(status, 429, "{head}{body}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "too_many_connections");
    closed_after(&mut fourth).await;
    // So is a WebSocket upgrade.
    match tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr)),
    )
    .await
    .unwrap()
    {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 429),
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    // And one beyond the limit that sends nothing is closed, not held.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    closed_after(&mut silent).await;

    // The idle ones are still served; closing one frees its slot.
    healthz_on(&mut idle[0]).await;
    drop(idle.pop());
    wait_until("a closed connection's slot is freed", async || {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(HEALTHZ).await.unwrap();
        read_response(&mut stream).await.0 == 200
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn sse_streams_and_websocket_sessions_outlive_the_idle_and_header_timeouts() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.limits.idle_timeout = Duration::from_millis(300);
    config.limits.handshake_timeout = Duration::from_millis(300);
    let app = TestApp::start_with(config).await;

    let mut stream = sse::open(app.addr, "topics=bookings", None)
        .await
        .expect("an sse stream");
    assert_eq!(stream.next().await.event.as_deref(), Some("subscribed"));
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings"], None).await;
    // Several idle and header timeouts pass without a byte on either (the SSE keep-alive
    // and the WebSocket ping are 15 s and 20 s away). Not a wait for a condition: the
    // timeouts pass on purpose.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    db.client()
        .await
        .query_one(NEW_BOOKING, &[&7i64, &3i64])
        .await
        .unwrap();
    assert_eq!(ws.events(1).await[0]["event"], "booking.created");
    assert_eq!(stream.events(1).await[0]["event"], "booking.created");
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await["type"], "pong");
    app.stop().await;
}

// ---- item 10: a `since` beyond the head is never reported as the head -------------------

#[tokio::test]
async fn a_since_beyond_the_head_is_never_reported_as_the_head_on_http_sse_or_ws() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.session.catch_up_wait = Duration::from_millis(300);
    let app = TestApp::start_with(config).await;
    let writer = db.client().await;
    for i in 0..6i64 {
        writer.query_one(NEW_BOOKING, &[&i, &1i64]).await.unwrap();
    }
    app.wait_head(6).await;
    let huge = i64::MAX;

    // HTTP: after the catch-up wait, no events and the replica's real head.
    let started = tokio::time::Instant::now();
    let (status, page) =
        sse::get_json(app.addr, &format!("/events?topics=bookings&since={huge}")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page, json!({"events": [], "head": 6, "more": false}));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "answered before the catch-up wait"
    );

    // SSE, by ?since and by Last-Event-ID: `subscribed` carries the real head.
    let mut by_since = sse::open(app.addr, &format!("topics=bookings&since={huge}"), None)
        .await
        .expect("an sse stream");
    let mut by_id = sse::open(app.addr, "topics=bookings", Some(&huge.to_string()))
        .await
        .expect("an sse stream");
    for stream in [&mut by_since, &mut by_id] {
        let subscribed = stream.next().await;
        assert_eq!(subscribed.event.as_deref(), Some("subscribed"));
        assert_eq!(subscribed.json()["head"], 6);
    }

    // WebSocket: `subscribed.head` is the real head too.
    let mut ws = app.ws().await;
    let subscribed = ws.subscribe(&["bookings"], Some(huge)).await;
    assert_eq!(subscribed["head"], 6);

    // Position 7 is at or below the client's position: the session waits for the
    // replica to pass it (it never will here) and sends nothing, as the protocol says.
    writer
        .query_one(NEW_BOOKING, &[&7i64, &1i64])
        .await
        .unwrap();
    app.wait_head(7).await;
    ws.expect_silence(Duration::from_millis(300)).await;
    for stream in [&mut by_since, &mut by_id] {
        if let Some(block) = stream.block_within(Duration::from_millis(300)).await {
            assert!(block.comment.is_some(), "unexpected {block:?}");
        }
    }
    let (_, page) = sse::get_json(app.addr, &format!("/events?topics=bookings&since={huge}")).await;
    assert_eq!(page["head"], 7);
    app.stop().await;
}

#[tokio::test]
async fn an_http_poll_ahead_of_the_replica_waits_for_it_to_catch_up() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.session.catch_up_wait = WAIT / 2;
    let app = TestApp::start_with(config).await;
    let writer = db.client().await;
    for i in 0..3i64 {
        writer.query_one(NEW_BOOKING, &[&i, &1i64]).await.unwrap();
    }
    app.wait_head(3).await;

    // A client that saw position 4 elsewhere polls this replica, which is at 3; positions
    // 4 and 5 are committed while it waits.
    let url = db.url.clone();
    let later = tokio::spawn(async move {
        // Not a wait for a condition: these commits come later on purpose, while the
        // poll waits (the server shows no sign of a poll in progress to wait on).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut client = crate::support::connect(&url).await;
        let tx = client.transaction().await.unwrap();
        for i in 4..6i64 {
            tx.query_one(NEW_BOOKING, &[&i, &1i64]).await.unwrap();
        }
        tx.commit().await.unwrap();
    });
    let started = tokio::time::Instant::now();
    let (status, page) = sse::get_json(app.addr, "/events?topics=bookings&since=4").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "it did not wait"
    );
    let head = page["head"].as_i64().unwrap();
    assert!((4..=5).contains(&head), "{page}");
    let positions = crate::support::positions(page["events"].as_array().unwrap());
    let expected: Vec<i64> = (5..=head).collect();
    assert_eq!(positions, expected, "{page}");
    later.await.unwrap();
    app.stop().await;
}

// ---- item 11: operator endpoints off the public listener -------------------------------

/// The service with an operator listener: its two addresses, and a way to stop it.
struct WithOperator {
    public: std::net::SocketAddr,
    operator: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl WithOperator {
    async fn start(mut config: rowcast::Config) -> WithOperator {
        config.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let app = rowcast::Application::build(config)
            .await
            .expect("starting rowcast");
        let public = app.local_addr();
        let operator = app.metrics_addr().expect("an operator listener");
        assert_ne!(public, operator);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            app.run(token).await.expect("rowcast stopped with an error");
        });
        WithOperator {
            public,
            operator,
            shutdown,
            handle,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("rowcast did not stop in time")
            .unwrap();
    }
}

fn auth_on(config: &mut rowcast::Config) {
    config.auth.algorithm = Some("HS256".into());
    config.auth.secret = Some(SECRET.into());
}

/// Polls `/readyz` until it answers 200 (bounded).
async fn wait_ready(addr: std::net::SocketAddr, token: Option<&str>) {
    let mut last = (0, String::new());
    let ready = eventually(WAIT, async || {
        last = get_with(addr, "/readyz", token).await;
        last.0 == 200
    })
    .await;
    assert!(ready, "never ready: {} {}", last.0, last.1);
}

#[tokio::test]
async fn with_an_operator_listener_metrics_stats_and_readiness_leave_the_public_one() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    auth_on(&mut config);
    let app = WithOperator::start(config).await;
    let admin = hs256(&json!({"sub": "1", "role": "admin", "exp": now() + 600}));

    // The operator listener serves them, without a token.
    wait_ready(app.operator, None).await;
    let (status, metrics) = get_with(app.operator, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("# TYPE rowcast_"), "{metrics}");
    let (status, stats) = get_with(app.operator, "/api/stats", None).await;
    assert_eq!(status, 200, "{stats}");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["feed_live"], true);
    assert_eq!(get_with(app.operator, "/healthz", None).await.0, 200);
    // ... and nothing of the public API.
    assert_eq!(
        get_with(app.operator, "/events?topics=user:1", None)
            .await
            .0,
        404
    );

    // The public listener does not serve them at all, not even to an admin token; it
    // keeps /healthz (cheap, says nothing) and its API.
    for path in ["/metrics", "/api/stats", "/readyz"] {
        assert_eq!(get_with(app.public, path, None).await.0, 404, "{path}");
        assert_eq!(
            get_with(app.public, path, Some(&admin)).await.0,
            404,
            "{path} with an admin token"
        );
    }
    assert_eq!(get_with(app.public, "/healthz", None).await.0, 200);
    assert_eq!(
        get_with(app.public, "/events?topics=bookings", Some(&admin))
            .await
            .0,
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn with_auth_on_and_no_operator_listener_operator_endpoints_need_an_operator_token() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    auth_on(&mut config);
    let app = TestApp::start_with(config).await;
    let admin = hs256(&json!({"sub": "1", "role": "admin", "exp": now() + 600}));
    let user = hs256(&json!({"sub": "7", "exp": now() + 600}));
    let expired = hs256(&json!({"sub": "1", "role": "admin", "exp": now() - 600}));

    wait_ready(app.addr, Some(&admin)).await;
    for path in ["/metrics", "/api/stats", "/readyz"] {
        let (status, body) = get_with(app.addr, path, None).await;
        assert_eq!(status, 401, "{path} without a token: {body}");
        assert_eq!(
            get_with(app.addr, path, Some(&expired)).await.0,
            401,
            "{path} with an expired token"
        );
        let (status, body) = get_with(app.addr, path, Some(&user)).await;
        assert_eq!(status, 403, "{path} for a user token: {body}");
        assert!(body.contains("metrics_listen"), "{body}");
        assert_eq!(
            get_with(app.addr, path, Some(&admin)).await.0,
            200,
            "{path} with an admin token"
        );
        let (status, _) = get_with(app.addr, &format!("{path}?token={admin}"), None).await;
        assert_eq!(status, 200, "{path} with ?token=");
    }
    // Liveness stays open: it costs nothing and says nothing.
    assert_eq!(get_with(app.addr, "/healthz", None).await.0, 200);
    app.stop().await;
}
