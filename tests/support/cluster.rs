//! A PostgreSQL server for the tests: the one named by `DATABASE_URL`, or a throwaway
//! cluster ([`rowcast::embedded`]), stopped and removed when the test process exits.

use std::str::FromStr;
use std::sync::OnceLock;

use rowcast::embedded::EmbeddedPostgres;

/// A running server the tests may create databases on.
pub struct Cluster {
    /// Connection string of the maintenance database (superuser).
    pub admin_url: String,
    /// The cluster, when this process started it (fault tests restart it).
    pub own: Option<EmbeddedPostgres>,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

/// The cluster shared by every test of this process.
pub fn shared() -> &'static Cluster {
    SHARED.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Cluster {
            admin_url: url,
            own: None,
        },
        _ => {
            let cluster = Cluster::start_own();
            stop_shared_at_exit();
            cluster
        }
    })
}

impl Cluster {
    /// Starts a fresh cluster of our own (for fault tests that restart it).
    pub fn start_own() -> Cluster {
        let own = EmbeddedPostgres::start("rowcast-test").expect("starting a test cluster");
        Cluster {
            admin_url: own.url("postgres"),
            own: Some(own),
        }
    }

    /// A connection string for database `dbname` on this server.
    pub fn url_for(&self, dbname: &str) -> String {
        let config =
            tokio_postgres::Config::from_str(&self.admin_url).expect("a valid DATABASE_URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "127.0.0.1".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres");
        let mut url = format!("host={host} port={port} user={user} dbname={dbname}");
        if let Some(password) = config.get_password() {
            url.push_str(&format!(" password={}", String::from_utf8_lossy(password)));
        }
        url
    }
}

/// Statics are never dropped: stop the shared cluster when the process exits.
fn stop_shared_at_exit() {
    extern "C" fn stop() {
        if let Some(Cluster { own: Some(own), .. }) = SHARED.get() {
            own.destroy();
        }
    }
    // SAFETY: registering a plain extern "C" function with no arguments.
    #[allow(unsafe_code)]
    unsafe {
        libc::atexit(stop);
    }
}
