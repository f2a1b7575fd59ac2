//! Settings of the service, with their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use crate::capture::prune::RetentionConfig;
use crate::capture::sequencer::SequencerConfig;
use crate::capture::tail::TailConfig;

/// Everything `rowcast serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// PostgreSQL connection string (URL or libpq key=value).
    pub database_url: String,
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Connections in the pool for short queries (replay reads, readiness).
    pub pool_size: usize,
    /// The sequencer's settings.
    pub sequencer: SequencerConfig,
    /// The tailer's settings.
    pub tail: TailConfig,
    /// Per-session settings.
    pub session: SessionConfig,
    /// How much of the log is kept (resumes from before it get `reset` / 410).
    pub retention: RetentionConfig,
    /// How long shutdown waits for sessions and background tasks.
    pub shutdown_timeout: Duration,
}

impl Config {
    /// Defaults for everything but the database.
    pub fn new(database_url: impl Into<String>) -> Config {
        Config {
            database_url: database_url.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            pool_size: 16,
            sequencer: SequencerConfig::default(),
            tail: TailConfig::default(),
            session: SessionConfig::default(),
            retention: RetentionConfig::default(),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Per-session limits and timers.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Events queued for a session before it is closed as too slow (4000).
    pub queue: usize,
    /// Interval of server pings; a session silent for two intervals is closed.
    pub ping_interval: Duration,
    /// Largest client frame accepted, in bytes; larger ones close the session (1009).
    pub max_frame: usize,
    /// Most topics one connection may hold.
    pub max_topics: usize,
    /// Events read from the log per replay query.
    pub replay_page: i64,
    /// Interval of SSE keep-alive comments (`: keepalive`) on an otherwise quiet stream.
    pub sse_keepalive: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            queue: 4096,
            ping_interval: Duration::from_secs(20),
            max_frame: 16 * 1024,
            max_topics: 256,
            replay_page: 1000,
            sse_keepalive: Duration::from_secs(15),
        }
    }
}
