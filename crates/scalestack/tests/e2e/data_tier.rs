//! `topologies/replicated.toml`'s shape on real engines that `up` starts:
//! PostgreSQL primary + 2 replicas behind the routers, Redis cache and
//! sessions. The app works end to end with read-your-writes across web
//! servers; `kill -9` of the primary under write load (synchronous
//! replication) is followed by a failover, writes succeed again, every
//! acknowledged write is on the new primary, the old primary is fenced and
//! rebuilt as a replica; then the new primary hangs (SIGSTOP) and is failed
//! over from the same way, with no acknowledged write lost.

use crate::helpers::{free_port, free_ports, web_metric, Up};
use crate::{signup, upload_and_wait};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

fn postmaster_pid(up: &Up, node: &str) -> Option<i32> {
    let text = std::fs::read_to_string(up.data().join("pg").join(node).join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// The node `up` records as primary.
fn read_primary(up: &Up) -> String {
    std::fs::read_to_string(up.data().join("pg/primary"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A pool on one node (`pg1`, `pg2`, ...), waiting for it to accept.
async fn node_pool(up: &Up, pg: u16, node: &str) -> sqlx::PgPool {
    let index: u16 = node.trim_start_matches("pg").parse().unwrap();
    let url = format!("postgres://scalestack@127.0.0.1:{}/scalestack", pg + index - 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(pool) = store_postgres::connect(&url, 1).await {
            return pool;
        }
        assert!(
            Instant::now() < deadline,
            "{node} does not accept connections:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `ctl ps` shows `node` in `role`; a pool on it.
async fn wait_role(up: &Up, pg: u16, node: &str, role: &str) -> sqlx::PgPool {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ps = String::from_utf8_lossy(&up.ctl(&["ps"]).stdout).into_owned();
        if ps.lines().any(|l| l.starts_with(node) && l.contains(role)) {
            return node_pool(up, pg, node).await;
        }
        assert!(
            Instant::now() < deadline,
            "{node} never became {role}: {ps}\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sign-ups from 8 tasks until stopped; every acknowledged one is a row
/// that must survive whatever happens to the database meanwhile.
struct WriteLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last_failure: Arc<Mutex<Option<Instant>>>,
    acked: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a write load saw.
struct Writes {
    ok: u64,
    failed: u64,
    last_failure: Option<Instant>,
    acked: Vec<String>,
}

impl WriteLoad {
    fn start(web: &str, prefix: &str) -> WriteLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let last_failure = Arc::new(Mutex::new(None::<Instant>));
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let tasks = (0..8)
            .map(|task| {
                let (url, stop, ok, failed, last, acked) = (
                    web.to_owned(),
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    last_failure.clone(),
                    acked.clone(),
                );
                let prefix = prefix.to_owned();
                tokio::spawn(async move {
                    let http = crate::helpers::http_client(false);
                    let mut n = 0u64;
                    while !stop.load(SeqCst) {
                        n += 1;
                        let name = format!("{prefix}{task}_{n}");
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
        WriteLoad {
            stop,
            ok,
            failed,
            last_failure,
            acked,
            tasks,
        }
    }

    /// Waits until `n` more sign-ups than now are acknowledged.
    async fn wait_for_more(&self, n: u64, deadline: Instant, up: &Up) {
        let target = self.ok.load(SeqCst) + n;
        while self.ok.load(SeqCst) < target {
            assert!(Instant::now() < deadline, "writes do not succeed:\n{}", up.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> Writes {
        self.stop.store(true, SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        Writes {
            ok: self.ok.load(SeqCst),
            failed: self.failed.load(SeqCst),
            last_failure: *self.last_failure.lock().unwrap(),
            acked: self.acked.lock().unwrap().clone(),
        }
    }
}

impl Writes {
    /// Prints the figures and asserts that every acknowledged write is on
    /// the current primary; returns its name.
    async fn report(&self, up: &Up, pg: u16, failed_at: Instant, how: &str) -> String {
        let primary = read_primary(up);
        let pool = node_pool(up, pg, &primary).await;
        let (present,): (i64,) = sqlx::query_as("SELECT count(*) FROM users WHERE username = ANY($1)")
            .bind(&self.acked)
            .fetch_one(&pool)
            .await
            .unwrap();
        let recovered = self.last_failure.map(|t| t.saturating_duration_since(failed_at));
        println!(
            "primary {how} under write load (synchronous replication): {} sign-ups acknowledged, {} failed, \
             {present} of the acknowledged present after failover to {primary}; last failure {recovered:?} \
             after the fault (failover_after_ms 2000)",
            self.ok, self.failed
        );
        assert_eq!(
            present as usize,
            self.acked.len(),
            "an acknowledged write was lost"
        );
        primary
    }
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
        let list = crate::helpers::get_json(&c, &format!("{}/api/users/ada/photos", up.web)).await;
        assert_eq!(list["photos"].as_array().unwrap().len(), 1, "{list}");
    }

    // Every web server's DB router exports what it sees: one primary
    // each, and the reads it routed.
    let primaries = web_metric(&up, "scalestack_db_router_node_role", &["role=\"primary\""]).await;
    assert_eq!(primaries, 3.0, "each of the 3 routers sees one primary");
    assert!(web_metric(&up, "scalestack_db_router_reads_total", &[]).await > 0.0);

    // Write load: sign-ups, each acknowledged one a row that must survive.
    let writes = WriteLoad::start(&up.web, "w");
    let stop = Arc::new(AtomicBool::new(false));
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
                let http = crate::helpers::http_client(false);
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
    writes.wait_for_more(20, deadline, &up).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, SeqCst);
    for t in readers {
        t.await.unwrap();
    }
    let first = writes.stop().await;
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
    let new_primary = first.report(&up, pg, killed, "killed (kill -9)").await;

    // The old primary is fenced, then rebuilt from the new one: it rejoins
    // as a streaming replica (in recovery, refusing writes) with every
    // acknowledged write, and the other replica follows the new primary too.
    let pg1 = wait_role(&up, pg, "pg1", "replica").await;
    assert!(
        store_postgres::is_in_recovery(&pg1).await.unwrap(),
        "pg1 read-only"
    );
    let write = sqlx::query("CREATE TABLE fenced_probe (x int)")
        .execute(&pg1)
        .await;
    assert!(write.is_err(), "the old primary refuses writes");
    // A replica: it has every acknowledged write once it has replayed up to
    // the primary (asynchronously, so wait for it, within a bound).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (on_pg1,): (i64,) = sqlx::query_as("SELECT count(*) FROM users WHERE username = ANY($1)")
            .bind(&first.acked)
            .fetch_one(&pg1)
            .await
            .unwrap();
        if on_pg1 as usize == first.acked.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuilt node has {on_pg1} of the {} acknowledged writes",
            first.acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let primary = node_pool(&up, pg, &new_primary).await;
    // (Rows only: their details are hidden from a role without pg_monitor.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (senders,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_stat_replication")
            .fetch_one(&primary)
            .await
            .unwrap();
        if senders == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{senders} of the 2 other nodes replicate from {new_primary}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (quorum,): (String,) = sqlx::query_as("SHOW synchronous_standby_names")
        .fetch_one(&primary)
        .await
        .unwrap();
    assert!(
        quorum.starts_with("ANY 1 ("),
        "the new primary is synchronous: {quorum:?}"
    );

    // A primary that hangs rather than dies (SIGSTOP: it accepts
    // connections and answers nothing) is failed over too, and killed.
    let writes = WriteLoad::start(&up.web, "h");
    writes
        .wait_for_more(20, Instant::now() + Duration::from_secs(60), &up)
        .await;
    let frozen = postmaster_pid(&up, &new_primary).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(frozen),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let frozen_at = Instant::now();
    let deadline = frozen_at + Duration::from_secs(60);
    while read_primary(&up) == new_primary {
        assert!(
            Instant::now() < deadline,
            "no failover from a hung primary:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writes.wait_for_more(20, deadline, &up).await;
    let second = writes.stop().await;
    second.report(&up, pg, frozen_at, "frozen (SIGSTOP)").await;
    assert!(!crate::helpers::alive(frozen), "the hung primary was killed");

    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}
