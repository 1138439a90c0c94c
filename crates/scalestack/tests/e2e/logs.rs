//! `[logs]`: rsyslog gathers every process's lines; `ctl logs
//! --request-id` finds one request in the load balancer's and the web
//! server's lines, and an upload's down to its job in the worker; lines
//! logged while the collector is down (`ctl kill logs`) arrive once it is
//! back: none is lost.

use crate::helpers::{free_port, Up};
use std::time::{Duration, Instant};

/// `ctl logs ARGS` until its output holds lines of every one of `roles`
/// (at most `secs`); the output.
async fn wait_lines(up: &Up, args: &[&str], roles: &[&str], secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut all = vec!["logs"];
        all.extend_from_slice(args);
        let out = up.ctl_ok(&all);
        let has = |role: &str| {
            out.lines().any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|c| c == role || c.starts_with(&format!("{role}-")))
            })
        };
        if roles.iter().all(|r| has(r)) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "ctl logs {args:?} after {secs} s:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn request(up: &Up, id: &str) {
    let r = reqwest::Client::new()
        .get(format!("{}/api/users/nobody/photos", up.web))
        .header("x-request-id", id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn every_process_logs_to_the_collector_and_one_request_is_followed_through_the_tiers() {
    let port = free_port();
    let up = Up::web_tier_with_log(2, 300, true, &format!("[logs]\nlisten = \"127.0.0.1:{port}\"\n"));
    up.wait_up(120).await;
    assert!(up.ctl_ok(&["ps"]).contains("logs"));

    // One request: its lines in the load balancer and in a web server.
    request(&up, "e2e-trace-42").await;
    let out = wait_lines(&up, &["--request-id", "e2e-trace-42"], &["lb", "web"], 30).await;
    println!("{out}");
    assert!(out.lines().all(|l| l.contains("e2e-trace-42")), "{out}");
    // Filters: by component.
    let lb_only = up.ctl_ok(&["logs", "--request-id", "e2e-trace-42", "--component", "lb"]);
    assert!(!lb_only.is_empty() && lb_only.lines().all(|l| l.split_whitespace().nth(1) == Some("lb")));

    // An upload: the request in the load balancer and the web server, its
    // job in the worker (the job carries the request's id).
    let user = crate::signup(&up.web, "logger").await;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(imaging::samples::jpeg(320, 240)).file_name("p.jpg"),
    );
    let r = user
        .post(format!("{}/api/photos", up.web))
        .header("x-request-id", "e2e-upload-7")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let out = wait_lines(
        &up,
        &["--request-id", "e2e-upload-7"],
        &["lb", "web", "worker"],
        60,
    )
    .await;
    println!("{out}");

    // The collector down: the lines wait in up's buffer and arrive after.
    up.ctl_ok(&["kill", "logs"]);
    for i in 0..20 {
        request(&up, &format!("while-down-{i}")).await;
    }
    up.ctl_ok(&["start", "logs"]);
    for i in [0, 19] {
        wait_lines(
            &up,
            &["--request-id", &format!("while-down-{i}"), "--component", "lb"],
            &["lb"],
            30,
        )
        .await;
    }
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}
