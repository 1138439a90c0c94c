//! `topologies/replicated.toml`'s shape on real engines that `up` starts:
//! PostgreSQL primary + 2 replicas behind the routers, Redis cache and
//! sessions. The app works end to end with read-your-writes across web
//! servers; `kill -9` of the primary under write load (synchronous
//! replication) is followed by a failover, writes succeed again, every
//! acknowledged write is on the new primary, the old primary comes back
//! fenced.

use crate::helpers::{free_port, free_ports, Up};
use crate::{signup, upload_and_wait};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn postmaster_pid(up: &Up, node: &str) -> Option<i32> {
    let text = std::fs::read_to_string(up.data().join("pg").join(node).join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

#[tokio::test]
async fn the_app_runs_on_replicated_postgres_and_survives_a_primary_kill() {
    let (pg, redis) = (free_ports(3), free_port());
    let up = Up::web_tier(
        3,
        500,
        &format!(
            "[sql]\nkind = \"postgres\"\n\
             [postgres]\nport = {pg}\nreplicas = 2\nsynchronous = true\nfailover_after_ms = 2000\n\
             [cache]\nkind = \"redis\"\n[sessions]\nkind = \"redis\"\n[redis]\nport = {redis}\n"
        ),
    );
    up.wait_up(180).await;

    // The whole flow, and read-your-writes: the upload shows in the owner's
    // list at once, whichever web server and database node answers.
    let c = signup(&up.web, "ada").await;
    let photo = upload_and_wait(&up.web, &c).await;
    assert_eq!(photo["status"], "ready", "{photo}");
    for _ in 0..9 {
        let list: Value = c
            .get(format!("{}/api/users/ada/photos", up.web))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["photos"].as_array().unwrap().len(), 1, "{list}");
    }

    // Write load: sign-ups, each acknowledged one a row that must survive.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let last_failure = Arc::new(Mutex::new(None::<Instant>));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (url, stop, ok, failed, last, acked) = (
                up.web.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                last_failure.clone(),
                acked.clone(),
            );
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut n = 0u64;
                while !stop.load(SeqCst) {
                    n += 1;
                    let name = format!("w{task}_{n}");
                    let r = http
                        .post(format!("{url}/api/signup"))
                        .json(&serde_json::json!({"username": name, "password": "password123"}))
                        .send()
                        .await;
                    if matches!(&r, Ok(r) if r.status() == 201) {
                        ok.fetch_add(1, SeqCst);
                        acked.lock().unwrap().push(name);
                    } else {
                        failed.fetch_add(1, SeqCst);
                        *last.lock().unwrap() = Some(Instant::now());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    // Read load alongside: the list endpoint reads the user by name, which
    // is not cached, so it reaches the database through the router.
    let (reads_ok, reads_failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop, ok, failed) = (
                format!("{}/api/users/ada/photos", up.web),
                stop.clone(),
                reads_ok.clone(),
                reads_failed.clone(),
            );
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while !stop.load(SeqCst) {
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, SeqCst),
                        other => {
                            eprintln!("read failed during failover: {other:?}");
                            failed.fetch_add(1, SeqCst)
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let ps = String::from_utf8_lossy(&up.ctl(&["ps"]).stdout).into_owned();
    assert!(
        ps.lines().any(|l| l.starts_with("pg1") && l.contains("primary")),
        "{ps}"
    );
    assert_eq!(
        ps.lines()
            .filter(|l| l.starts_with("pg") && l.contains("replica"))
            .count(),
        2,
        "{ps}"
    );
    assert!(postmaster_pid(&up, "pg1").is_some());
    let out = up.ctl(&["kill", "pg1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let killed = Instant::now();
    // Failover: another node becomes primary, writes succeed again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = std::fs::read_to_string(up.data().join("pg/primary")).unwrap_or_default();
        if state.trim() != "pg1" {
            break;
        }
        assert!(Instant::now() < deadline, "no failover:\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok_at_failover = ok.load(SeqCst);
    while ok.load(SeqCst) < ok_at_failover + 20 {
        assert!(
            Instant::now() < deadline,
            "writes do not succeed after the failover:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, SeqCst);
    for t in tasks.into_iter().chain(readers) {
        t.await.unwrap();
    }
    println!(
        "reads during the failover: {} ok, {} failed",
        reads_ok.load(SeqCst),
        reads_failed.load(SeqCst)
    );
    assert_eq!(
        reads_failed.load(SeqCst),
        0,
        "caught-up replicas serve reads while the primary is down"
    );
    let recovered = last_failure
        .lock()
        .unwrap()
        .map(|t| t.saturating_duration_since(killed));
    // Every acknowledged sign-up is on the new primary.
    let new_primary = std::fs::read_to_string(up.data().join("pg/primary")).unwrap();
    let index: u16 = new_primary.trim().trim_start_matches("pg").parse().unwrap();
    let url = format!("postgres://scalestack@127.0.0.1:{}/scalestack", pg + index - 1);
    let pool = store_postgres::connect(&url, 1).await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let (present,): (i64,) = sqlx::query_as("SELECT count(*) FROM users WHERE username = ANY($1)")
        .bind(&acked)
        .fetch_one(&pool)
        .await
        .unwrap();
    println!(
        "primary killed under write load (synchronous replication): {} sign-ups acknowledged, {} failed, \
         {present} of the acknowledged present after failover to {}; last failure {recovered:?} after the kill \
         (failover_after_ms 2000)",
        ok.load(SeqCst),
        failed.load(SeqCst),
        new_primary.trim()
    );
    assert_eq!(present as usize, acked.len(), "an acknowledged write was lost");

    // The old primary is fenced: restarted by up, it runs in recovery and
    // takes no writes.
    assert!(up.data().join("pg/pg1/standby.signal").exists(), "pg1 fenced");
    let ps = String::from_utf8_lossy(&up.ctl(&["ps"]).stdout).into_owned();
    assert!(
        ps.lines()
            .any(|l| l.starts_with("pg1") && (l.contains("fenced") || l.contains("down"))),
        "{ps}"
    );
    let old = format!("postgres://scalestack@127.0.0.1:{pg}/scalestack");
    let deadline = Instant::now() + Duration::from_secs(60);
    let pool = loop {
        if let Ok(pool) = store_postgres::connect(&old, 1).await {
            break pool;
        }
        assert!(
            Instant::now() < deadline,
            "old primary not restarted:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        store_postgres::is_in_recovery(&pool).await.unwrap(),
        "the old primary came back read-only"
    );
    let write = sqlx::query("CREATE TABLE fenced_probe (x int)")
        .execute(&pool)
        .await;
    assert!(write.is_err(), "the old primary refuses writes");

    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}
