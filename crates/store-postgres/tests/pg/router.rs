//! The database router against a real primary and two streaming replicas:
//! reads spread over the replicas, the lag ceiling, read-your-writes, a
//! replica killed under reads, and a failover followed with the old
//! primary fenced when it comes back.

use crate::helpers::eventually;
use domain::consistency::{self, Positions, ReplicaSetId};
use domain::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store_postgres::{NodeRole, NodeStatus, PgRouter, QueueConfig, RouterConfig};
use test_support::TestPg;

/// Generous: only there so that a broken router fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

/// A router over the cluster's nodes (primary first), probing every 100 ms.
async fn router(pg: &TestPg, max_lag_ms: u64) -> PgRouter {
    let mut nodes = vec![pg.primary.url()];
    nodes.extend(pg.replicas.iter().map(|r| r.url()));
    PgRouter::connect(RouterConfig {
        max_lag_ms,
        probe_interval_ms: 100,
        ..RouterConfig::new(nodes)
    })
    .await
    .unwrap()
}

/// Polls the router's status until `check` holds.
async fn wait_status(router: &PgRouter, what: &str, check: impl Fn(&[NodeStatus]) -> bool) {
    eventually(PATIENCE, what, || {
        let ok = check(&router.status());
        async move { ok }
    })
    .await;
}

/// Until every replica in `replicas` is usable and has replayed `lsn`.
async fn wait_replayed(router: &PgRouter, replicas: &[usize], lsn: u64) {
    wait_status(router, "the replicas to replay the writes", |s| {
        replicas.iter().all(|&i| {
            s[i].role == NodeRole::Replica && s[i].usable && s[i].replay_lsn.is_some_and(|r| r >= lsn)
        })
    })
    .await;
}

/// What a scope wrote on the default replica set (every router's here).
fn default_set(written: &Positions) -> Option<u64> {
    written.get(&ReplicaSetId::DEFAULT)
}

/// The value of the series of `name` whose labels include `labels`.
fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = registry.gather().into_iter().find(|f| f.get_name() == name)?;
    let m = family.get_metric().iter().find(|m| {
        labels.iter().all(|&(k, v)| {
            m.get_label()
                .iter()
                .any(|l| l.get_name() == k && l.get_value() == v)
        })
    })?;
    Some(match family.get_field_type() {
        prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
        _ => m.get_gauge().get_value(),
    })
}

/// The roles whose gauge (the family `name`) is 1 for `node`: one.
fn metric_role(registry: &prometheus::Registry, name: &str, node: &str) -> Vec<String> {
    ["primary", "replica", "down", "fenced"]
        .into_iter()
        .filter(|role| metric(registry, name, &[("node", node), ("role", role)]) == Some(1.0))
        .map(String::from)
        .collect()
}

fn reads(s: &[NodeStatus]) -> Vec<u64> {
    s.iter().map(|n| n.reads).collect()
}

fn delta(before: &[u64], after: &[u64]) -> Vec<u64> {
    before.iter().zip(after).map(|(b, a)| a - b).collect()
}

