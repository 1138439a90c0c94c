//! The queue stage: uploads through a three-node NATS JetStream cluster
//! that `up` runs, behind the SQL outbox; a broker node and then the whole
//! broker fail under uploads; a poison image is dead-lettered and retried
//! with `ctl`; workers and web servers scale by themselves.

use super::{signup, upload, wait_processed};
use crate::helpers::{self, Up};
use serde_json::Value;
use std::time::{Duration, Instant};
use test_support::free_ports;

/// The web tier (two servers behind the LB) with its queue on a NATS
/// cluster of `nodes` that `up` runs, on free ports, plus `extra`.
fn queue_tier(nodes: u16, extra: &str) -> Up {
    queue_tier_with_ack_wait(nodes, 10_000, extra)
}

fn queue_tier_with_ack_wait(nodes: u16, ack_wait_ms: u64, extra: &str) -> Up {
    let (port, cluster, monitor) = (free_ports(nodes), free_ports(nodes), free_ports(nodes));
    Up::web_tier(
        2,
        300,
        &format!(
            "[queue]\nkind = \"nats\"\nmax_attempts = 3\nbackoff_ms = 100\nack_wait_ms = {ack_wait_ms}\n\
             [nats]\nnodes = {nodes}\nport = {port}\ncluster_port = {cluster}\nmonitor_port = {monitor}\n\
             sync = \"always\"\n{extra}"
        ),
    )
}

/// Waits for every photo to leave `processing`; their statuses.
async fn statuses(up: &Up, c: &reqwest::Client, ids: &[i64]) -> Vec<String> {
    let mut out = Vec::new();
    for &id in ids {
        let p = wait_processed(&up.web, c, id).await;
        out.push(p["status"].as_str().unwrap_or_default().to_owned());
    }
    out
}

#[tokio::test]
async fn a_broker_node_then_the_whole_broker_fail_under_uploads_and_no_job_is_lost() {
    let up = queue_tier(3, "");
    up.wait_up(120).await;
    let ps = up.ctl_ok(&["ps"]);
    for node in ["nats-1", "nats-2", "nats-3"] {
        assert!(ps.contains(node), "{ps}");
    }
    let c = signup(&up.web, "queuer").await;
    let jpeg = imaging::samples::jpeg(320, 240);

    // One node of three killed (SIGKILL) while uploads go on.
    let mut ids = Vec::new();
    for i in 0..20 {
        if i == 5 {
            up.ctl_ok(&["kill", "nats-2"]);
        }
        ids.push(upload(&up.web, &c, jpeg.clone()).await);
    }
    up.ctl_ok(&["start", "nats-2"]);

    // The whole broker down: uploads are still accepted (the outbox).
    for node in ["nats-1", "nats-2", "nats-3"] {
        up.ctl_ok(&["kill", node]);
    }
    let mut during_outage = Vec::new();
    for _ in 0..10 {
        during_outage.push(upload(&up.web, &c, jpeg.clone()).await);
    }
    let pending = statuses_now(&up, &c, &during_outage).await;
    for node in ["nats-1", "nats-2", "nats-3"] {
        up.ctl_ok(&["start", node]);
    }
    ids.extend(&during_outage);

    let done = statuses(&up, &c, &ids).await;
    let ready = done.iter().filter(|s| *s == "ready").count();
    let lost = done.len() - ready;
    println!(
        "queue: {} uploads ({} while every NATS node was down, {} of those still processing then); \
         {ready} ready, {lost} lost or failed",
        ids.len(),
        during_outage.len(),
        pending
    );
    assert_eq!(lost, 0, "every upload processed: {done:?}");
    let relayed = helpers::web_metric(&up, "scalestack_outbox_relayed_total", &[]).await;
    assert!(relayed >= 1.0, "the web servers relay the outbox ({relayed})");
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}

/// How many of `ids` are still `processing` now.
async fn statuses_now(up: &Up, c: &reqwest::Client, ids: &[i64]) -> usize {
    let mut n = 0;
    for id in ids {
        let p = helpers::get_json(c, &format!("{}/api/photos/{id}", up.web)).await;
        n += usize::from(p["status"] == "processing");
    }
    n
}

