//! End to end: the built binary, started as a user starts it.

mod browser;
mod cache_tier;
mod cdn;
mod dashboard;
mod data_tier;
mod helpers;
mod log_format;
mod logs;
mod multi_site;
mod prometheus;
mod queue;
mod sharded;
mod up;
mod web_tier;

use helpers::{alive, run, signal, Up};
use nix::sys::signal::Signal;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use std::time::{Duration, Instant};

async fn signup(web: &str, name: &str) -> reqwest::Client {
    let c = helpers::http_client(true);
    let r = c
        .post(format!("{web}/api/signup"))
        .json(&serde_json::json!({"username": name, "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    c
}

async fn upload_and_wait(web: &str, c: &reqwest::Client) -> Value {
    let id = upload(web, c, imaging::samples::jpeg(640, 480)).await;
    wait_processed(web, c, id).await
}

/// Uploads a JPEG; returns the photo's id.
async fn upload(web: &str, c: &reqwest::Client, jpeg: Vec<u8>) -> i64 {
    let form = Form::new()
        .part("file", Part::bytes(jpeg).file_name("p.jpg"))
        .text("caption", "e2e");
    let r = c
        .post(format!("{web}/api/photos"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .expect("ids are strings")
        .parse()
        .unwrap()
}

/// Polls a photo until it leaves `processing` (at most 60 s).
async fn wait_processed(web: &str, c: &reqwest::Client, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = helpers::get_json(c, &format!("{web}/api/photos/{id}")).await;
        if p["status"] != "processing" {
            return p;
        }
        assert!(Instant::now() < deadline, "photo {id} still processing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn up_serves_the_app_until_stopped() {
    let up = Up::start("");
    up.wait_ok(&format!("{}/readyz", up.web), 60).await;
    let page = reqwest::get(&up.web).await.unwrap().text().await.unwrap();
    assert!(page.contains("<html"), "the page is served from the binary");

    let c = signup(&up.web, "eve").await;
    let photo = upload_and_wait(&up.web, &c).await;
    assert_eq!(photo["status"], "ready", "{photo}");
    for v in ["thumbnail", "square", "sharpened", "blurred", "original"] {
        let url = format!("{}{}", up.web, photo["variants"][v].as_str().unwrap());
        let r = c.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{v}");
        assert_eq!(r.headers()["content-type"], "image/jpeg");
        assert!(!r.bytes().await.unwrap().is_empty());
    }
    let m = helpers::metrics_text(&up.worker_metrics).await;
    assert!(m.contains("scalestack_jobs_total{outcome=\"done\"} 1"), "{m}");
    assert!(up.data().join("scalestack.db").exists(), "state under ./data");

    let pids = [up.pid("web-1").unwrap(), up.pid("worker-1").unwrap()];
    let public = up.web.clone();
    // Ctrl-C, as a user at the terminal stops it.
    let (status, log) = up.stop_with(Signal::SIGINT);
    assert!(status.success(), "up exited with {status}; log:\n{log}");
    assert!(log.contains(&public), "up printed its address: {log}");
    assert!(log.contains("child stopped"), "{log}");
    for pid in pids {
        assert!(!alive(pid), "child {pid} outlived up");
    }
}

#[tokio::test]
async fn a_worker_sent_sigterm_mid_job_finishes_it_first() {
    let up = Up::start("");
    up.wait_ok(&format!("{}/readyz", up.web), 60).await;
    let c = signup(&up.web, "sig").await;
    // Large enough that rendering takes a while.
    let id = upload(&up.web, &c, imaging::samples::jpeg(3000, 2000)).await;
    up.wait_worker_busy().await;
    let old = up.pid("worker-1").unwrap();
    signal(old, Signal::SIGTERM);
    // Its replacement (up restarts it) cannot claim the job before the
    // 120 s visibility timeout: a ready photo was finished by the old one.
    let photo = wait_processed(&up.web, &c, id).await;
    assert_eq!(photo["status"], "ready", "{photo}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(old) {
        assert!(Instant::now() < deadline, "the worker did not exit after its job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn up_restarts_crashed_children() {
    let up = Up::start("");
    let ready = format!("{}/readyz", up.web);
    up.wait_ok(&ready, 60).await;
    let c = signup(&up.web, "mallory").await;

    for name in ["web-1", "worker-1"] {
        let old = up.pid(name).unwrap();
        signal(old, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(30);
        while up.pid(name).is_none_or(|p| p == old) {
            assert!(
                Instant::now() < deadline,
                "{name} not restarted; log:\n{}",
                up.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    up.wait_ok(&ready, 30).await;
    // The session survived the web server's death: it lives in the store.
    let me = c.get(format!("{}/api/me", up.web)).send().await.unwrap();
    assert_eq!(me.status(), 200);
    // The restarted worker processes new uploads.
    assert_eq!(upload_and_wait(&up.web, &c).await["status"], "ready");
    let (status, _) = up.stop();
    assert!(status.success());
}

#[tokio::test]
async fn the_command_line_explains_itself_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["up", "--help"],
        &["web", "--help"],
        &["worker", "--help"],
    ] {
        let out = run(args, dir.path());
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
    std::fs::write(dir.path().join("bad.toml"), "[web]\ncount = 0\n").unwrap();
    let out = run(&["up", "--topology", "bad.toml"], dir.path());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("web.count"),
        "{out:?}"
    );
    let out = run(&["up", "--topology", "missing.toml"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    assert!(
        !dir.path().join("data").exists(),
        "a refused topology creates nothing"
    );
}
