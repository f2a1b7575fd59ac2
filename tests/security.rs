//! Authentication, topic authorization, limits and database roles.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::pipeline::NEW_BOOKING;
use crate::support::{TestApp, TestDb, WsClient, connect, eventually, positions, test_config};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rs256(claims: &Value) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/rsa_private.pem")).unwrap();
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A service with RS256 auth, audience and issuer, and the documented policy.
async fn rs256_app(db: &TestDb) -> TestApp {
    let mut config = test_config(&db.url);
    config.auth = toml::from_str(&format!(
        r#"
        algorithm = "RS256"
        public_key_file = "{FIXTURES}/rsa_public.pem"
        audience = "dashboards"
        issuer = "https://auth.example"
        leeway = "0s"
        [[allow]]
        role = "admin"
        topics = ["*"]
        [[allow]]
        topics = ["user:{{sub}}"]
        [[allow]]
        role = "provider"
        topics = ["provider:{{sub}}"]
        "#
    ))
    .unwrap();
    TestApp::start_with(config).await
}

/// How long until the clock reads `secs` (Unix seconds); zero if it has.
fn until_unix_time(secs: i64) -> Duration {
    (UNIX_EPOCH + Duration::from_secs(secs as u64))
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

fn claims(sub: &str, exp_in: i64) -> Value {
    json!({"sub": sub, "exp": now() + exp_in, "aud": "dashboards", "iss": "https://auth.example"})
}

async fn handshake_status(app: &TestApp, token: &str) -> u16 {
    let url = format!("ws://{}/ws?token={token}", app.addr);
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(err) => panic!("handshake failed oddly: {err}"),
    }
}

