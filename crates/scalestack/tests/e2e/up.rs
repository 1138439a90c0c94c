//! The orchestrator itself: its `/metrics` (children by state, restarts per
//! child, scale operations), the Prometheus target list (`/targets` and
//! `<data>/prometheus/targets.json`) following `ctl scale`, and `ctl scale
//! worker=N`: new workers run and are listed, workers scaled away finish the
//! job in hand before they exit.

use crate::helpers::{get_json, http_client, sample, signal, Up};
use crate::{signup, upload, wait_processed};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn up_metrics(up: &Up) -> String {
    let r = reqwest::get(format!("{}/metrics", up.control)).await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The target list as `GET /targets` gives it, checked against the file:
/// name → (role, address, site).
async fn targets(up: &Up) -> BTreeMap<String, (String, String, String)> {
    let c = http_client(false);
    let list = get_json(&c, &format!("{}/targets", up.control)).await;
    let file = std::fs::read(up.data().join("prometheus/targets.json")).unwrap();
    let on_disk: Value = serde_json::from_slice(&file).unwrap();
    assert_eq!(list, on_disk, "the file is the list the API serves");
    list.as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let targets = g["targets"].as_array().unwrap();
            assert_eq!(targets.len(), 1, "{g}");
            let label = |k: &str| g["labels"][k].as_str().unwrap().to_owned();
            (
                label("name"),
                (
                    label("role"),
                    targets[0].as_str().unwrap().to_owned(),
                    label("site"),
                ),
            )
        })
        .collect()
}

