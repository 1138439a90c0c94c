//! Runs the load generator against the in-process backend and origin.

mod helpers;

use bench::{HttpArgs, Mode};
use helpers::{count, get, spawn_origin, spawn_server};
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
        keys: None,
        zipf: None,
        seed: None,
        requests: None,
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

#[test]
fn origin_serves_cacheable_objects_and_counts_requests_per_path() {
    let origin = spawn_origin();
    for (path, size) in [
        ("/small", 2048),
        ("/large", 100 * 1024),
        ("/zipf/17", 1024),
        ("/slow/a", 2048),
    ] {
        let answer = get(origin.addr, path);
        assert_eq!(answer.status, 200, "{path}: {}", answer.head);
        assert!(
            answer.head.contains("\r\ncache-control: public, max-age=3600"),
            "{path}: {}",
            answer.head
        );
        assert_eq!(answer.body.len(), size, "{path}");
    }
    let root = get(origin.addr, "/");
    assert_eq!(root.status, 200);
    assert!(root.head.contains("cache-control: no-store"), "{}", root.head);
    for path in ["/nothing", "/zipf/", "/zipf/x1", "/slow/"] {
        let answer = get(origin.addr, path);
        assert_eq!(answer.status, 404, "{path}");
        assert!(answer.head.contains("cache-control: no-store"), "{path}");
    }
    get(origin.addr, "/zipf/17?v=2");
    get(origin.addr, "/zipf/3");

    // 10 requests so far; the count requests themselves are not counted.
    assert_eq!(count(&origin, ""), 11);
    assert_eq!(count(&origin, ""), 11);
    assert_eq!(count(&origin, "path=/zipf/17"), 2);
    assert_eq!(count(&origin, "prefix=/zipf/"), 5);
    assert_eq!(count(&origin, "prefix=%2Fs"), 3, "/small, /slow/a and /slow/");
    assert_eq!(count(&origin, "path=/never"), 0);
    let bad = get(origin.addr, "/__origin/count?glob=*");
    assert_eq!(bad.status, 400);
    assert!(String::from_utf8_lossy(&bad.body).contains("unknown parameter"));
    assert_eq!(count(&origin, ""), 11, "a refused count request counts nothing");
}

/// Per-key request counts of `n` keys at the origin.
fn key_counts(origin: &helpers::TestServer, n: usize) -> Vec<u64> {
    (0..n)
        .map(|k| count(origin, &format!("path=/zipf/{k}")))
        .collect()
}

#[test]
fn zipf_keys_are_deterministic_and_skewed() {
    let origin = spawn_origin();
    let run = |seed: u64| {
        let mut options = args(origin.url("/zipf/"), None);
        options.warmup = Duration::ZERO;
        options.duration = Duration::from_secs(60);
        options.keys = Some(50);
        options.zipf = Some(1.0);
        options.seed = Some(seed);
        options.requests = Some(1000);
        let report = bench::LoadConfig::run(&options.to_config().expect("valid")).expect("run completes");
        assert_eq!(
            (report.requests, report.errors, report.non_2xx),
            (1000, 0, 0),
            "{report:?}"
        );
    };
    run(7);
    let first = key_counts(&origin, 50);
    assert_eq!(first.iter().sum::<u64>(), 1000);
    // Key 0 is the most popular: about 1/H(50) = 22 % of the requests,
    // key 49 about 0.4 %.
    assert!(first[0] > 150 && first[0] > 10 * first[49], "{first:?}");
    assert_eq!(count(&origin, "prefix=/zipf/"), 1000, "no key outside 0..50");

    run(7);
    let second: Vec<u64> = key_counts(&origin, 50)
        .iter()
        .zip(&first)
        .map(|(b, a)| b - a)
        .collect();
    assert_eq!(second, first, "the same seed sends the same keys");

    run(8);
    let third: Vec<u64> = key_counts(&origin, 50)
        .iter()
        .zip(&first)
        .map(|(c, a)| c - 2 * a)
        .collect();
    assert_eq!(third.iter().sum::<u64>(), 1000);
    assert_ne!(third, first, "another seed sends other keys");
}

#[test]
fn a_request_limit_ends_the_run() {
    let origin = spawn_origin();
    // Closed loop: 20 connections, one request each, all to the slow key.
    let mut options = args(origin.url("/slow/stampede"), None);
    options.connections = 20;
    options.warmup = Duration::ZERO;
    options.duration = Duration::from_secs(60);
    options.requests = Some(20);
    let report = bench::LoadConfig::run(&options.to_config().expect("valid")).expect("run completes");
    assert_eq!((report.requests, report.errors), (20, 0), "{report:?}");
    assert_eq!(count(&origin, "path=/slow/stampede"), 20);

    // Open loop: the schedule stops at the limit.
    let mut options = args(origin.url("/small"), Some(1000));
    options.warmup = Duration::ZERO;
    options.duration = Duration::from_secs(60);
    options.requests = Some(30);
    let report = bench::LoadConfig::run(&options.to_config().expect("valid")).expect("run completes");
    assert_eq!((report.requests, report.errors), (30, 0), "{report:?}");
    assert_eq!(count(&origin, "path=/small"), 30);
}
