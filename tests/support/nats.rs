//! NATS for the bus tests: the machine's shared server (127.0.0.1:4222), or a private
//! `nats-server -js` a test may kill and restart; a stream name and subject of each test's
//! own, and the stream deleted at the end.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::browser::under_ci;
use super::{WAIT, eventually};

/// The shared server every test may use (never stopped by a test).
const SHARED: &str = "127.0.0.1:4222";

/// Skips (prints why, returns false) or, under CI, fails when `what` is missing.
fn missing(test: &str, what: &str) -> bool {
    assert!(
        !under_ci(),
        "{test}: {what}, and CI is set (CI={:?}): CI must run the bus tests",
        std::env::var("CI").unwrap_or_default()
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {what} (under CI=true this fails)"
    );
    false
}

/// The shared server's URL, if it answers.
pub fn shared_for(test: &str) -> Option<String> {
    if std::net::TcpStream::connect_timeout(&SHARED.parse().unwrap(), Duration::from_secs(1))
        .is_ok()
    {
        return Some(format!("nats://{SHARED}"));
    }
    missing(test, &format!("no NATS server answers on {SHARED}"));
    None
}

/// The `nats-server` binary, if one is installed.
pub fn server_binary_for(test: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    });
    let found = on_path.or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/nats-server");
        sbin.is_file().then_some(sbin)
    });
    if found.is_none() {
        missing(test, "no nats-server on PATH or in /usr/sbin");
    }
    found
}

/// A stream name and a subject no other test uses.
pub fn unique_stream(test: &str) -> (String, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("rowcast_{test}_{}_{n}", std::process::id());
    let subject = format!("rowcast_test.{}.{n}.{test}", std::process::id());
    (name, subject)
}

/// Deletes the stream `name` on the server at `url` (if it exists).
pub async fn delete_stream(url: &str, name: &str) {
    if let Ok(client) = async_nats::connect(url).await {
        let _ = async_nats::jetstream::new(client).delete_stream(name).await;
    }
}

/// A `nats-server -js` of the test's own, on a free port, storing in a directory of its own.
pub struct PrivateNats {
    /// Its URL.
    pub url: String,
    port: u16,
    binary: PathBuf,
    store: PathBuf,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts it with `binary` and waits until it accepts connections.
    pub async fn start(binary: PathBuf) -> PrivateNats {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let store =
            std::env::temp_dir().join(format!("rowcast-nats-{}-{port}", std::process::id()));
        let mut nats = PrivateNats {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            binary,
            store,
            child: None,
        };
        nats.restart().await;
        nats
    }

    /// Starts it again (same port, same store) after [`PrivateNats::kill`].
    pub async fn restart(&mut self) {
        let child = Command::new(&self.binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let up = eventually(WAIT, async || {
            std::net::TcpStream::connect(addr.as_str()).is_ok()
        })
        .await;
        assert!(up, "nats-server did not listen on {addr}");
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
