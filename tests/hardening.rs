//! Hardening of the HTTP side (issue 14, items 7-11): required `aud` / `iss`, no silently
//! disabled authentication, idle and half-sent connections dropped and counted per IP, a
//! `since` beyond the head never reported as the head, and operator endpoints kept off the
//! public listener.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::support::{TestApp, TestDb, WAIT, test_config};

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