#[tokio::test]
async fn reads_spread_over_the_replicas_and_writes_land_on_the_primary() {
    let pg = TestPg::start(2).await;
    // A node that is down from the start does not stop the router.
    let dead = format!(
        "postgres://scalestack@127.0.0.1:{}/scalestack",
        test_support::free_port()
    );
    let router = PgRouter::connect(RouterConfig {
        probe_interval_ms: 100,
        ..RouterConfig::new(vec![
            pg.primary.url(),
            pg.replicas[0].url(),
            pg.replicas[1].url(),
            dead,
        ])
    })
    .await
    .unwrap();
    let registry = prometheus::Registry::new_custom(Some("web".into()), None).unwrap();
    router.register_metrics(&registry).unwrap();
    router.migrate().await.unwrap();
    let store = router.store();

    let ((alice, bob), lsn) = consistency::scope(None, async {
        let alice = store.create_user(&name("alice"), "h").await.unwrap();
        let bob = store.create_user(&name("bob"), "h").await.unwrap();
        store.follow(alice, bob).await.unwrap();
        (alice, bob)
    })
    .await;
    let lsn = default_set(&lsn).expect("writes in a scope report their LSN");
    let status = router.status();
    let roles: Vec<_> = status.iter().map(|s| s.role).collect();
    assert_eq!(
        roles,
        [
            NodeRole::Primary,
            NodeRole::Replica,
            NodeRole::Replica,
            NodeRole::Down
        ]
    );
    assert_eq!(status.iter().map(|s| s.writes).collect::<Vec<_>>(), [3, 0, 0, 0]);
    assert_eq!(pg.primary.psql("SELECT count(*) FROM users").await.unwrap(), "2");
    assert!(!status[3].usable);

    wait_replayed(&router, &[1, 2], lsn).await;
    let before = reads(&router.status());
    for _ in 0..40 {
        assert_eq!(
            store.user_by_name(&name("alice")).await.unwrap().unwrap().id,
            alice
        );
    }
    for _ in 0..10 {
        assert!(store.is_following(alice, bob).await.unwrap());
    }
    let d = delta(&before, &reads(&router.status()));
    assert_eq!(d.iter().sum::<u64>(), 50, "{d:?}");
    assert!(d[1] > 0 && d[2] > 0, "both replicas serve reads: {d:?}");
    assert_eq!(d[3], 0);

    // The registry it was handed shows the same, node by node.
    let status = router.status();
    for (i, role) in ["primary", "replica", "replica", "down"].into_iter().enumerate() {
        let node = [("node", status[i].url.as_str()), ("replica_set", "default")];
        let roles = metric_role(&registry, "web_db_router_node_role", &status[i].url);
        assert_eq!(roles, [role], "node {i}");
        let reads = metric(&registry, "web_db_router_reads_total", &node);
        let writes = metric(&registry, "web_db_router_writes_total", &node);
        assert_eq!(
            (reads, writes),
            (Some(status[i].reads as f64), Some(status[i].writes as f64)),
            "node {i}"
        );
    }
    let lag = |i: usize| {
        metric(
            &registry,
            "web_db_router_replica_lag_seconds",
            &[("node", &status[i].url)],
        )
    };
    assert_eq!(
        (lag(0), lag(3)),
        (None, None),
        "a primary and a dead node have no lag"
    );
    assert!(lag(1).is_some() && lag(2).is_some());
    assert_eq!(
        metric(
            &registry,
            "web_db_router_primary_fallbacks_total",
            &[("reason", "no_replica")]
        ),
        Some(router.stats().reads_fallback_no_replica as f64)
    );

    // Sessions and the queue live on the primary.
    let sessions = router.sessions();
    let token = sessions.create(alice, Duration::from_secs(60)).await.unwrap();
    assert_eq!(sessions.get(&token).await.unwrap().unwrap().user_id, alice);
    let queue = router.queue(QueueConfig::default());
    let job = queue.enqueue("photo", b"1").await.unwrap();
    let claimed = queue.next().await.unwrap().unwrap();
    assert_eq!(claimed.job().id, job);
    claimed.ack().await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(
        pg.replicas[0]
            .psql("SELECT count(*) FROM sessions")
            .await
            .unwrap(),
        "1",
        "replicated from the primary"
    );

    // A router of another replica set (the same nodes, for the test) notes
    // its writes under that set's name and reads only that set's floor.
    let eu = ReplicaSetId::parse("eu").unwrap();
    let eu_router = PgRouter::connect(RouterConfig {
        probe_interval_ms: 100,
        replica_set: eu.clone(),
        ..RouterConfig::new(vec![pg.primary.url(), pg.replicas[0].url()])
    })
    .await
    .unwrap();
    let eu_store = eu_router.store();
    let (eve, written) = consistency::scope(None, eu_store.create_user(&name("eve"), "h")).await;
    let eve = eve.unwrap();
    assert_eq!(default_set(&written), None, "{written:?}");
    let eu_lsn = written.get(&eu).expect("the write's LSN, under its set");
    wait_replayed(&eu_router, &[1], eu_lsn).await;
    let unreachable = u64::MAX - 1;
    let before = reads(&eu_router.status());
    let (found, _) = consistency::scope(Positions::at(ReplicaSetId::DEFAULT, unreachable), async {
        eu_store.user_by_id(eve).await.unwrap().is_some()
    })
    .await;
    assert!(found);
    assert_eq!(
        delta(&before, &reads(&eu_router.status())),
        [0, 1],
        "another set's floor does not keep the replica out"
    );
    let (found, _) = consistency::scope(Positions::at(eu.clone(), unreachable), async {
        eu_store.user_by_id(eve).await.unwrap().is_some()
    })
    .await;
    assert!(found);
    assert_eq!(
        delta(&before, &reads(&eu_router.status())),
        [1, 1],
        "its own set's floor does"
    );
    assert_eq!(eu_router.stats().reads_fallback_floor, 1);
}

