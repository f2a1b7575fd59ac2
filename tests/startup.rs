//! `rowcast serve` as an operator meets it: settings from the file and the environment,
//! what it prints at start, its errors (one line each, exit code 1), its logs through a
//! pipe, and its metrics and readiness from the first request.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use humantime_serde::re::humantime;

use crate::support::service::ServiceProcess;
use crate::support::{TestApp, TestDb, WAIT, cluster};

/// Runs the binary with `env` added, without the caller's database settings.
fn rowcast(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rowcast"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("ROWCAST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("running the rowcast binary")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a failed start: exit code 1, one `rowcast:` error line, holding `needle` once.
fn fails_once_with(out: &Output, needle: &str) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("rowcast:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert_eq!(err.matches(needle).count(), 1, "{needle:?} once in: {err}");
    assert!(lines[0].contains(needle), "{err}");
    lines[0].to_string()
}

/// A config file of its own in the temporary directory.
fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("rowcast-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn print_config(file: Option<&std::path::Path>, env: &[(&str, &str)]) -> toml::Table {
    let mut args = vec!["serve", "--print-config"];
    let file = file.map(|f| f.display().to_string());
    if let Some(file) = &file {
        args.extend(["-c", file]);
    }
    let out = rowcast(&args, env);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .parse()
        .expect("--print-config prints TOML")
}

/// The keys of a printed configuration whose values are durations: text a duration
/// parses from, or a `{secs, nanos}` table (a duration shown as a struct).
fn duration_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::String(text) if humantime::parse_duration(text).is_ok() => out.push(path),
            toml::Value::Table(t) if t.contains_key("secs") && t.contains_key("nanos") => {
                out.push(path)
            }
            toml::Value::Table(t) => duration_keys(t, &path, out),
            _ => {}
        }
    }
}

fn value_at<'a>(table: &'a toml::Table, path: &str) -> &'a toml::Value {
    let (sections, key) = path.rsplit_once('.').unwrap_or(("", path));
    let table = sections
        .split('.')
        .filter(|s| !s.is_empty())
        .fold(table, |t, s| t[s].as_table().unwrap());
    &table[key]
}