async fn ws_with(app: &TestApp, token: &str) -> WsClient {
    WsClient::connect_with_token(app.addr, token).await
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_before_the_upgrade() {
    let db = TestDb::demo().await;
    let app = rs256_app(&db).await;
    let good = claims("7", 60);
    assert_eq!(handshake_status(&app, &rs256(&good)).await, 101);

    let payload = b64(good.to_string().as_bytes());
    let mut bad = Vec::new();
    for alg in ["none", "NONE", "None", "nOnE"] {
        let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
        bad.push((format!("alg {alg}"), format!("{header}.{payload}.")));
    }
    // HS256 signed with the RS256 public key as the secret (algorithm confusion).
    let public = std::fs::read(format!("{FIXTURES}/rsa_public.pem")).unwrap();
    bad.push((
        "hs256 with the public key".into(),
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &good,
            &EncodingKey::from_secret(&public),
        )
        .unwrap(),
    ));
    let mut tampered = rs256(&good);
    let flip = if tampered.ends_with('A') { 'B' } else { 'A' };
    tampered.pop();
    tampered.push(flip);
    bad.push(("wrong signature".into(), tampered));
    let es = std::fs::read(format!("{FIXTURES}/ec_private.pem")).unwrap();
    bad.push((
        "es256 instead of rs256".into(),
        jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &good,
            &EncodingKey::from_ec_pem(&es).unwrap(),
        )
        .unwrap(),
    ));
    bad.push(("expired".into(), rs256(&claims("7", -120))));
    let mut early = claims("7", 600);
    early["nbf"] = json!(now() + 300);
    bad.push(("nbf in the future".into(), rs256(&early)));
    let mut aud = claims("7", 60);
    aud["aud"] = json!("someone-else");
    bad.push(("wrong audience".into(), rs256(&aud)));
    let mut iss = claims("7", 60);
    iss["iss"] = json!("https://evil.example");
    bad.push(("wrong issuer".into(), rs256(&iss)));
    bad.push(("garbage".into(), "not.a.jwt".into()));
    bad.push(("empty".into(), String::new()));
    for (what, token) in bad {
        assert_eq!(
            handshake_status(&app, &token).await,
            401,
            "{what} must be refused"
        );
    }
    // The refusal carries a JSON reason.
    match tokio_tungstenite::connect_async(format!("ws://{}/ws?token=not.a.jwt", app.addr)).await {
        Err(tungstenite::Error::Http(response)) => {
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], "unauthorized");
            assert_eq!(body["message"], "the token is invalid");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn a_token_in_the_authorization_header_is_accepted() {
    let db = TestDb::demo().await;
    let app = rs256_app(&db).await;
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws",
        app.addr
    ))
    .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", rs256(&claims("7", 60)))
            .parse()
            .unwrap(),
    );
    let (mut stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    stream
        .send(tungstenite::Message::text(
            r#"{"type":"subscribe","topics":["user:7","user:8"]}"#,
        ))
        .await
        .unwrap();
    let forbidden: Value =
        serde_json::from_str(stream.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(forbidden["code"], "forbidden");
    assert!(forbidden["message"].as_str().unwrap().contains("user:8"));
    let subscribed: Value =
        serde_json::from_str(stream.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(subscribed["topics"], json!(["user:7"]));
}

#[tokio::test]
async fn an_expiring_token_closes_the_session_unless_refreshed_for_the_same_subject() {
    let db = TestDb::demo().await;
    let app = rs256_app(&db).await;

    // Two sessions on one token that expires in 2 s; only the second is refreshed.
    let short = claims("7", 2);
    let mut expiring = ws_with(&app, &rs256(&short)).await;
    expiring.subscribe(&["user:7"], None).await;
    let mut refreshed = ws_with(&app, &rs256(&short)).await;
    refreshed.subscribe(&["user:7"], None).await;
    let fresh = claims("7", 600);
    refreshed
        .send(json!({"type": "auth", "token": rs256(&fresh)}))
        .await;
    let authed = refreshed.recv().await;
    assert_eq!(authed, json!({"type": "authed", "exp": fresh["exp"]}));
    assert_eq!(expiring.closed_with().await, 4001);
    // The server counts a token's life in whole seconds, so a session on it may last up to
    // a second past `exp`: a deadline to let pass, not a condition to wait for.
    tokio::time::sleep(until_unix_time(short["exp"].as_i64().unwrap() + 1)).await;
    refreshed.send(json!({"type": "ping"})).await;
    assert_eq!(refreshed.recv().await["type"], "pong");
    db.client()
        .await
        .query_one(NEW_BOOKING, &[&7i64, &3i64])
        .await
        .unwrap();
    assert_eq!(refreshed.events(1).await[0]["data"]["client_id"], 7);

    let mut other = ws_with(&app, &rs256(&claims("7", 600))).await;
    other.subscribe(&["user:7"], None).await;
    other
        .send(json!({"type": "auth", "token": rs256(&claims("8", 600))}))
        .await;
    assert_eq!(other.closed_with().await, 4002);

    let mut garbage = ws_with(&app, &rs256(&claims("7", 600))).await;
    garbage.send(json!({"type": "auth", "token": "nope"})).await;
    assert_eq!(garbage.closed_with().await, 4002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_never_receives_another_tenants_events_under_concurrent_writes() {
    let db = TestDb::demo().await;
    let app = rs256_app(&db).await;
    let mut a = ws_with(&app, &rs256(&claims("1", 600))).await;
    let mut b = ws_with(&app, &rs256(&claims("2", 600))).await;
    a.send(json!({"type": "subscribe", "topics": ["user:1", "user:2", "bookings"]}))
        .await;
    assert_eq!(a.recv().await["code"], "forbidden");
    assert_eq!(a.recv().await["code"], "forbidden");
    assert_eq!(a.recv().await["topics"], json!(["user:1"]));
    b.subscribe(&["user:2"], None).await;

    const EACH: i64 = 150;
    let mut writers = Vec::new();
    for client in [1i64, 2] {
        let url = db.url.clone();
        writers.push(tokio::spawn(async move {
            let writer = connect(&url).await;
            for _ in 0..EACH {
                writer
                    .query_one(NEW_BOOKING, &[&client, &9i64])
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for (ws, me) in [(&mut a, 1), (&mut b, 2)] {
        let events = ws.events(EACH as usize).await;
        assert!(events.iter().all(|e| e["data"]["client_id"] == me));
        let pos = positions(&events);
        assert!(pos.windows(2).all(|w| w[0] < w[1]));
        ws.expect_silence(Duration::from_millis(300)).await;
    }
    // A provider token may also follow its provider topic, an admin everything.
    let mut admin = ws_with(
        &app,
        &rs256(&json!({"sub": "0", "role": "admin", "exp": now() + 600,
        "aud": "dashboards", "iss": "https://auth.example"})),
    )
    .await;
    admin
        .subscribe(&["bookings", "user:1", "provider:9"], Some(0))
        .await;
    assert_eq!(
        admin.events(2 * EACH as usize).await.len(),
        2 * EACH as usize
    );
}

#[tokio::test]
async fn origins_frames_and_per_ip_connections_are_limited() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.limits.allowed_origins = vec!["https://dash.example".into()];
    config.limits.max_connections_per_ip = 3;
    let app = TestApp::start_with(config).await;

    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws",
        app.addr
    ))
    .unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 403),
        other => panic!(
            "a foreign origin must be refused, got {:?}",
            other.map(|_| ())
        ),
    }
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws",
        app.addr
    ))
    .unwrap();
    request
        .headers_mut()
        .insert("origin", "https://dash.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());

    // A 1 MiB frame closes that session with 1009; the server stays up.
    let mut big = app.ws().await;
    big.send_text(&format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(1024 * 1024)
    ))
    .await;
    assert_eq!(big.closed_with().await, 1009);

    let mut open = Vec::new();
    for _ in 0..3 {
        let mut ws = app.ws().await;
        ws.send(json!({"type": "ping"})).await;
        assert_eq!(ws.recv().await["type"], "pong");
        open.push(ws);
    }
    let url = format!("ws://{}/ws", app.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 429),
        other => panic!(
            "the fourth connection from one IP must be refused, got {:?}",
            other.map(|_| ())
        ),
    }
    drop(open.pop());
    let mut refusal = None;
    let reusable =
        eventually(
            Duration::from_secs(5),
            async || match tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr)).await {
                Ok(_) => true,
                Err(err) => {
                    refusal = Some(err.to_string());
                    false
                }
            },
        )
        .await;
    assert!(reusable, "a freed slot must be reusable: {refusal:?}");
}

