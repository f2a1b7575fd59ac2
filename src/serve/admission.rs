//! Admission: what a connection and a request must pass. Every TCP connection counts
//! toward `max_connections_per_ip` from accept to close ([`Connections::admit`], called
//! by [`super::listen`]), whatever it carries: a WebSocket, an SSE stream, or plain
//! HTTP kept alive between polls. A session must then pass the Origin allow-list
//! (cross-site WebSocket hijacking), the token ([`super::auth`]) and the replica's
//! session limit (`max_connections`). A refusal is an HTTP error with a JSON body, sent
//! before any upgrade, and counted.
//!
//! Also the per-session subscribe rate limit ([`RateLimit`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppContext;
use super::auth::{AuthError, Principal, token_of};
use super::protocol::ErrorCode;

/// Limits on connections and requests (`[limits]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most open sessions (WebSocket and SSE) on this replica.
    pub max_connections: usize,
    /// Most open TCP connections from one IP address, of any kind (WebSocket, SSE, plain
    /// HTTP kept alive), counted from accept to close. A connection beyond it is answered
    /// `429` and closed.
    pub max_connections_per_ip: usize,
    /// Sustained `subscribe`/`unsubscribe` messages per second per session.
    pub subscribe_rate: f64,
    /// Burst of `subscribe`/`unsubscribe` messages allowed above the rate.
    pub subscribe_burst: f64,
    /// Time a client has to send a request's headers: its first request after
    /// connecting, and any further request on a kept-alive connection from its first
    /// byte. A connection that takes longer is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: std::time::Duration,
    /// How long a kept-alive HTTP connection may stay idle between a response and the
    /// next request before it is closed. WebSocket sessions and SSE streams are not idle
    /// while they are open (they have their own heartbeats).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: std::time::Duration,
    /// Origins allowed to open sessions from a browser (`https://app.example.com`);
    /// empty allows any. Requests without an Origin header (non-browser clients) pass.
    pub allowed_origins: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 50_000,
            max_connections_per_ip: 1_000,
            subscribe_rate: 10.0,
            subscribe_burst: 50.0,
            handshake_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(30),
            allowed_origins: Vec::new(),
        }
    }
}

/// Counts open sessions on this replica, and open connections per IP.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    sessions: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One open session's share of `max_connections`; released on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    connections: Arc<Connections>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.connections.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open connection's share of `max_connections_per_ip`; released on drop (when the
/// connection closes).
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per_ip = self.connections.lock_per_ip();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Connections {
    /// Open sessions now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Open connections from `ip` now.
    #[cfg(test)]
    pub(crate) fn count_from(&self, ip: IpAddr) -> usize {
        self.lock_per_ip().get(&ip).copied().unwrap_or(0)
    }

    fn lock_per_ip(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `ip`, or refuses it (429) when that address already
    /// has `max_connections_per_ip` open.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &LimitsConfig,
    ) -> Result<ConnectionPermit, HttpRefusal> {
        let mut per_ip = self.lock_per_ip();
        let open = per_ip.entry(ip).or_insert(0);
        if *open >= limits.max_connections_per_ip {
            if *open == 0 {
                per_ip.remove(&ip);
            }
            return Err(HttpRefusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyConnections,
                "too many connections from this address",
            ));
        }
        *open += 1;
        Ok(ConnectionPermit {
            connections: self.clone(),
            ip,
        })
    }

    fn acquire_session(self: &Arc<Self>, limits: &LimitsConfig) -> Result<Permit, HttpRefusal> {
        let admitted = self
            .sessions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limits.max_connections).then_some(n + 1)
            });
        match admitted {
            Ok(_) => Ok(Permit {
                connections: self.clone(),
            }),
            Err(_) => Err(HttpRefusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::TooManyConnections,
                "this server has reached its connection limit; retry later or use another replica",
            )),
        }
    }
}

