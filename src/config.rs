//! Settings of the service: one documented struct with defaults, read from a TOML file,
//! then the environment (`ROWCAST_*`, nested with `__`, and `DATABASE_URL`), then flags.
//!
//! ```toml
//! database_url = "postgres://rowcast@127.0.0.1/app"
//! listen = "127.0.0.1:8080"
//! log_format = "json"
//! [sequencer]
//! poll_interval = "100ms"
//! [session]
//! queue = 4096
//! ```
//! The same settings as environment variables: `ROWCAST_LISTEN`, `ROWCAST_LOG_FORMAT`,
//! `ROWCAST_SEQUENCER__POLL_INTERVAL`, `ROWCAST_SESSION__QUEUE`.
//!
//! Every duration is written as text (`"100ms"`, `"5s"`, `"2m"`, `"7d"`) and shown so
//! by `--print-config`. An unknown key in the file is an error; an unknown `ROWCAST_*`
//! variable is ignored and reported ([`Loaded::ignored_env`]): orchestrators set their
//! own (Kubernetes sets `ROWCAST_PORT`, `ROWCAST_SERVICE_HOST`, ... for a Service named
//! rowcast). Errors name the file and key or the variable, on one line.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::error::{Actual, Kind};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use serde::{Deserialize, Serialize};

use crate::capture::bus::BusConfig;
use crate::capture::prune::RetentionConfig;
use crate::capture::sequencer::SequencerConfig;
use crate::capture::tail::TailConfig;
use crate::serve::SessionConfig;
use crate::serve::admission::LimitsConfig;
use crate::serve::auth::AuthConfig;

/// Everything `rowcast serve` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// PostgreSQL connection string (URL or libpq key=value) of the service's role.
    pub database_url: String,
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Address of the operator listener, serving `/healthz`, `/readyz`, `/metrics` and
    /// `/api/stats` without a token (bind it to loopback or a private network). When set,
    /// the public listener serves only `/healthz` of these; when unset, it serves them
    /// all, behind a token with `auth.operator_role` when authentication is on.
    pub metrics_listen: Option<SocketAddr>,
    /// Connections in the pool for short queries (replay reads, readiness, stats).
    pub pool_size: usize,
    /// Log filter (`info`, `rowcast=debug`, ...).
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
    /// The sequencer's settings.
    pub sequencer: SequencerConfig,
    /// The tailer's settings.
    pub tail: TailConfig,
    /// Per-session settings.
    pub session: SessionConfig,
    /// Authentication and the topic policy; off only when nothing of `[auth]` is set (a
    /// secret alone turns HS256 on; see [`AuthConfig::algorithm_in_use`]).
    pub auth: AuthConfig,
    /// Connection and request limits.
    pub limits: LimitsConfig,
    /// `/readyz` reports unready when more events than this wait to be delivered.
    pub(crate) ready_max_lag: i64,
    /// How much of the log is kept (resumes from before it get `reset` / 410).
    pub retention: RetentionConfig,
    /// How long shutdown waits for sessions and background tasks.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The NATS JetStream bus that carries the log between replicas (off by default).
    pub bus: BusConfig,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            pool_size: 16,
            log: "info".into(),
            log_format: LogFormat::Human,
            sequencer: SequencerConfig::default(),
            tail: TailConfig::default(),
            session: SessionConfig::default(),
            retention: RetentionConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            ready_max_lag: 10_000,
            shutdown_timeout: Duration::from_secs(10),
            bus: BusConfig::default(),
        }
    }
}

/// Why the configuration could not be read. The message is one line naming the file and
/// key, or the environment variable, that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML, or a value has the wrong shape.
    #[error("configuration: {0}")]
    Invalid(String),
    /// The config file does not exist.
    #[error("configuration file {0} does not exist")]
    NoFile(String),
}

