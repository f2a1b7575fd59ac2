//! An SSE client that reads the stream as it arrives, and a plain HTTP GET helper.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::WAIT;

/// One block of the stream: an event, or a comment (keep-alive).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseBlock {
    /// The `id:` field.
    pub id: Option<String>,
    /// The `event:` field.
    pub event: Option<String>,
    /// The `data:` lines, joined with newlines.
    pub data: String,
    /// A comment line (`: keepalive`), without the colon.
    pub comment: Option<String>,
}

impl SseBlock {
    /// The data as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|err| panic!("bad data {self:?}: {err}"))
    }
}

/// A connected SSE stream.
pub struct SseClient {
    response: reqwest::Response,
    buf: Vec<u8>,
}

/// Opens `GET /sse?<query>`, with `Last-Event-ID` when given. Returns the response when
/// the status is not 200, for tests of refusals.
pub async fn open(
    addr: SocketAddr,
    query: &str,
    last_event_id: Option<&str>,
) -> Result<SseClient, (u16, Value)> {
    let mut request = reqwest::Client::new().get(format!("http://{addr}/sse?{query}"));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("sse connect timed out")
        .expect("sse connect failed");
    let status = response.status().as_u16();
    if status != 200 {
        let body = response.text().await.unwrap();
        return Err((
            status,
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("non-JSON error body {body:?}")),
        ));
    }
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    Ok(SseClient {
        response,
        buf: Vec::new(),
    })
}

impl SseClient {
    /// The next block within `limit`; `None` on timeout. Panics if the stream ended.
    pub async fn block_within(&mut self, limit: Duration) -> Option<SseBlock> {
        match self.next_or_end(limit).await {
            Some(Some(block)) => Some(block),
            Some(None) => panic!("sse stream ended"),
            None => None,
        }
    }

    /// `Some(None)` when the stream ended, `None` on timeout.
    async fn next_or_end(&mut self, limit: Duration) -> Option<Option<SseBlock>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Some(Some(parse(&String::from_utf8(raw).unwrap())));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?;
            match chunk {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                Ok(None) | Err(_) => return Some(None),
            }
        }
    }

    /// The next event (keep-alive comments skipped), or panics after [`WAIT`].
    pub async fn next(&mut self) -> SseBlock {
        loop {
            let block = self
                .block_within(WAIT)
                .await
                .unwrap_or_else(|| panic!("no sse event within {WAIT:?}"));
            if block.comment.is_none() {
                return block;
            }
        }
    }

    /// The next `n` events, each of which must be a wire `event` whose id is its `pos`.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let block = self.next().await;
            let frame = block.json();
            assert_eq!(frame["type"], "event", "expected an event, got {block:?}");
            assert_eq!(block.id.as_deref(), Some(frame["pos"].to_string().as_str()));
            assert_eq!(block.event.as_deref(), frame["event"].as_str());
            out.push(frame);
        }
        out
    }

    /// Whether the stream ends within `limit` (events before the end are skipped and
    /// returned).
    pub async fn ends_within(&mut self, limit: Duration) -> (bool, Vec<SseBlock>) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_or_end(left).await {
                Some(Some(block)) => seen.push(block),
                Some(None) => return (true, seen),
                None => return (false, seen),
            }
        }
    }
}

fn parse(raw: &str) -> SseBlock {
    let mut block = SseBlock::default();
    let mut data: Vec<&str> = Vec::new();
    for line in raw.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix(':') {
            block.comment = Some(comment.trim_start().to_string());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => block.id = Some(value.to_string()),
            "event" => block.event = Some(value.to_string()),
            "data" => data.push(value),
            other => panic!("unexpected sse field {other:?} in {raw:?}"),
        }
    }
    block.data = data.join("\n");
    block
}

/// `GET <path>` on the service: the status and the JSON body.
pub async fn get_json(addr: SocketAddr, path_and_query: &str) -> (u16, Value) {
    let response = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .get(format!("http://{addr}{path_and_query}"))
            .send(),
    )
    .await
    .expect("http request timed out")
    .expect("http request failed");
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.text().await.unwrap();
    assert_eq!(kind.as_deref(), Some("application/json"), "{body}");
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|err| panic!("bad JSON {body:?}: {err}")),
    )
}