#[test]
fn every_duration_setting_reads_text_and_print_config_shows_text() {
    let defaults = print_config(None, &[]);
    let mut keys = Vec::new();
    duration_keys(&defaults, "", &mut keys);
    for known in [
        "shutdown_timeout",
        "sequencer.poll_interval",
        "sequencer.recheck_min",
        "sequencer.recheck_max",
        "session.sse_keepalive",
        "session.ping_interval",
        "tail.probe_timeout",
        "limits.idle_timeout",
        "retention.max_age",
        "auth.leeway",
    ] {
        assert!(keys.iter().any(|k| k == known), "{known} not in {keys:?}");
    }
    for key in &keys {
        assert!(
            value_at(&defaults, key).is_str(),
            "{key} is shown as {}",
            value_at(&defaults, key)
        );
    }
    let wanted = |i: usize, base: u64| {
        humantime::format_duration(Duration::from_millis(base + i as u64)).to_string()
    };

    // From the file: every key at once, each with a value of its own.
    let mut file = toml::Table::new();
    for (i, key) in keys.iter().enumerate() {
        let (sections, name) = key.rsplit_once('.').unwrap_or(("", key));
        let mut table = &mut file;
        for section in sections.split('.').filter(|s| !s.is_empty()) {
            table = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap();
        }
        table.insert(name.into(), format!("{}ms", 1001 + i).into());
    }
    let path = config_file("durations", &toml::to_string(&file).unwrap());
    let printed = print_config(Some(&path), &[]);
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            value_at(&printed, key).as_str(),
            Some(wanted(i, 1001).as_str()),
            "{key} from the file"
        );
    }
    std::fs::remove_file(&path).unwrap();

    // From the environment: ROWCAST_<SECTION>__<KEY>.
    let names: Vec<(String, String)> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            (
                format!("ROWCAST_{}", key.replace('.', "__").to_uppercase()),
                format!("{}ms", 2001 + i),
            )
        })
        .collect();
    let env: Vec<(&str, &str)> = names
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let printed = print_config(None, &env);
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            value_at(&printed, key).as_str(),
            Some(wanted(i, 2001).as_str()),
            "{key} from the environment"
        );
    }

    // A value that is not a duration names its key.
    let out = rowcast(
        &["serve", "--print-config"],
        &[("ROWCAST_SEQUENCER__RECHECK_MIN", "soon")],
    );
    fails_once_with(&out, "ROWCAST_SEQUENCER__RECHECK_MIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_service_variables_do_not_stop_the_service_and_are_named_once() {
    let db = TestDb::migrated().await;
    let injected = [
        ("ROWCAST_PORT", "tcp://10.0.0.1:8080"),
        ("ROWCAST_SERVICE_HOST", "10.0.0.1"),
        ("ROWCAST_SERVICE_PORT", "8080"),
        ("ROWCAST_PORT_8080_TCP_ADDR", "10.0.0.1"),
    ];
    let service = ServiceProcess::start_with_env(&db.url, None, &injected).await;
    let log = service.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ROWCAST_SERVICE_HOST"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("WARN"), "{log}");
    for (name, _) in injected {
        assert!(warnings[0].contains(name), "{name} in {log}");
    }
    service.terminate().await;

    // A known key with a bad value is still an error, even among unknown ones.
    let mut env = injected.to_vec();
    env.push(("ROWCAST_SESSION__QUEUE", "lots"));
    let out = rowcast(&["serve", "--print-config"], &env);
    fails_once_with(&out, "ROWCAST_SESSION__QUEUE");
    // An unknown key in the file is still an error.
    let path = config_file("unknown", "sesion = 1\n");
    let out = rowcast(&["serve", "-c", &path.display().to_string()], &[]);
    fails_once_with(&out, "unknown key `sesion`");
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn an_address_in_use_is_one_line_that_points_to_listen() {
    let db = TestDb::migrated().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = rowcast(
        &["serve", "--database-url", &db.url, "--listen", &addr],
        &[],
    );
    let line = fails_once_with(&out, "address already in use");
    assert!(line.contains(&format!("cannot listen on {addr}")), "{line}");
    assert!(line.contains("--listen"), "{line}");
}

#[test]
fn a_bad_config_file_is_one_line_naming_the_file_and_key() {
    let path = config_file("syntax", "listen = \n");
    let out = rowcast(&["serve", "-c", &path.display().to_string()], &[]);
    let line = fails_once_with(&out, "line 1, column 10");
    assert!(line.contains(&path.display().to_string()), "{line}");

    std::fs::write(&path, "listen = 5\n[session]\nqueue = 1\n").unwrap();
    let out = rowcast(&["serve", "-c", &path.display().to_string()], &[]);
    let line = fails_once_with(&out, "expected socket address");
    assert!(line.contains(": listen: "), "{line}");
    assert!(!line.contains("default."), "{line}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_missing_database_is_one_line_saying_so() {
    let url = cluster::shared().url_for("rowcast_no_such_database");
    let out = rowcast(
        &["serve", "--database-url", &url, "--listen", "127.0.0.1:0"],
        &[],
    );
    let line = fails_once_with(&out, "database \"rowcast_no_such_database\" does not exist");
    assert!(line.contains("cannot connect to postgres at"), "{line}");
    assert!(!line.contains("Error occurred"), "{line}");
}

#[test]
fn a_short_hs256_secret_is_refused_at_start() {
    let out = rowcast(
        &["serve", "--database-url", "postgres://127.0.0.1:1/x"],
        &[("ROWCAST_AUTH__SECRET", &"s".repeat(31))],
    );
    fails_once_with(&out, "at least 32");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_the_url_it_listens_on() {
    let db = TestDb::migrated().await;
    let service = ServiceProcess::start(&db.url, None).await;
    let printed = service.stdout();
    assert!(
        printed.contains(&format!("http://{}/", service.addr)),
        "{printed}"
    );
    service.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_through_a_pipe_carry_no_colour_codes() {
    let db = TestDb::migrated().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rowcast"))
        .args([
            "serve",
            "--database-url",
            &db.url,
            "--listen",
            "127.0.0.1:0",
        ])
        .env("ROWCAST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(WAIT, stdout.read_line(&mut line))
        .await
        .expect("the service printed its url")
        .unwrap();
    assert!(line.contains("http://127.0.0.1:"), "{line}");
    let pid = child.id().unwrap().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let mut log = String::new();
    let mut stderr = child.stderr.take().unwrap();
    tokio::time::timeout(WAIT, stderr.read_to_string(&mut log))
        .await
        .expect("the service exited")
        .unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the service exited")
        .unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("rowcast listening"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in {log:?}");
}

/// The metric names docs/operating.md lists in its "Metrics" table.
fn documented_metrics() -> Vec<String> {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operating.md")).unwrap();
    let start = page
        .find("\n## Metrics\n")
        .expect("docs/operating.md lists the metrics");
    let rest = &page[start + 1..];
    let section = &rest[..rest[1..].find("\n## ").map_or(rest.len(), |end| end + 1)];
    let mut names: Vec<String> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `rowcast_"))
        .map(|line| format!("rowcast_{}", line.split(['`', '{']).next().unwrap()))
        .collect();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_served_from_start() {
    let names = documented_metrics();
    assert!(names.len() >= 10, "{names:?}");
    let db = TestDb::migrated().await;
    let service = ServiceProcess::start(&db.url, None).await;
    let body = reqwest::get(format!("http://{}/metrics", service.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in &names {
        let served = body.lines().any(|line| {
            !line.starts_with('#')
                && [" ", "{", "_count "]
                    .iter()
                    .any(|end| line.starts_with(&format!("{name}{end}")))
        });
        assert!(served, "{name} is not served:\n{body}");
    }
    service.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_the_schema_is_missing_after_uninstall() {
    let db = TestDb::migrated().await;
    let app = TestApp::start(&db).await;
    let ready = || async {
        let response = reqwest::get(format!("http://{}/readyz", app.addr))
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while ready().await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rowcast::admin::uninstall(&db.client().await).await.unwrap();
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("rowcast schema is missing"), "{body}");
    assert!(body.contains("rowcast migrate"), "{body}");
    app.stop().await;
}