fn ctl_ok(up: &Up, args: &[&str]) -> String {
    let out = up.ctl(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ctl {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Names in the target list of a role.
fn of_role(list: &BTreeMap<String, (String, String, String)>, role: &str) -> Vec<String> {
    list.iter()
        .filter(|(_, (r, _, _))| r == role)
        .map(|(n, _)| n.clone())
        .collect()
}

/// Polls `up`'s metrics until `name{labels}` has `value` (at most 30 s).
async fn wait_sample(up: &Up, name: &str, labels: &[&str], value: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = up_metrics(up).await;
        if sample(&m, name, labels) == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} never {value}:\n{m}\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn up_serves_its_metrics_and_a_target_list_that_follows_scaling() {
    let up = Up::web_tier(2, 300, "");
    up.wait_up(90).await;

    // Every child is listed with its metrics address and labels, and `up`.
    let list = targets(&up).await;
    let host = |url: &str| url.trim_start_matches("http://").to_owned();
    assert_eq!(list["up"], ("up".into(), host(&up.control), "local".into()));
    assert_eq!(
        list["lb"].1,
        host(up.lb_admin.as_ref().unwrap()),
        "the LB's metrics are on its admin port"
    );
    assert_eq!(list["web-1"], ("web".into(), host(&up.webs[0]), "local".into()));
    assert_eq!(list["web-2"], ("web".into(), host(&up.webs[1]), "local".into()));
    assert_eq!(
        list["worker-1"],
        ("worker".into(), host(&up.workers[0]), "local".into())
    );
    assert_eq!(list.len(), 5, "{list:?}");
    // Every address listed serves metrics.
    for (name, (_, addr, _)) in &list {
        let r = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }

    let m = up_metrics(&up).await;
    assert_eq!(
        sample(&m, "scalestack_up_children", &["state=\"running\""]),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "scalestack_up_child_restarts_total",
            &["name=\"web-2\"", "role=\"web\"", "site=\"local\""]
        ),
        Some(0.0),
        "{m}"
    );

    // A crash is a restart of that child, counted.
    signal(up.pid("web-2").unwrap(), Signal::SIGKILL);
    wait_sample(
        &up,
        "scalestack_up_child_restarts_total",
        &["name=\"web-2\""],
        1.0,
    )
    .await;
    wait_sample(&up, "scalestack_up_children", &["state=\"running\""], 4.0).await;

    // The list follows the topology as it scales, both ways.
    ctl_ok(&up, &["scale", "web=4"]);
    let list = targets(&up).await;
    assert_eq!(of_role(&list, "web"), ["web-1", "web-2", "web-3", "web-4"]);
    let web1_port: u16 = host(&up.webs[0]).rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(list["web-4"].1, format!("127.0.0.1:{}", web1_port + 3));
    ctl_ok(&up, &["scale", "worker=3"]);
    let list = targets(&up).await;
    assert_eq!(of_role(&list, "worker"), ["worker-1", "worker-2", "worker-3"]);
    for w in &up.workers[..3] {
        up.wait_ok(&format!("{w}/metrics"), 30).await;
    }
    ctl_ok(&up, &["scale", "worker=1"]);
    ctl_ok(&up, &["scale", "web=2"]);
    let list = targets(&up).await;
    assert_eq!(of_role(&list, "web"), ["web-1", "web-2"]);
    assert_eq!(of_role(&list, "worker"), ["worker-1"]);
    assert!(up.ctl(&["scale", "db=2"]).status.code() != Some(0));

    let m = up_metrics(&up).await;
    for (role, result, n) in [
        ("web", "ok", 2.0),
        ("worker", "ok", 2.0),
        ("unknown", "refused", 1.0),
    ] {
        let labels = [format!("role=\"{role}\""), format!("result=\"{result}\"")];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(
            sample(&m, "scalestack_up_scale_operations_total", &labels),
            Some(n),
            "{role} {result}: {m}"
        );
    }
    assert_eq!(
        sample(&m, "scalestack_up_children", &["state=\"running\""]),
        Some(4.0),
        "{m}"
    );
    assert!(
        sample(&m, "scalestack_up_child_restarts_total", &["name=\"web-4\""]).is_none(),
        "a child scaled away leaves no series: {m}"
    );
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn ctl_scale_worker_n_lists_new_workers_and_lets_removed_ones_finish_their_job() {
    let up = Up::start("");
    up.wait_up(90).await;
    let c = signup(&up.web, "scaler").await;

    let ps = ctl_ok(&up, &["scale", "worker=3"]);
    for name in ["worker-1", "worker-2", "worker-3"] {
        assert!(
            ps.lines().any(|l| l.starts_with(name) && l.contains("running")),
            "{name}: {ps}"
        );
    }
    let list = targets(&up).await;
    assert_eq!(of_role(&list, "worker"), ["worker-1", "worker-2", "worker-3"]);
    for w in &up.workers[..3] {
        up.wait_ok(&format!("{w}/readyz"), 30).await;
    }

    // worker-1 is held down: the job can only go to one of the two copies
    // that the scale-down below removes.
    ctl_ok(&up, &["kill", "worker-1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctl_ok(&up, &["ps"])
        .lines()
        .any(|l| l.starts_with("worker-1") && l.contains("stopped"))
    {
        assert!(Instant::now() < deadline, "worker-1 not stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Large enough that rendering takes a while.
    let id = upload(&up.web, &c, imaging::samples::jpeg(3000, 2000)).await;
    let metrics = format!("{}/metrics", up.workers[1]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        if m.contains("scalestack_queue_depth{state=\"in_flight\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "no worker claimed the job: {m}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pids = [up.pid("worker-2").unwrap(), up.pid("worker-3").unwrap()];

    // Scaling down sends SIGTERM and waits: the copy holding the job
    // finishes it first. Only worker-1 is left, and it is stopped.
    let ps = ctl_ok(&up, &["scale", "worker=1"]);
    assert_eq!(ps.lines().filter(|l| l.starts_with("worker-")).count(), 1, "{ps}");
    for pid in pids {
        assert!(!crate::helpers::alive(pid), "a scaled-down worker still runs");
    }
    let photo = wait_processed(&up.web, &c, id).await;
    assert_eq!(
        photo["status"], "ready",
        "the removed worker finished the job it held: {photo}"
    );
    let list = targets(&up).await;
    assert_eq!(of_role(&list, "worker"), ["worker-1"]);

    // Zero workers is a valid size; the held one goes too.
    ctl_ok(&up, &["scale", "worker=0"]);
    assert!(of_role(&targets(&up).await, "worker").is_empty());
    let ps = ctl_ok(&up, &["ps"]);
    assert!(!ps.contains("worker-"), "{ps}");
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn ctl_ps_kill_and_start_work_on_the_managed_redis() {
    let redis_port = crate::helpers::free_port();
    let up = Up::start(&format!(
        "[cache]\nkind = \"redis\"\n[redis]\nport = {redis_port}\n"
    ));
    up.wait_up(90).await;
    let ps = ctl_ok(&up, &["ps"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with("redis") && l.contains("running")),
        "{ps}"
    );
    let pid = up.pid("redis").unwrap();
    let out = ctl_ok(&up, &["kill", "redis"]);
    assert!(out.contains("stays down"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctl_ok(&up, &["ps"])
        .lines()
        .any(|l| l.starts_with("redis") && l.contains("stopped"))
    {
        assert!(Instant::now() < deadline, "redis not stopped:\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!crate::helpers::alive(pid), "the engine process is gone");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
            .await
            .is_err(),
        "nothing listens while it is stopped"
    );
    // The site is the default one; the engine has no metrics endpoint, so
    // it is no Prometheus target.
    let list = targets(&up).await;
    assert!(!list.contains_key("redis"), "{list:?}");

    ctl_ok(&up, &["start", "redis"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "redis not started again:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ps = ctl_ok(&up, &["ps"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with("redis") && l.contains("running")),
        "{ps}"
    );
    let m = up_metrics(&up).await;
    assert_eq!(
        sample(
            &m,
            "scalestack_up_child_restarts_total",
            &["name=\"redis\"", "role=\"redis\""]
        ),
        Some(0.0),
        "an operator's stop and start is no crash: {m}"
    );
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}

/// Waits until `ctl ps` has a line for `name` satisfying `what`; that line.
async fn wait_ps(up: &Up, name: &str, what: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ps = ctl_ok(up, &["ps"]);
        if let Some(line) = ps.lines().find(|l| l.starts_with(name) && what(l)) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "{name}: {ps}\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn postgres_nodes_are_supervised_children_their_restarts_and_failovers_counted() {
    let pg = crate::helpers::free_ports(2);
    let up = Up::start(&format!(
        "[sql]\nkind = \"postgres\"\n[postgres]\nport = {pg}\nreplicas = 1\nfailover_after_ms = 1000\n"
    ));
    up.wait_up(180).await;
    wait_ps(&up, "pg1", |l| l.contains("primary")).await;
    let m = up_metrics(&up).await;
    assert_eq!(sample(&m, "scalestack_up_failovers_total", &[]), Some(0.0), "{m}");

    // A replica killed by the operator is restarted by its controller,
    // through the supervisor: one restart, counted.
    let out = ctl_ok(&up, &["kill", "pg2"]);
    assert!(out.contains("restarts it"), "{out}");
    wait_sample(
        &up,
        "scalestack_up_child_restarts_total",
        &["name=\"pg2\"", "role=\"postgres\""],
        1.0,
    )
    .await;
    let line = wait_ps(&up, "pg2", |l| l.contains("replica")).await;
    assert!(
        line.split_whitespace().any(|w| w == "1"),
        "one restart shown: {line}"
    );

    // The primary killed: a failover, counted; the old primary comes back
    // as a replica of the new one.
    ctl_ok(&up, &["kill", "pg1"]);
    wait_ps(&up, "pg2", |l| l.contains("primary")).await;
    wait_sample(&up, "scalestack_up_failovers_total", &[], 1.0).await;
    wait_ps(&up, "pg1", |l| l.contains("replica")).await;
    let c = signup(&up.web, "after_failover").await;
    let me = c.get(format!("{}/api/me", up.web)).send().await.unwrap();
    assert_eq!(me.status(), 200);
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}
