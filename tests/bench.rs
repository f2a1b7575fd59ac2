//! The benchmark binary starts and runs a tiny bounded workload (the real runs are
//! documented in BENCHMARKS.md and never run as part of the tests).

use std::process::Command;
use std::time::Duration;

use crate::support::{cluster, connect};

fn bench(args: &[&str], database: &str) -> String {
    let admin = &cluster::shared().admin_url;
    let out = Command::new(env!("CARGO_BIN_EXE_rowcast-bench"))
        .args(args)
        .args(["--server", admin, "--database", database])
        .env("ROWCAST_LOG", "error")
        .output()
        .expect("running rowcast-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rowcast-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_binary_runs_a_tiny_latency_and_sustained_workload() {
    let database = format!("rowcast_bench_{}", std::process::id());
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking({
            let database = database.clone();
            move || {
                let latency = bench(
                    &[
                        "latency",
                        "--subscribers",
                        "4",
                        "--rate",
                        "20",
                        "--seconds",
                        "1",
                    ],
                    &database,
                );
                let sustained = bench(
                    &[
                        "sustained",
                        "--seconds",
                        "1",
                        "--writers",
                        "2",
                        "--compare-seconds",
                        "1",
                    ],
                    &database,
                );
                latency + &sustained
            }
        }),
    )
    .await
    .expect("the bench took too long")
    .unwrap();
    assert!(out.contains("deliveries 20 of 20 expected"), "{out}");
    assert!(out.contains("writer's commit returned → received"), "{out}");
    assert!(out.contains("lost 0"), "{out}");
    assert!(out.contains("watched/unwatched"), "{out}");
    let admin = connect(&cluster::shared().admin_url).await;
    admin
        .batch_execute(&format!("drop database if exists {database} with (force)"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_binary_times_a_small_multi_row_update_on_every_capture_path() {
    let database = format!("rowcast_bench_stmt_{}", std::process::id());
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking({
            let database = database.clone();
            move || {
                bench(
                    &["statement", "--rows", "500", "--rounds", "2", "--row-path"],
                    &database,
                )
            }
        }),
    )
    .await
    .expect("the bench took too long")
    .unwrap();
    assert!(out.contains("s_set/plain: median"), "{out}");
    assert!(out.contains("s_rows/plain: median"), "{out}");
    assert!(
        out.contains("events in the log after the last run: 500")
            || out.contains("events in the log after the last run: 0"),
        "{out}"
    );
    let admin = connect(&cluster::shared().admin_url).await;
    admin
        .batch_execute(&format!("drop database if exists {database} with (force)"))
        .await
        .unwrap();
}
