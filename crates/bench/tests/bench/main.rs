//! Runs the load generator against the in-process backend.

mod helpers;

use bench::{HttpArgs, Mode};
use helpers::spawn_server;
use std::time::Duration;

fn args(url: String, rate: Option<u64>) -> HttpArgs {
    HttpArgs {
        url,
        connections: 4,
        duration: Duration::from_secs(1),
        rate,
        threads: 2,
        warmup: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
        json: true,
    }
}

#[test]
fn closed_loop_run_against_the_backend() {
    let server = spawn_server();
    let config = args(server.url("/hello"), None)
        .to_config()
        .expect("valid options");
    let report = bench::LoadConfig::run(&config).expect("run completes");
    assert_eq!(report.mode, Mode::Closed);
    assert!(report.requests > 0, "{report:?}");
    assert_eq!((report.errors, report.non_2xx), (0, 0), "{report:?}");
    assert!(
        report.p50_us <= report.p99_us && report.p99_us <= report.max_us,
        "{report:?}"
    );
}

#[test]
fn open_loop_run_against_the_backend() {
    let server = spawn_server();
    let config = args(server.url("/"), Some(500))
        .to_config()
        .expect("valid options");
    let report = bench::LoadConfig::run(&config).expect("run completes");
    assert_eq!((report.mode, report.rate), (Mode::Open, Some(500)));
    assert!(report.requests > 0, "{report:?}");
    assert_eq!((report.errors, report.non_2xx), (0, 0), "{report:?}");
    let json = serde_json::to_value(&report).expect("serialises");
    assert_eq!(json["mode"], "open");
}

#[test]
fn errors_are_counted_when_nothing_listens() {
    // Bind then drop a listener: the port is (almost certainly) closed now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut options = args(format!("http://127.0.0.1:{port}/"), None);
    options.duration = Duration::from_millis(300);
    options.warmup = Duration::ZERO;
    let report = bench::LoadConfig::run(&options.to_config().expect("valid")).expect("run completes");
    assert_eq!(report.requests, 0);
    assert!(report.errors > 0, "{report:?}");
}
