//! Test harness for real engines: private PostgreSQL clusters (a primary
//! and streaming replicas), Redis and NATS (JetStream) servers, each on free ports in its own
//! temporary directory, stopped and deleted when its handle drops. Never
//! the machine's default instances.
//!
//! Every constructor panics with a clear message when the engine's
//! binaries are missing: run `scripts/setup.sh`.

mod delay;
pub use delay::DelayProxy;

use engines::nats::NatsNode;
pub use engines::nats::SyncPolicy;
use engines::postgres::{PgBinaries, PgNode, PgOptions};
use engines::redis::RedisNode;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;
use tempfile::TempDir;

/// Until every replica of a new [`TestPg`] streams.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(30);

/// Ports are taken below the kernel's ephemeral range (32768 and up on
/// Linux), where client connections of concurrent tests could otherwise
/// grab a port between our check and the engine binding it.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A port that is free now and that this process has not handed out before.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// `n` consecutive ports, free now and never handed out before by this
/// process (for a cluster whose nodes take consecutive ports).
pub fn free_ports(n: u16) -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = (PORT_RANGE.end - PORT_RANGE.start) as u32;
    // Start somewhere that depends on the process, so test binaries run
    // one after the other do not all probe the same ports first.
    let offset = std::process::id() * 7919;
    loop {
        let step = NEXT.fetch_add(n as u32, std::sync::atomic::Ordering::Relaxed);
        let base = PORT_RANGE.start + ((offset + step) % (span - n as u32)) as u16;
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if (base..base + n).any(|p| handed.contains(&p)) {
            continue;
        }
        let free = (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            handed.extend(base..base + n);
            return base;
        }
    }
}

/// A private PostgreSQL cluster: a primary named `primary` and replicas
/// named `replica1`, `replica2`, ..., streaming from it through slots of the
/// same names, each on a free port. Dropping it stops every server and
/// deletes the directory.
pub struct TestPg {
    pub primary: PgNode,
    pub replicas: Vec<PgNode>,
    _dir: TempDir,
}

impl TestPg {
    /// A primary and `replicas` asynchronous replicas, all streaming when
    /// this returns.
    pub async fn start(replicas: usize) -> TestPg {
        TestPg::start_with(replicas, false).await
    }

    /// Like [`TestPg::start`]; with `sync`, the primary's
    /// `synchronous_standby_names` is `ANY 1 (replica1, ...)`: a commit
    /// waits for one replica. `sync` needs at least one replica.
    pub async fn start_with(replicas: usize, sync: bool) -> TestPg {
        if let Err(e) = PgBinaries::locate() {
            panic!("PostgreSQL is needed for this test: {e:#} (run scripts/setup.sh)");
        }
        assert!(
            !sync || replicas > 0,
            "a synchronous cluster needs at least one replica"
        );
        let dir = tempfile::Builder::new()
            .prefix("scalestack-pg-")
            .tempdir()
            .expect("creating a temporary directory");
        let names: Vec<String> = (1..=replicas).map(|i| format!("replica{i}")).collect();
        let mut opts = PgOptions::new(free_port());
        if sync {
            opts.synchronous_standbys = Some(format!("ANY 1 ({})", names.join(", ")));
        }
        let primary = PgNode::init_primary("primary", &dir.path().join("primary"), &opts)
            .await
            .unwrap_or_else(|e| panic!("initialising the test primary: {e:#}"));
        primary
            .start()
            .await
            .unwrap_or_else(|e| panic!("starting the test primary: {e:#}"));
        let mut nodes = Vec::with_capacity(replicas);
        for name in &names {
            let replica = PgNode::init_replica(name, &dir.path().join(name), free_port(), &primary)
                .await
                .unwrap_or_else(|e| panic!("initialising test replica {name}: {e:#}"));
            replica
                .start()
                .await
                .unwrap_or_else(|e| panic!("starting test replica {name}: {e:#}"));
            nodes.push(replica);
        }
        primary
            .wait_for_standbys(replicas, STREAMING_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("waiting for the test replicas to stream: {e:#}"));
        TestPg {
            primary,
            replicas: nodes,
            _dir: dir,
        }
    }
}

/// A private Redis server on a free port. Dropping it kills the server and
/// deletes the directory.
pub struct TestRedis {
    pub node: RedisNode,
    _dir: TempDir,
}

impl TestRedis {
    /// A running, empty Redis named `redis`.
    pub async fn start() -> TestRedis {
        if let Err(e) = engines::redis::locate_server() {
            panic!("Redis is needed for this test: {e:#} (run scripts/setup.sh)");
        }
        let dir = tempfile::Builder::new()
            .prefix("scalestack-redis-")
            .tempdir()
            .expect("creating a temporary directory");
        let node = RedisNode::start("redis", dir.path(), free_port())
            .await
            .unwrap_or_else(|e| panic!("starting the test redis: {e:#}"));
        TestRedis { node, _dir: dir }
    }
}

/// A private NATS server with JetStream on a free port, its store in a
/// temporary directory. Dropping it kills the server and deletes the
/// directory; [`NatsNode::kill9`] and [`NatsNode::restart`] keep the store.
pub struct TestNats {
    pub node: NatsNode,
    _dir: TempDir,
}

impl TestNats {
    /// A running NATS named `nats` with JetStream and an empty store.
    pub async fn start() -> TestNats {
        Self::start_with(SyncPolicy::Default).await
    }

    /// As [`TestNats::start`], syncing its store as `sync` says.
    pub async fn start_with(sync: SyncPolicy) -> TestNats {
        if let Err(e) = engines::nats::locate_server() {
            panic!("NATS is needed for this test: {e:#} (run scripts/setup.sh)");
        }
        let dir = tempfile::Builder::new()
            .prefix("scalestack-nats-")
            .tempdir()
            .expect("creating a temporary directory");
        let node = NatsNode::start_with("nats", dir.path(), free_port(), sync, None)
            .await
            .unwrap_or_else(|e| panic!("starting the test nats: {e:#}"));
        TestNats { node, _dir: dir }
    }
}

/// A private JetStream cluster of `n` nodes (`nats-1` …) on free ports in
/// one temporary directory. Dropping it kills every node.
pub struct TestNatsCluster {
    pub nodes: Vec<NatsNode>,
    _dir: TempDir,
}

impl TestNatsCluster {
    /// `n` running members (started together: each waits for a quorum).
    pub async fn start(n: usize, sync: SyncPolicy) -> TestNatsCluster {
        let dir = tempfile::Builder::new()
            .prefix("scalestack-nats-cluster-")
            .tempdir()
            .expect("creating a temporary directory");
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let starts: Vec<_> = routes
            .iter()
            .enumerate()
            .map(|(i, &route)| {
                let cluster = engines::nats::ClusterConf {
                    name: "scalestack".into(),
                    port: route,
                    routes: routes.clone(),
                };
                let name = format!("nats-{}", i + 1);
                let dir = dir.path().to_owned();
                tokio::spawn(async move {
                    NatsNode::start_with(&name, &dir, free_port(), sync, Some(cluster)).await
                })
            })
            .collect();
        let mut nodes = Vec::new();
        for start in starts {
            let node = start.await.expect("a nats start task panicked");
            nodes.push(node.unwrap_or_else(|e| panic!("starting the test nats cluster: {e:#}")));
        }
        TestNatsCluster { nodes, _dir: dir }
    }

    /// Every member's client URL, comma-separated (as clients take them).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(NatsNode::url).collect();
        urls.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports: BTreeSet<u16> = (0..20).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 20);
        let port = *ports.iter().next().unwrap();
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("a free port binds");
    }
}