#[tokio::test]
async fn a_worker_killed_mid_job_has_its_job_redelivered_and_the_photo_ends_ready_once() {
    // A short ack wait, so the killed worker's delivery comes back soon; the
    // worker reports progress three times per ack wait while it renders.
    let up = queue_tier_with_ack_wait(1, 3_000, "");
    up.wait_up(120).await;
    let c = signup(&up.web, "victim").await;
    let id = upload(&up.web, &c, imaging::samples::jpeg(3000, 2000)).await;
    up.wait_worker_busy().await;
    let old = up.pid("worker-1").unwrap();
    helpers::signal(old, nix::sys::signal::Signal::SIGKILL);
    let photo = wait_processed(&up.web, &c, id).await;
    assert_eq!(photo["status"], "ready", "{photo}");
    // Rendered once, by the worker up started in its place.
    let m = helpers::metrics_text(&up.worker_metrics).await;
    let done = helpers::sample(&m, "scalestack_jobs_total", &["outcome=\"done\""]).unwrap_or(0.0);
    assert_eq!(done, 1.0, "{m}");
    // Every variant whole: an image that decodes to its last pixel.
    let variants = photo["variants"].as_object().unwrap();
    assert!(variants.len() > 1, "{photo}");
    for (name, url) in variants {
        let body = c
            .get(format!("{}{}", up.web, url.as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(body.status(), 200, "{name}");
        let bytes = body.bytes().await.unwrap();
        imaging::decode(&bytes, 100_000_000).unwrap_or_else(|e| panic!("{name} is not whole: {e}"));
    }
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn a_poison_image_is_dead_lettered_after_its_attempts_and_retried_by_ctl() {
    let up = queue_tier(1, "");
    up.wait_up(120).await;
    let c = signup(&up.web, "poisoner").await;
    let id = upload(&up.web, &c, imaging::samples::png_corrupt_body(64, 64)).await;
    let photo = wait_processed(&up.web, &c, id).await;
    assert_eq!(photo["status"], "failed", "{photo}");

    let dead = wait_dead(&up, 1).await;
    let job = &dead[0];
    assert_eq!(job["kind"], domain::jobs::PROCESS_PHOTO, "{job}");
    assert_eq!(job["attempts"], 3, "dead after max_attempts = 3: {job}");
    assert!(
        !job["last_error"].as_str().unwrap_or_default().is_empty(),
        "{job}"
    );
    let job_id = job["id"].as_i64().unwrap().to_string();
    let listed = up.ctl_ok(&["jobs", "dead"]);
    assert!(
        listed.contains(&job_id) && listed.contains(domain::jobs::PROCESS_PHOTO),
        "{listed}"
    );

    assert!(up.ctl_ok(&["jobs", "retry", &job_id]).contains("ready again"));
    // Retried: delivered again three times, and dead again (the image is
    // still poison), never twice in the list.
    let again = wait_dead(&up, 1).await;
    assert_eq!(again[0]["id"], job["id"]);
    assert_eq!(
        up.ctl(&["jobs", "retry", "12345"]).status.code(),
        Some(1),
        "unknown id refused"
    );
    assert!(
        !up.ctl(&["jobs", "retry", "nope"]).status.success(),
        "bad id refused"
    );
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}

/// The dead jobs once `n` are listed and none is being retried (60 s).
async fn wait_dead(up: &Up, n: usize) -> Vec<Value> {
    let c = helpers::http_client(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dead = helpers::get_json(&c, &format!("{}/api/jobs/dead", up.control)).await;
        let list = dead.as_array().cloned().unwrap_or_default();
        if list.len() == n {
            return list;
        }
        assert!(Instant::now() < deadline, "dead jobs: {dead}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn workers_and_web_servers_scale_with_the_load_and_back() {
    let up = queue_tier(
        1,
        "[autoscale.worker]\nmin = 1\nmax = 4\ntarget_backlog = 2\nstabilization_secs = 3\ninterval_ms = 200\n\
         [autoscale.web]\nmin = 2\nmax = 4\ntarget_rps = 40\nstabilization_secs = 3\ninterval_ms = 300\n",
    );
    up.wait_up(120).await;
    let c = signup(&up.web, "burster").await;

    // A burst of uploads: the workers go from 1 to 4, then back to 1.
    let jpeg = imaging::samples::jpeg(1024, 768);
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(upload(&up.web, &c, jpeg.clone()).await);
    }
    let done = statuses(&up, &c, &ids).await;
    assert!(done.iter().all(|s| s == "ready"), "{done:?}");
    let peak = wait_autoscale(&up, "worker", |t| t["last"]["current"] == 1).await;
    assert_eq!(peak, 4, "the burst scaled the workers to max");

    // A load ramp through the LB: more web servers, then back to 2, with
    // no failed request.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (stop, url) = (stop.clone(), format!("{}/api/photos/{}", up.web, ids[0]));
        load.push(tokio::spawn(async move {
            let c = helpers::http_client(false);
            let (mut ok, mut failed) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status().is_success() => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    wait_autoscale(&up, "web", |t| t["last"]["current"].as_u64() >= Some(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for l in load {
        let (o, f) = l.await.unwrap();
        ok += o;
        failed += f;
    }
    let web_peak = wait_autoscale(&up, "web", |t| t["last"]["current"] == 2).await;

    let metrics = helpers::metrics_text(&up.control).await;
    let events = |role: &str, dir: &str| {
        helpers::sample(
            &metrics,
            "scalestack_up_autoscale_scale_events_total",
            &[&format!("role=\"{role}\""), &format!("direction=\"{dir}\"")],
        )
        .unwrap_or(0.0)
    };
    let (wu, wd, hu, hd) = (
        events("worker", "up"),
        events("worker", "down"),
        events("web", "up"),
        events("web", "down"),
    );
    println!(
        "autoscale: workers 1 → {peak} → 1 ({wu} up, {wd} down events); web 2 → {web_peak} → 2 \
         ({hu} up, {hd} down events); {ok} requests during the ramp, {failed} failed; {} photos ready",
        ids.len()
    );
    assert_eq!(failed, 0, "no request failed while web servers came and went");
    // No flapping: a burst and a ramp each need a few steps up and down.
    assert!(
        wu >= 1.0 && wd >= 1.0 && wu + wd <= 6.0,
        "worker scale events {wu} up, {wd} down"
    );
    assert!(
        hu >= 1.0 && hd >= 1.0 && hu + hd <= 6.0,
        "web scale events {hu} up, {hd} down"
    );
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}

/// Polls `ctl autoscale`'s API until `done(tier)`; the highest replica
/// count the tier's history shows (90 s at most).
async fn wait_autoscale(up: &Up, role: &str, done: impl Fn(&Value) -> bool) -> u64 {
    let c = helpers::http_client(false);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let all = helpers::get_json(&c, &format!("{}/api/autoscale", up.control)).await;
        let tier = &all[role];
        if done(tier) {
            let table = up.ctl_ok(&["autoscale"]);
            assert!(table.contains(role), "{table}");
            return tier["history"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["actual"].as_u64())
                .max()
                .unwrap_or(0);
        }
        assert!(Instant::now() < deadline, "{role} autoscale: {tier}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