/// A refused HTTP request: a status and a JSON error body with its [`ErrorCode`].
#[derive(Debug, Clone)]
pub struct HttpRefusal {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl HttpRefusal {
    /// A refusal with a status, an error code and a message.
    pub(crate) fn new(
        status: StatusCode,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> HttpRefusal {
        HttpRefusal {
            status,
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<AuthError> for HttpRefusal {
    fn from(err: AuthError) -> Self {
        HttpRefusal::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            err.to_string(),
        )
    }
}

impl IntoResponse for HttpRefusal {
    fn into_response(self) -> Response {
        metrics::counter!(crate::metrics::REFUSALS, "code" => self.code.as_str()).increment(1);
        let mut response = (
            self.status,
            Json(serde_json::json!({"type": "error", "code": self.code, "message": self.message})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Verifies the request's token (any principal is allowed everything when auth is off).
pub(crate) fn authenticate(
    ctx: &AppContext,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Principal, HttpRefusal> {
    match &ctx.auth {
        None => Ok(Principal::anonymous()),
        Some(auth) => {
            let token = token_of(headers, query_token).ok_or(AuthError::Missing)?;
            Ok(auth.verify(token)?)
        }
    }
}

/// Admits a request for an operator endpoint (`/readyz`, `/metrics`, `/api/stats`) on the
/// public listener: anyone when authentication is off, else a valid token with the
/// operator role (`auth.operator_role`): `401` without one, `403` for another role.
pub(crate) fn admit_operator(
    ctx: &AppContext,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(), HttpRefusal> {
    let Some(auth) = &ctx.auth else {
        return Ok(());
    };
    let token = token_of(headers, query_token).ok_or(AuthError::Missing)?;
    if auth.is_operator(token)? {
        Ok(())
    } else {
        Err(HttpRefusal::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this endpoint is for operators: send a token with the operator role, or use the operator listener (metrics_listen)",
        ))
    }
}

/// Admits a session: Origin, token, then a session permit. (Its connection was counted
/// against its address when it was accepted.)
pub(crate) fn admit_session(
    ctx: &AppContext,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(Principal, Permit), HttpRefusal> {
    check_origin(&ctx.limits, headers)?;
    let principal = authenticate(ctx, headers, query_token)?;
    let permit = ctx.connections.acquire_session(&ctx.limits)?;
    Ok((principal, permit))
}

fn check_origin(limits: &LimitsConfig, headers: &HeaderMap) -> Result<(), HttpRefusal> {
    if limits.allowed_origins.is_empty() {
        return Ok(());
    }
    match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => Ok(()),
        Some(Ok(origin)) if limits.allowed_origins.iter().any(|o| o == origin) => Ok(()),
        Some(_) => Err(HttpRefusal::new(
            StatusCode::FORBIDDEN,
            ErrorCode::OriginNotAllowed,
            "this Origin may not open sessions on this server",
        )),
    }
}

/// A token bucket: `rate` per second, up to `burst` at once.
#[derive(Debug)]
pub(crate) struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket.
    pub(crate) fn new(rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            rate,
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_refuses() {
        let mut bucket = RateLimit::new(0.0, 3.0);
        assert!(bucket.try_take() && bucket.try_take() && bucket.try_take());
        assert!(!bucket.try_take());
    }

    #[test]
    fn connections_count_per_ip_and_release_on_drop() {
        let connections = Arc::new(Connections::default());
        let limits = LimitsConfig {
            max_connections_per_ip: 2,
            ..LimitsConfig::default()
        };
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = connections.admit(ip, &limits).unwrap();
        let _b = connections.admit(ip, &limits).unwrap();
        assert_eq!(
            connections.admit(ip, &limits).unwrap_err().status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(connections.count_from(ip), 2);
        assert!(
            connections
                .admit("10.0.0.2".parse().unwrap(), &limits)
                .is_ok()
        );
        drop(a);
        assert_eq!(connections.count_from(ip), 1);
        assert!(connections.admit(ip, &limits).is_ok());
    }

    #[test]
    fn sessions_count_toward_the_replica_limit_and_release_on_drop() {
        let connections = Arc::new(Connections::default());
        let limits = LimitsConfig {
            max_connections: 1,
            ..LimitsConfig::default()
        };
        let a = connections.acquire_session(&limits).unwrap();
        assert_eq!(
            connections.acquire_session(&limits).unwrap_err().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(connections.open(), 1);
        drop(a);
        assert!(connections.acquire_session(&limits).is_ok());
    }

    #[test]
    fn origins_outside_the_list_are_refused_and_missing_ones_pass() {
        let limits = LimitsConfig {
            allowed_origins: vec!["https://app.example.com".into()],
            ..LimitsConfig::default()
        };
        let mut headers = HeaderMap::new();
        assert!(check_origin(&limits, &headers).is_ok());
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert_eq!(
            check_origin(&limits, &headers).unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
        headers.insert(header::ORIGIN, "https://app.example.com".parse().unwrap());
        assert!(check_origin(&limits, &headers).is_ok());
    }
}
