//! `[prometheus]`: `up` runs Prometheus and the node exporter; Prometheus
//! scrapes every process of the topology through the target list `up`
//! keeps (one new web server from `ctl scale` included), its recording
//! rules have values once the site takes requests, its alert rules are
//! loaded, and every series the rules name exists in a live scrape (for the
//! tiers this topology runs).

use crate::helpers::{free_port, free_ports, Up};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

async fn api(prometheus: &str, path: &str) -> Value {
    reqwest::get(format!("{prometheus}{path}"))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()
}

/// The active targets' `name` labels and health.
async fn targets(prometheus: &str) -> Vec<(String, String)> {
    let t = api(prometheus, "/api/v1/targets?state=active").await;
    t["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["labels"]["name"].as_str().unwrap_or("").to_owned(),
                t["health"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn prometheus_scrapes_every_process_and_its_rules_have_values() {
    let (prom, node) = (free_port(), free_port());
    let (cdn, cdn_admin) = (free_ports(1), free_ports(1));
    let up = Up::web_tier(
        2,
        300,
        &format!(
            "[cdn]\nlisten = \"127.0.0.1:{cdn}\"\nadmin_listen = \"127.0.0.1:{cdn_admin}\"\nmemory_mb = 16\n\
             [prometheus]\nlisten = \"127.0.0.1:{prom}\"\nnode_exporter = \"127.0.0.1:{node}\"\ninterval_ms = 1000\n"
        ),
    );
    up.wait_up(120).await;
    let prometheus = format!("http://127.0.0.1:{prom}");
    let ps = up.ctl_ok(&["ps"]);
    assert!(ps.contains("prometheus") && ps.contains("node-exporter"), "{ps}");

    // Every process is a target, and up.
    let expected: BTreeSet<&str> = [
        "up",
        "lb",
        "web-1",
        "web-2",
        "worker-1",
        "cdn-1",
        "prometheus",
        "node-exporter",
    ]
    .into();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = targets(&prometheus).await;
        let up_names: BTreeSet<&str> = seen
            .iter()
            .filter(|(_, h)| h == "up")
            .map(|(n, _)| n.as_str())
            .collect();
        if up_names == expected {
            break;
        }
        assert!(Instant::now() < deadline, "targets: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A web server `ctl scale` adds becomes a target without a restart.
    up.ctl_ok(&["scale", "web=3"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !targets(&prometheus)
        .await
        .iter()
        .any(|(n, h)| n == "web-3" && h == "up")
    {
        assert!(Instant::now() < deadline, "web-3 never scraped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Traffic, a job, then the recording rules have values.
    let user = crate::signup(&up.web, "prom").await;
    let photo = crate::upload_and_wait(&up.web, &user).await;
    assert_eq!(photo["status"], "ready");
    let http = reqwest::Client::new();
    for _ in 0..50 {
        http.get(format!("{}/api/users/prom/photos", up.web))
            .send()
            .await
            .unwrap();
    }
    for record in [
        "scalestack:lb_requests:rate1m",
        "scalestack:web_requests:rate1m",
        "scalestack:lb_backend_latency_seconds:p99",
        "scalestack:host_cpu_busy:ratio1m",
    ] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = api(&prometheus, &format!("/api/v1/query?query={record}")).await;
            if r["data"]["result"].as_array().is_some_and(|a| !a.is_empty()) {
                break;
            }
            assert!(Instant::now() < deadline, "{record} has no value: {r}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // The alert rules are loaded.
    let rules = api(&prometheus, "/api/v1/rules?type=alert").await;
    let text = rules.to_string();
    for alert in [
        "SiteDown",
        "ProcessDown",
        "ReplicaLagOverCeiling",
        "QueueGrowing",
        "ErrorRatioHigh",
        "DiskNearlyFull",
    ] {
        assert!(text.contains(alert), "{alert} not loaded: {text}");
    }

    // Every series the rules name exists, but those of tiers this
    // topology does not run (the DNS servers, the PostgreSQL router).
    let mut named = BTreeSet::new();
    for word in up::prometheus::RULES.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if (word.starts_with("scalestack_") || word.starts_with("node_")) && !word.contains(':') {
            named.insert(word.to_owned());
        }
    }
    let absent_tiers = ["scalestack_dns_", "scalestack_db_router_"];
    // (The job's counter may not have been scraped yet.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let names = api(&prometheus, "/api/v1/label/__name__/values").await;
        let exported: BTreeSet<String> = names["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&String> = named
            .iter()
            .filter(|n| !absent_tiers.iter().any(|t| n.starts_with(t)))
            .filter(|n| !exported.contains(*n))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rules name series no process exports: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}
