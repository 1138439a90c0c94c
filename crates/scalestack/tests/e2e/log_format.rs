//! `--log-format json` (or `SCALESTACK_LOG_FORMAT=json`): a role process
//! writes one JSON object per line, each with a timestamp, a level, a
//! target and a message, the fields of the event and of its span (the
//! request id of an access-log line), for a log shipper to parse.

use crate::helpers::{free_port, http_client, signal, BIN};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts the binary in `dir` with `args` and `env`, its stdout and stderr
/// in `dir/stdout` and `dir/stderr`.
fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let file = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(file("stdout"))
        .stderr(file("stderr"))
        .spawn()
        .unwrap()
}

/// SIGTERM, then waits (at most 30 s) for a clean exit.
fn stop(mut child: Child) {
    signal(child.id() as i32, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// Every line of `text` as a JSON object with the fields every event has;
/// fails on the first line that is not one.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\nin:\n{text}"));
            assert!(v.is_object(), "{line}");
            let timestamp = v["timestamp"]
                .as_str()
                .unwrap_or_else(|| panic!("no timestamp: {line}"));
            // RFC 3339, UTC: 2026-12-03T07:38:45.123456Z
            assert!(
                timestamp.len() >= 20 && timestamp.as_bytes()[10] == b'T' && timestamp.ends_with('Z'),
                "{line}"
            );
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap_or("")),
                "{line}"
            );
            assert!(v["target"].is_string(), "no target: {line}");
            assert!(v["fields"]["message"].is_string(), "no message: {line}");
            v
        })
        .collect()
}

/// The first line whose message is `message`.
fn find<'a>(lines: &'a [Value], message: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["fields"]["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} line in {lines:#?}"))
}

/// Waits until `url` answers 200, failing with the process's output.
async fn wait_ok(url: &str, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(url).await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready; stdout:\n{}\nstderr:\n{}",
            read(dir, "stdout"),
            read(dir, "stderr")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_web_server_started_with_log_format_json_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let web = spawn(
        dir.path(),
        &[
            "--log-format",
            "json",
            "web",
            "--listen",
            &listen,
            "--data-dir",
            "data",
        ],
        &[],
    );
    let base = format!("http://{listen}");
    wait_ok(&format!("{base}/readyz"), dir.path()).await;
    let c = http_client(true);
    let r = c
        .get(format!("{base}/healthz"))
        .header("x-request-id", "json-log-e2e-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{base}/api/signup"))
        .json(&serde_json::json!({"username": "jsonlog", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    stop(web);

    // Logs go to stdout (as the README says), and nothing else is written
    // anywhere.
    assert_eq!(read(dir.path(), "stderr"), "");
    let lines = json_lines(&read(dir.path(), "stdout"));

    let listening = find(&lines, "web server listening");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["fields"]["addr"], listen.as_str());
    assert!(
        listening["target"].as_str().unwrap().starts_with("app"),
        "{listening}"
    );

    // The access-log line of the request carries its request id, method
    // and path in its span, and the status in its fields.
    let access = lines
        .iter()
        .find(|l| l["span"]["request_id"] == "json-log-e2e-1" && l["fields"]["status"].is_number())
        .unwrap_or_else(|| panic!("no access-log line for the request in {lines:#?}"));
    assert_eq!(access["fields"]["status"], 200);
    assert_eq!(access["span"]["name"], "request");
    assert_eq!(access["span"]["method"], "GET");
    assert_eq!(access["span"]["path"], "/healthz");

    // An application event keeps its own fields, typed.
    let signed_up = find(&lines, "signed up");
    assert_eq!(signed_up["fields"]["username"], "jsonlog");
    assert!(signed_up["fields"]["user_id"].is_i64(), "{signed_up}");
    assert_eq!(signed_up["span"]["path"], "/api/signup");

    find(&lines, "shutdown requested");
}

/// The same through the environment, for a worker; and without it a
/// process writes text, so the format is the flag's doing.
#[tokio::test]
async fn the_format_can_come_from_the_environment_and_text_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let worker = spawn(
        dir.path(),
        &["worker", "--metrics-listen", &metrics, "--data-dir", "data"],
        &[("SCALESTACK_LOG_FORMAT", "json")],
    );
    wait_ok(&format!("http://{metrics}/metrics"), dir.path()).await;
    stop(worker);
    assert_eq!(read(dir.path(), "stderr"), "");
    let lines = json_lines(&read(dir.path(), "stdout"));
    find(&lines, "worker stopped");

    let text_dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let worker = spawn(
        text_dir.path(),
        &["worker", "--metrics-listen", &metrics, "--data-dir", "data"],
        &[],
    );
    wait_ok(&format!("http://{metrics}/metrics"), text_dir.path()).await;
    stop(worker);
    let text = read(text_dir.path(), "stdout");
    assert!(text.contains("worker stopped"), "{text}");
    assert!(
        text.lines().all(|l| serde_json::from_str::<Value>(l).is_err()),
        "text lines by default:\n{text}"
    );
}

/// `up` hands the format to every process it starts: given `--log-format
/// json`, its children write JSON lines too, not text between its own
/// (only `up`'s banner lines for the person at the terminal are text).
#[tokio::test]
async fn up_hands_the_format_to_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let (control, worker, web) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("topology.toml"),
        format!(
            "[control]\nlisten = \"127.0.0.1:{control}\"\n\
             [worker]\nmetrics_listen = \"127.0.0.1:{worker}\"\npoll_ms = 20\n\
             [web]\nlisten = \"127.0.0.1:{web}\"\nargon2_memory_kib = 1024\n"
        ),
    )
    .unwrap();
    let up = spawn(
        dir.path(),
        &["--log-format", "json", "up", "--topology", "topology.toml"],
        &[],
    );
    let base = format!("http://127.0.0.1:{web}");
    wait_ok(&format!("{base}/readyz"), dir.path()).await;
    let r = http_client(false)
        .get(format!("{base}/healthz"))
        .header("x-request-id", "json-log-e2e-up")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stop(up);

    assert_eq!(read(dir.path(), "stderr"), "");
    let out = read(dir.path(), "stdout");
    let logs: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("scalestack is up: ") && *l != "scalestack: stopping")
        .collect();
    let lines = json_lines(&logs.join("\n"));
    // `up`'s own lines and each child's.
    assert_eq!(find(&lines, "child started")["target"], "up::supervisor");
    find(&lines, "web server listening");
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["request_id"] == "json-log-e2e-up" && l["fields"]["status"] == 200),
        "no access-log line of the web child in {lines:#?}"
    );
    find(&lines, "worker stopped");
}