#[tokio::test]
async fn a_lagging_replica_gets_no_reads_and_read_your_writes_holds() {
    let pg = TestPg::start(2).await;
    let router = router(&pg, 500).await;
    let registry = prometheus::Registry::new();
    router.register_metrics(&registry).unwrap();
    router.migrate().await.unwrap();
    // Another web server whose ceiling never trips, so that only the read
    // floor keeps its reads off the lagging replica.
    let relaxed = self::router(&pg, 600_000).await;
    let store = router.store();
    let (carol, lsn) = consistency::scope(None, store.create_user(&name("carol"), "h")).await;
    let carol = carol.unwrap();
    let lsn = default_set(&lsn).unwrap();
    wait_replayed(&router, &[1, 2], lsn).await;
    wait_replayed(&relaxed, &[1, 2], lsn).await;

    // replica1 stops applying commits (the delay is far longer than the test).
    let delay = pg.replicas[0]
        .psql("ALTER SYSTEM SET recovery_min_apply_delay = '10min'; SELECT pg_reload_conf();")
        .await
        .unwrap();
    assert_eq!(delay, "t");
    // The reload reaches replica1's startup process asynchronously: write
    // until a commit is held back and the lag passes the ceiling.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut lsn = 0;
    for k in 0.. {
        let (dave, written) =
            consistency::scope(None, store.create_user(&name(&format!("dave{k}")), "h")).await;
        dave.unwrap();
        lsn = default_set(&written).unwrap();
        let seen_lagging = async {
            while tokio::time::Instant::now() < deadline {
                let s = router.status();
                if s[1].role == NodeRole::Replica && !s[1].usable && s[1].lag_ms.is_some_and(|l| l > 500) {
                    return true;
                }
                if s[1].replay_lsn.is_some_and(|r| r >= lsn) {
                    return false; // replayed at once: the delay is not in force yet
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("timed out waiting for replica1 to lag");
        };
        if seen_lagging.await {
            break;
        }
    }
    let status = router.status();
    assert!(status[1].replay_lsn.unwrap() < lsn, "{status:?}");
    assert!(status[1].lag_bytes.unwrap() > 0, "{status:?}");
    let lag = metric(
        &registry,
        "db_router_replica_lag_seconds",
        &[("node", &status[1].url)],
    );
    assert!(lag.is_some_and(|l| l > 0.5), "{lag:?}");

    // Over the ceiling: no reads for replica1.
    let before = reads(&router.status());
    for _ in 0..20 {
        assert_eq!(
            store.user_by_name(&name("carol")).await.unwrap().unwrap().id,
            carol
        );
    }
    let d = delta(&before, &reads(&router.status()));
    assert_eq!((d[1], d[0] + d[2]), (0, 20), "{d:?}");

    // Read-your-writes on the relaxed router, where replica1 is usable.
    wait_status(&relaxed, "replica1 lagging but usable", |s| {
        s[1].usable && s[1].replay_lsn.is_some_and(|r| r < lsn)
    })
    .await;
    let rstore = relaxed.store();
    let before = reads(&relaxed.status());
    let (found, erin_lsn) = consistency::scope(None, async {
        let erin = rstore.create_user(&name("erin"), "h").await.unwrap();
        let mut found = 0;
        for _ in 0..20 {
            if rstore
                .user_by_name(&name("erin"))
                .await
                .unwrap()
                .is_some_and(|u| u.id == erin)
            {
                found += 1;
            }
        }
        found
    })
    .await;
    assert_eq!(found, 20, "a user reads their own write");
    let erin_lsn = default_set(&erin_lsn).expect("the write's LSN, for the next request");
    // The next request of that user carries the LSN as its floor.
    let (found, written) = consistency::scope(Some(erin_lsn), async {
        let mut found = 0;
        for _ in 0..10 {
            found += usize::from(rstore.user_by_name(&name("erin")).await.unwrap().is_some());
        }
        found
    })
    .await;
    assert_eq!((found, written), (10, Positions::new()));
    let d = delta(&before, &reads(&relaxed.status()));
    assert_eq!(
        (d[1], d[0] + d[2]),
        (0, 30),
        "the lagging replica served none: {d:?}"
    );
    // Without a floor, the relaxed router does use replica1 (so the floor
    // is what kept it away above).
    let before = reads(&relaxed.status());
    for _ in 0..10 {
        rstore.user_by_name(&name("carol")).await.unwrap().unwrap();
    }
    assert!(delta(&before, &reads(&relaxed.status()))[1] > 0);

    // Caught up: replica1 takes reads again.
    pg.replicas[0]
        .psql("ALTER SYSTEM RESET recovery_min_apply_delay; SELECT pg_reload_conf();")
        .await
        .unwrap();
    wait_status(&router, "replica1 to catch up", |s| {
        s[1].usable && s[1].lag_ms == Some(0)
    })
    .await;
    let before = reads(&router.status());
    eventually(PATIENCE, "replica1 to serve reads again", || {
        let store = store.clone();
        let router = router.clone();
        let before = before.clone();
        async move {
            store.user_by_name(&name("dave0")).await.unwrap().unwrap();
            delta(&before, &reads(&router.status()))[1] > 0
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_reads_fails_no_read() {
    let pg = TestPg::start(2).await;
    let router = router(&pg, 1000).await;
    let registry = prometheus::Registry::new();
    router.register_metrics(&registry).unwrap();
    router.migrate().await.unwrap();
    let store = router.store();
    let (id, lsn) = consistency::scope(None, store.create_user(&name("frank"), "h")).await;
    let id = id.unwrap();
    wait_replayed(&router, &[1, 2], default_set(&lsn).unwrap()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (store, stop, ok, failed) = (store.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match store.user_by_name(&name("frank")).await {
                        Ok(Some(u)) if u.id == id => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    wait_status(&router, "both replicas to serve the read loop", |s| {
        s[1].reads > 20 && s[2].reads > 20
    })
    .await;

    pg.replicas[0].kill9().unwrap();
    wait_status(&router, "replica1 to be seen down", |s| {
        s[1].role == NodeRole::Down
    })
    .await;
    let after_kill = router.status()[2].reads;
    wait_status(&router, "replica2 to carry on", |s| s[2].reads > after_kill + 100).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    let status = router.status();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{status:?}");
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert_eq!(status[1].role, NodeRole::Down);
    assert!(!status[1].usable);
    // The registry counts what the router did on each node.
    let retried = |i: usize| {
        metric(
            &registry,
            "db_router_replica_read_retries_total",
            &[("node", &status[i].url)],
        )
        .unwrap()
    };
    assert_eq!(
        retried(1) + retried(2),
        router.stats().replica_read_retries as f64
    );
    assert_eq!(retried(2), 0.0, "replica2 failed nothing");
    assert_eq!(
        metric_role(&registry, "db_router_node_role", &status[1].url),
        ["down"]
    );
    let served = metric(&registry, "db_router_reads_total", &[("node", &status[2].url)]);
    assert_eq!(served, Some(status[2].reads as f64));
    eprintln!(
        "reads {} ok, 0 failed; retried on the primary: {}; by node {:?}",
        ok.load(Ordering::Relaxed),
        router.stats().replica_read_retries,
        reads(&status)
    );
}

#[tokio::test]
async fn a_failover_is_followed_and_the_old_primary_fenced() {
    let pg = TestPg::start(2).await;
    let router = router(&pg, 1000).await;
    let registry = prometheus::Registry::new();
    router.register_metrics(&registry).unwrap();
    router.migrate().await.unwrap();
    let store = router.store();
    let sessions = router.sessions();
    let (grace, lsn) = consistency::scope(None, store.create_user(&name("grace"), "h")).await;
    let grace = grace.unwrap();
    wait_replayed(&router, &[1, 2], default_set(&lsn).unwrap()).await;

    // The primary crashes: writes are refused at once, reads carry on.
    pg.primary.kill9().unwrap();
    wait_status(&router, "the primary to be seen down", |s| {
        s[0].role == NodeRole::Down
    })
    .await;
    assert!(matches!(
        store.create_user(&name("late"), "h").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(sessions.create(grace, Duration::from_secs(60)).await.is_err());
    assert_eq!(store.user_by_id(grace).await.unwrap().unwrap().id, grace);

    // The orchestrator's failover: promote replica1, point replica2 at it.
    pg.replicas[0].promote().await.unwrap();
    pg.replicas[1].follow(&pg.replicas[0]).await.unwrap();
    // The same router, untouched, writes again.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let heidi = loop {
        match store.create_user(&name("heidi"), "h").await {
            Ok(id) => break id,
            Err(StoreError::Unavailable(_)) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no write on the new primary"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let status = router.status();
    assert_eq!(status[1].role, NodeRole::Primary, "{status:?}");
    assert!(status[1].writes >= 1);
    let token = sessions.create(heidi, Duration::from_secs(60)).await.unwrap();
    assert_eq!(sessions.get(&token).await.unwrap().unwrap().user_id, heidi);
    wait_status(&router, "replica2 to replicate the new primary", |s| {
        s[2].role == NodeRole::Replica && s[2].usable
    })
    .await;

    // The old primary comes back as it was: a primary on the old timeline.
    pg.primary.start().await.unwrap();
    assert_eq!(pg.primary.psql("SELECT pg_is_in_recovery()").await.unwrap(), "f");
    wait_status(&router, "the old primary to be fenced", |s| {
        s[0].role == NodeRole::Fenced
    })
    .await;
    let status = router.status();
    assert!(!status[0].usable);
    assert!(
        status[0].timeline < status[1].timeline,
        "{:?} vs {:?}",
        status[0].timeline,
        status[1].timeline
    );
    let role = |i: usize| metric_role(&registry, "db_router_node_role", &status[i].url);
    assert_eq!(
        (role(0), role(1)),
        (vec!["fenced".to_owned()], vec!["primary".to_owned()])
    );
    let (old_reads, old_writes) = (status[0].reads, status[0].writes);
    for i in 0..5 {
        let (read_back, _) = consistency::scope(None, async {
            let id = store.create_user(&name(&format!("ivan{i}")), "h").await.unwrap();
            store.user_by_id(id).await.unwrap().map(|u| u.id) == Some(id)
        })
        .await;
        assert!(read_back);
        store.user_by_name(&name("grace")).await.unwrap().unwrap();
    }
    let status = router.status();
    assert_eq!(
        (status[0].reads, status[0].writes),
        (old_reads, old_writes),
        "the fenced node got traffic"
    );
    assert_eq!(status[1].role, NodeRole::Primary);
    let count = "SELECT count(*) FROM users WHERE username LIKE 'ivan%'";
    assert_eq!(pg.replicas[0].psql(count).await.unwrap(), "5");
    assert_eq!(pg.primary.psql(count).await.unwrap(), "0");
}