/// A configuration as read, with what was left out of it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings.
    pub config: Config,
    /// `ROWCAST_*` environment variables that name no setting and were ignored (for a
    /// warning at start).
    pub ignored_env: Vec<String>,
}

/// The `ROWCAST_*` variables (those the command line reads itself excepted).
fn rowcast_env() -> Env {
    Env::prefixed("ROWCAST_")
        .ignore(&["config", "migrate", "admin_url"])
        .split("__")
}

impl Config {
    /// Defaults for everything but the database.
    pub fn new(database_url: impl Into<String>) -> Config {
        Config {
            database_url: database_url.into(),
            ..Config::default()
        }
    }

    /// Reads the defaults, then `file` (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Ok(Config::load_reporting(file)?.config)
    }

    /// [`Config::load`], also returning the unknown `ROWCAST_*` variables it ignored.
    pub fn load_reporting(file: Option<&Path>) -> Result<Loaded, ConfigError> {
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::NoFile(file.display().to_string()));
            }
            check_toml(file)?;
        }
        // Serde reports one unknown key at a time: leave out each unknown variable the
        // extraction meets and extract again (at most once per variable).
        let mut ignored: Vec<String> = Vec::new();
        loop {
            let skip = ignored.clone();
            let env = rowcast_env().filter(move |key| !skip.iter().any(|k| k.as_str() == key));
            let mut figment = Figment::from(Serialized::defaults(Config::default()));
            if let Some(file) = file {
                figment = figment.merge(Toml::file_exact(file));
            }
            figment = figment.merge(env).merge(Env::raw().only(&["DATABASE_URL"]));
            match figment.extract::<Config>() {
                Ok(config) => {
                    return Ok(Loaded {
                        config,
                        ignored_env: ignored.iter().map(|key| env_name(key)).collect(),
                    });
                }
                Err(err) => match unknown_env_key(&err) {
                    Some(key) if !ignored.contains(&key) => ignored.push(key),
                    _ => return Err(ConfigError::Invalid(describe(err, file))),
                },
            }
        }
    }

    /// The configuration as TOML, with secrets redacted and durations as text.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database_url = redact_url(&self.database_url);
        shown.bus.nats_url = self.bus.nats_url.as_deref().map(redact_url);
        if shown.auth.secret.is_some() {
            shown.auth.secret = Some("***".into());
        }
        let rendered =
            toml::Value::try_from(&shown).and_then(|value| toml::to_string_pretty(&value));
        rendered.unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }
}

/// Fails with the line and column of a TOML syntax error, on one line.
fn check_toml(file: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|err| ConfigError::Invalid(format!("cannot read {}: {err}", file.display())))?;
    let Err(err) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let place = match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" line {line}, column {column}")
        }
        None => String::new(),
    };
    Err(ConfigError::Invalid(format!(
        "{}{place}: {}",
        file.display(),
        one_line(err.message())
    )))
}

/// Joins the lines of a message.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The variable a key of the `ROWCAST_*` provider came from.
fn env_name(key: &str) -> String {
    format!("ROWCAST_{}", key.replace('.', "__").to_ascii_uppercase())
}

/// The key of an unknown `ROWCAST_*` variable the extraction stopped at, if that is why.
fn unknown_env_key(err: &figment::Error) -> Option<String> {
    let from_env = err
        .metadata
        .as_ref()
        .is_some_and(|md| md.name == rowcast_env().metadata().name);
    (from_env && matches!(err.kind, Kind::UnknownField(..))).then(|| err.path.join("."))
}

/// What a duration looks like, for error messages.
const DURATION_EXAMPLES: &str = r#"(write e.g. "100ms", "5s", "2m", "7d")"#;

