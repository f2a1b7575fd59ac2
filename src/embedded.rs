//! A throwaway PostgreSQL cluster started from the server binaries on the machine
//! (`initdb`, `pg_ctl` on PATH, else `pg_config --bindir`, else
//! `/usr/lib/postgresql/*/bin`). `rowcast demo` uses it when no `DATABASE_URL` is given,
//! and the tests use it when none is set. `initdb` refuses to run as root, so as root
//! the binaries run as the `postgres` user. Dropping the value stops the server and
//! removes its directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "no PostgreSQL server binaries found (initdb, pg_ctl): install PostgreSQL, put its bin directory on PATH, or set DATABASE_URL"
    )]
    NoBinaries,
    /// A command failed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
    /// A file-system operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running throwaway cluster.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl EmbeddedPostgres {
    /// Creates and starts a cluster in a new directory under the system temp dir.
    pub fn start(name: &str) -> Result<EmbeddedPostgres, EmbeddedError> {
        let bindir = find_bindir().ok_or(EmbeddedError::NoBinaries)?;
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("{name}-{}-{}", std::process::id(), unique()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        if as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        }
        let cluster = EmbeddedPostgres {
            port: free_port()?,
            dir,
            bindir,
            as_postgres,
        };
        run(cluster
            .command("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]))?;
        cluster.resume()?;
        Ok(cluster)
    }

    /// The connection string of database `dbname` (user `postgres`, trust auth).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    /// Starts the server again after [`EmbeddedPostgres::stop`]; waits until it accepts connections.
    pub fn resume(&self) -> Result<(), EmbeddedError> {
        // fsync off: a throwaway cluster need not survive a machine crash. Commits stay
        // synchronous, so an immediate shutdown loses nothing acknowledged.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c max_connections=300 -c shared_buffers=64MB",
            self.port,
            self.dir.display()
        );
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-o")
            .arg(options)
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "start"]))
    }

    /// Stops the server with `mode` (`fast`, `immediate`).
    pub fn stop(&self, mode: &str) -> Result<(), EmbeddedError> {
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "stop"]))
    }
}

impl EmbeddedPostgres {
    /// Stops the server at once and removes its directory (what dropping does).
    pub fn destroy(&self) {
        let _ = self.stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.destroy();
    }
}

fn run(cmd: &mut Command) -> Result<(), EmbeddedError> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(EmbeddedError::Command {
            command: format!("{cmd:?}"),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

fn has_binaries(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

fn find_bindir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_binaries(d))
    {
        return Some(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_binaries(&dir) {
            return Some(dir);
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| has_binaries(d))
        .collect();
    dirs.sort();
    dirs.pop()
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