#[tokio::test]
async fn subscribe_floods_are_rate_limited() {
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.limits.subscribe_rate = 0.5;
    config.limits.subscribe_burst = 3.0;
    let app = TestApp::start_with(config).await;
    let mut ws = app.ws().await;
    for i in 0..3 {
        ws.subscribe(&[&format!("user:{i}")], None).await;
    }
    ws.send(json!({"type": "subscribe", "topics": ["user:9"]}))
        .await;
    assert_eq!(ws.recv().await["code"], "rate_limited");
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await["type"], "pong");
}

#[tokio::test]
async fn the_service_role_needs_no_access_to_app_tables_and_watch_is_injection_safe() {
    let db = TestDb::demo().await;
    let admin = db.client().await;
    let role = format!("{}_svc", db.name);
    admin
        .batch_execute(&format!(
            "drop role if exists {role}; create role {role} login;
             select rowcast.grant_service('{role}');"
        ))
        .await
        .unwrap();
    let service_url = format!("{} user={role}", db.url);
    let service = connect(&service_url).await;
    assert!(service.query("select * from bookings", &[]).await.is_err());
    assert!(
        service
            .execute("delete from rowcast.events", &[])
            .await
            .is_err()
    );
    assert!(
        service
            .execute("select rowcast.watch('bookings')", &[])
            .await
            .is_err()
    );

    // The whole service runs as that role.
    let app = TestApp::start_with(test_config(&service_url)).await;
    let mut ws = app.ws().await;
    ws.subscribe(&["bookings"], Some(0)).await;
    admin.query_one(NEW_BOOKING, &[&1i64, &2i64]).await.unwrap();
    assert_eq!(ws.events(1).await[0]["pos"], 1);

    let err = admin
        .execute("select rowcast.watch('bookings; drop table bookings')", &[])
        .await
        .unwrap_err();
    assert!(err.as_db_error().is_some());
    admin
        .query_one("select count(*) from bookings", &[])
        .await
        .unwrap();
    app.stop().await;
    admin
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .ok();
}

