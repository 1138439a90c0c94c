//! The live dashboard at the control address, in headless Chromium: with
//! `[prometheus]`, every process of the topology is shown in its tier, the
//! load balancer's box carries its request rate from Prometheus, the
//! per-tier charts draw, a `kill` shows within seconds, and the page logs
//! no error. With `SCALESTACK_SCREENSHOTS=DIR` it saves
//! `DIR/dashboard.png` (how `docs/dashboard.png` was made).

use crate::browser::Browser;
use crate::helpers::{free_port, Up};
use serde_json::json;
use std::time::Instant;

/// Records the page's errors from its first script on.
const ERROR_RECORDER: &str = "window.__errors = [];\
    addEventListener('error', e => __errors.push(String(e.message)));\
    addEventListener('unhandledrejection', e => __errors.push(String(e.reason)));\
    const ce = console.error; console.error = (...a) => { __errors.push(a.join(' ')); ce(...a); };";

#[tokio::test]
async fn the_dashboard_shows_every_process_live_and_a_kill_within_seconds() {
    let (prom, node) = (free_port(), free_port());
    let up = Up::web_tier(
        2,
        300,
        &format!(
            "[prometheus]\nlisten = \"127.0.0.1:{prom}\"\nnode_exporter = \"127.0.0.1:{node}\"\ninterval_ms = 1000\n"
        ),
    );
    up.wait_up(120).await;
    let mut b = Browser::launch(1400, 1000).await;
    b.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": ERROR_RECORDER }),
    )
    .await;
    b.navigate(&up.control).await;
    let names = ["lb", "web-1", "web-2", "worker-1", "prometheus", "node-exporter"];
    let all_shown =
        format!("{names:?}.every(n => document.querySelector(`#topology [data-name=\"${{n}}\"]`))");
    b.wait_for(&all_shown, "document.getElementById('topology').innerText", 30)
        .await;

    // Requests through the load balancer: its box shows their rate.
    let http = reqwest::Client::new();
    for _ in 0..100 {
        http.get(format!("{}/healthz", up.web)).send().await.unwrap();
    }
    b.wait_for(
        "(document.querySelector('#topology [data-name=\"lb\"] .m') || {}).textContent?.includes('r/s') === true",
        "document.getElementById('topology').innerText",
        60,
    )
    .await;
    b.wait_for(
        "document.querySelectorAll('#charts .chart').length >= 2",
        "document.getElementById('charts').innerText",
        60,
    )
    .await;

    // The business, from the store: a sign-up today.
    crate::signup(&up.web, "dashboard").await;
    b.wait_for(
        "/^1 users/.test(document.getElementById('business').innerText)",
        "document.getElementById('business').innerText",
        30,
    )
    .await;

    // A kill shows within seconds.
    let killed = Instant::now();
    up.ctl_ok(&["kill", "web-2"]);
    b.wait_for(
        "document.querySelector('#topology [data-name=\"web-2\"]').classList.contains('bad')",
        "document.querySelector('#topology [data-name=\"web-2\"]').outerHTML",
        10,
    )
    .await;
    println!(
        "the dashboard showed web-2 down {} ms after the kill",
        killed.elapsed().as_millis()
    );

    let errors = b.eval("window.__errors").await;
    assert_eq!(errors, json!([]), "the page logged errors");
    if let Ok(dir) = std::env::var("SCALESTACK_SCREENSHOTS") {
        let shot = b.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let png = base64_decode(shot["data"].as_str().unwrap());
        std::fs::write(std::path::Path::new(&dir).join("dashboard.png"), png).unwrap();
    }
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}

/// Standard base64 (what CDP sends screenshots in).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    bytes
        .chunks(4)
        .flat_map(|c| {
            let n = c.iter().fold(0u32, |n, &v| n << 6 | u32::from(v)) << (6 * (4 - c.len()));
            let out = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.into_iter().take(c.len() * 3 / 4)
        })
        .collect()
}
