//! A PostgreSQL server for the tests: the one named by `DATABASE_URL`, or a throwaway
//! cluster started from the binaries on PATH (as the `postgres` user when running as
//! root, since `initdb` refuses root), stopped and removed when the test process exits.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

/// A running server the tests may create databases on.
pub struct Cluster {
    /// Connection string of the maintenance database (superuser).
    pub admin_url: String,
    /// Data directory and port, when the cluster is ours.
    pub own: Option<OwnCluster>,
}

/// A cluster this process started.
pub struct OwnCluster {
    /// The temp directory holding `data/` and the log.
    pub dir: PathBuf,
    /// The TCP port.
    pub port: u16,
    bindir: PathBuf,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();
static TO_STOP: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());

/// The cluster shared by every test of this process.
pub fn shared() -> &'static Cluster {
    SHARED.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Cluster {
            admin_url: url,
            own: None,
        },
        _ => Cluster::start_own(),
    })
}

impl Cluster {
    /// Starts a fresh cluster of our own (for fault tests that restart it).
    pub fn start_own() -> Cluster {
        let bindir = find_bindir();
        let root = is_root();
        let dir =
            std::env::temp_dir().join(format!("rowcast-test-{}-{}", std::process::id(), next_id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the cluster directory");
        if root {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir));
        }
        let data = dir.join("data");
        run(pg_command(&bindir, "initdb", root)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]));
        let port = free_port();
        let own = OwnCluster { dir, port, bindir };
        TO_STOP
            .lock()
            .unwrap()
            .push((own.bindir.clone(), data.clone()));
        register_atexit();
        own.start();
        Cluster {
            admin_url: format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
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

impl OwnCluster {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts the server (waits until it accepts connections).
    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB",
            self.port,
            self.dir.display()
        );
        run(pg_command(&self.bindir, "pg_ctl", is_root())
            .arg("-D")
            .arg(self.data())
            .arg("-o")
            .arg(options)
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "start"]));
    }

    /// Stops the server with the given mode (`fast`, `immediate`).
    pub fn stop(&self, mode: &str) {
        run(pg_command(&self.bindir, "pg_ctl", is_root())
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "stop"]));
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let data = self.data();
        TO_STOP
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, d)| *d != data);
        let _ = pg_command(&self.bindir, "pg_ctl", is_root())
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pg_command(bindir: &Path, program: &str, as_postgres: bool) -> Command {
    let path = bindir.join(program);
    if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|err| panic!("running {cmd:?}: {err}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn find_bindir() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return dir;
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|d| d.join("initdb").is_file())
            .collect();
        dirs.sort();
        if let Some(dir) = dirs.pop() {
            return dir;
        }
    }
    panic!("no initdb/pg_ctl found on PATH: install PostgreSQL or set DATABASE_URL");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    euid == 0
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("finding a free port")
}

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn register_atexit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        extern "C" fn stop_all() {
            let clusters = std::mem::take(&mut *TO_STOP.lock().unwrap_or_else(|p| p.into_inner()));
            for (bindir, data) in clusters {
                let _ = pg_command(&bindir, "pg_ctl", is_root())
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", "immediate", "-w", "stop"])
                    .output();
                if let Some(dir) = data.parent() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
        // SAFETY: registering a plain extern "C" function with no arguments.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(stop_all);
        }
    });
}