#[tokio::test]
async fn a_table_owner_with_the_admin_grant_can_watch_its_own_tables_only() {
    let db = TestDb::demo().await;
    let admin = db.client().await;
    let owner = format!("{}_owner", db.name);
    admin
        .batch_execute(&format!(
            "drop role if exists {owner}; create role {owner} login;
             grant create on schema public to {owner};
             select rowcast.grant_admin('{owner}');"
        ))
        .await
        .unwrap();
    let client = connect(&format!("{} user={owner}", db.url)).await;
    client
        .batch_execute(
            "create table mine (id int primary key, v text); select rowcast.watch('mine');",
        )
        .await
        .expect("an owner may watch its table");
    let err = client
        .execute("select rowcast.watch('bookings')", &[])
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("only the owner"),
        "{err:?}"
    );
    client
        .batch_execute(
            "insert into mine values (1, 'x'); select rowcast.unwatch('mine'); drop table mine;",
        )
        .await
        .unwrap();
    admin
        .batch_execute(&format!("drop owned by {owner}; drop role {owner}"))
        .await
        .ok();
}

#[tokio::test]
async fn sse_and_http_polling_apply_the_same_tokens_and_policy() {
    let db = TestDb::demo().await;
    let app = rs256_app(&db).await;
    db.client()
        .await
        .query_one(NEW_BOOKING, &[&7i64, &3i64])
        .await
        .unwrap();
    db.wait_sequenced(1).await;
    let base = format!("http://{}", app.addr);
    let http = reqwest::Client::new();
    let good = rs256(&claims("7", 60));
    let expired = rs256(&claims("7", -120));
    for path in ["/events?topics=user:7", "/sse?topics=user:7"] {
        let none = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(none.status().as_u16(), 401, "{path} without a token");
        let old = http
            .get(format!("{base}{path}&token={expired}"))
            .send()
            .await
            .unwrap();
        assert_eq!(old.status().as_u16(), 401, "{path} with an expired token");
        let forbidden = http
            .get(format!("{base}{}", path.replace("user:7", "user:8")))
            .bearer_auth(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(forbidden.status().as_u16(), 403, "{path} for another user");
        let body: Value = forbidden.json().await.unwrap();
        assert_eq!(body["code"], "forbidden");
    }
    let page: Value = http
        .get(format!("{base}/events?topics=user:7&since=0"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["data"]["client_id"], 7);
    let sse = http
        .get(format!("{base}/sse?topics=user:7&since=0&token={good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status().as_u16(), 200);
}

#[tokio::test]
async fn a_client_that_does_not_finish_its_handshake_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::demo().await;
    let mut config = test_config(&db.url);
    config.limits.handshake_timeout = Duration::from_millis(500);
    let app = TestApp::start_with(config).await;
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("the server must drop a half-sent request");
    assert!(matches!(read, Ok(0) | Err(_)), "unexpected answer {read:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // An established session outlives the deadline.
    let mut ws = app.ws().await;
    // Not a wait for a condition: the 500 ms handshake deadline passes on purpose.
    tokio::time::sleep(Duration::from_millis(800)).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await["type"], "pong");
}