/// One line per error, naming the file and key or the environment variable.
fn describe(err: figment::Error, file: Option<&Path>) -> String {
    err.into_iter()
        .map(|err| {
            let key = err.path.join(".");
            let name = err.metadata.as_ref().map(|md| md.name.to_string());
            let place = match name {
                Some(name) if name == rowcast_env().metadata().name => env_name(&key),
                Some(name) if name == Env::raw().metadata().name => key.to_ascii_uppercase(),
                _ => match (file, key.is_empty()) {
                    (Some(file), false) => format!("{}: {key}", file.display()),
                    (Some(file), true) => file.display().to_string(),
                    (None, _) => key,
                },
            };
            let what = match &err.kind {
                Kind::InvalidValue(Actual::Str(text), expected) if expected == "a duration" => {
                    format!("invalid duration {text:?} {DURATION_EXAMPLES}")
                }
                Kind::UnknownField(field, expected) => {
                    format!(
                        "unknown key `{field}` (expected one of: {})",
                        expected.join(", ")
                    )
                }
                kind => one_line(&kind.to_string()),
            };
            format!("{place}: {what}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Replaces the password of a connection string (URL or key=value) with `***`.
pub(crate) fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@')
            && let Some((user, _)) = userinfo.split_once(':')
        {
            return format!("{scheme}://{user}:***@{host}");
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|part| {
            if part.starts_with("password=") {
                "password=***".to_string()
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_in_both_url_forms() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/app"),
            "postgres://app:***@db:5432/app"
        );
        assert_eq!(
            redact_url("host=db user=app password=s3cret dbname=app"),
            "host=db user=app password=*** dbname=app"
        );
        assert_eq!(redact_url("postgres://app@db/app"), "postgres://app@db/app");
    }

    #[test]
    fn a_toml_file_overrides_defaults_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("rowcast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rowcast.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\n[sequencer]\npoll_interval = \"250ms\"\n[session]\nqueue = 64\n",
        )
        .unwrap();
        let config = Config::load(Some(&file)).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.sequencer.poll_interval, Duration::from_millis(250));
        assert_eq!(config.session.queue, 64);
        assert_eq!(config.session.max_frame, 16 * 1024);
        std::fs::write(&file, "sesion = 1\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("sesion"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_operator_listener_and_the_new_limits_are_read_from_the_file() {
        let dir = std::env::temp_dir().join(format!("rowcast-config-ops-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rowcast.toml");
        let defaults = Config::default();
        assert_eq!(defaults.metrics_listen, None);
        assert_eq!(defaults.limits.idle_timeout, Duration::from_secs(30));
        assert_eq!(defaults.session.catch_up_wait, Duration::from_secs(1));
        assert_eq!(defaults.auth.operator_role, "admin");
        std::fs::write(
            &file,
            "metrics_listen = \"127.0.0.1:9090\"\n[limits]\nidle_timeout = \"5s\"\n[session]\ncatch_up_wait = \"250ms\"\n[auth]\noperator_role = \"ops\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&file)).unwrap();
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(config.limits.idle_timeout, Duration::from_secs(5));
        assert_eq!(config.session.catch_up_wait, Duration::from_millis(250));
        assert_eq!(config.auth.operator_role, "ops");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_bus_is_off_by_default_and_read_from_the_file_with_its_url_redacted() {
        let defaults = Config::default();
        assert_eq!(defaults.bus.nats_url, None);
        assert_eq!(defaults.bus.stream, "rowcast");
        assert_eq!(defaults.bus.subject, "rowcast.log");
        let dir = std::env::temp_dir().join(format!("rowcast-config-bus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rowcast.toml");
        std::fs::write(
            &file,
            "[bus]\nnats_url = \"nats://app:s3cret@nats:4222\"\nstall_after = \"500ms\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&file)).unwrap();
        assert_eq!(
            config.bus.nats_url.as_deref(),
            Some("nats://app:s3cret@nats:4222")
        );
        assert_eq!(config.bus.stall_after, Duration::from_millis(500));
        assert_eq!(config.bus.stream, "rowcast");
        let shown = config.to_redacted_toml();
        assert!(shown.contains("nats://app:***@nats:4222"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
