//! The service as a separate process (for SIGKILL), and a steady background writer.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::{WAIT, eventually};

/// `rowcast serve` running as a child process.
pub struct ServiceProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    log: std::path::PathBuf,
    out: std::path::PathBuf,
}

impl ServiceProcess {
    /// Starts `rowcast serve` on `url`, on a free port (or `addr`), and waits until it answers.
    pub async fn start(url: &str, addr: Option<SocketAddr>) -> ServiceProcess {
        Self::start_with_env(url, addr, &[]).await
    }

    /// [`ServiceProcess::start`] with extra environment variables.
    pub async fn start_with_env(
        url: &str,
        addr: Option<SocketAddr>,
        env: &[(&str, &str)],
    ) -> ServiceProcess {
        let addr = addr.unwrap_or_else(|| {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
        });
        let file = |kind: &str| {
            std::env::temp_dir().join(format!(
                "rowcast-service-{}-{}.{kind}",
                std::process::id(),
                addr.port()
            ))
        };
        let (log, out) = (file("log"), file("out"));
        let log_file = std::fs::File::create(&log).expect("creating the service log");
        let out_file = std::fs::File::create(&out).expect("creating the service's stdout");
        let mut child = Command::new(env!("CARGO_BIN_EXE_rowcast"))
            .args([
                "serve",
                "--database-url",
                url,
                "--listen",
                &addr.to_string(),
            ])
            .env("ROWCAST_SEQUENCER__POLL_INTERVAL", "50ms")
            .env("ROWCAST_TAIL__POLL_INTERVAL", "200ms")
            .env("ROWCAST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(out_file)
            .stderr(log_file)
            .spawn()
            .expect("starting rowcast serve");
        let ready = eventually(WAIT, async || {
            reqwest::get(format!("http://{addr}/readyz"))
                .await
                .is_ok_and(|response| response.status().is_success())
        })
        .await;
        if !ready {
            let _ = child.kill();
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("rowcast serve on {addr} did not become ready; its log:\n{output}");
        }
        ServiceProcess {
            addr,
            child,
            log,
            out,
        }
    }

    /// What the service has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the service has printed to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// SIGTERM, then waits (bounded) for the process to exit; returns its exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rowcast did not exit after SIGTERM"
            );
            // The poll interval of this bounded wait (not `eventually`: this future is
            // spawned, and one holding an async closure's future is not provably `Send`).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// The value of the metric `name` (a line `name value`) on its `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// SIGKILL: no shutdown, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Inserts bookings steadily from its own connection, riding out database outages;
/// counts only what committed.
pub struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts writing one booking every `every`.
    pub fn start(url: &str, every: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let (url, flag, count) = (url.to_string(), stop.clone(), committed.clone());
        let handle = tokio::spawn(async move {
            let mut client = None;
            while !flag.load(Ordering::SeqCst) {
                if client.is_none() {
                    if let Ok((c, conn)) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        client = Some(c);
                    } else {
                        // A pause before connecting again, not a wait for a condition.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let c = client.as_ref().unwrap();
                match c
                    .query_one(crate::pipeline::NEW_BOOKING, &[&1i64, &2i64])
                    .await
                {
                    Ok(_) => {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => client = None,
                }
                // Pacing the writer.
                tokio::time::sleep(every).await;
            }
        });
        Writer {
            stop,
            committed,
            handle,
        }
    }

    /// Committed writes so far.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Stops and returns the number of committed writes.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.unwrap();
        self.committed.load(Ordering::SeqCst)
    }
}
