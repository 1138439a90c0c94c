//! The database router every web server runs in front of a replicated
//! PostgreSQL: writes go to the primary; reads go to healthy replicas in
//! turn, never to one whose replay lags more than a ceiling, and under
//! read-your-writes only to one that has replayed past the caller's read
//! floor on this router's replica set ([`domain::consistency`]; the set is
//! named in [`RouterConfig::replica_set`]); otherwise to the primary.
//!
//! Which node is the primary is not configured but discovered: a prober
//! task asks every node, every `probe_interval_ms`, whether it is in
//! recovery, its timeline and its WAL positions. So the router follows a
//! failover done by someone else (the orchestrator promotes a replica)
//! without a restart. An old primary that comes back after a failover also
//! claims to be primary, on an older timeline: the node on the highest
//! timeline wins, and the others are *fenced*: they get no reads and no
//! writes from this router. The highest timeline ever elected is
//! remembered, so a fenced node stays fenced even while the new primary is
//! briefly unreachable.
//!
//! Lag is measured in time without trusting either clock: the prober keeps
//! the history of the primary's WAL position (the instant it first saw each
//! one), and a replica's lag is how long ago the primary first went past
//! what the replica has replayed; 0 when the replica has replayed all the
//! primary had. (`now() - pg_last_xact_replay_timestamp()` is not used: it
//! grows on an idle primary although the replica is caught up.) The
//! resolution is the probe interval.
//!
//! Read-your-writes: after each successful write inside a consistency
//! scope, the router measures `pg_current_wal_insert_lsn()` on the primary
//! (one more round trip, skipped outside a scope) and notes it as the
//! scope's floor on its replica set. It is taken after the commit
//! returned, so it is at or past the end of the commit record, whatever
//! `synchronous_commit` is; a replica whose replay LSN reached it shows the
//! write. (Measuring inside
//! the write's transaction would give a position before its commit record.)
//! It can overshoot (other sessions' writes), which only sends a read to the
//! primary that a replica could have served.
//!
//! The rooms: `config` (what the topology file says), `probe` (what is
//! asked of every node, and the prober task), `topology` (the pure update
//! from a round of answers to every node's routing state: the election,
//! the fence, the lag), `policy` (which node serves a read, given that
//! state and the floor), `facade` (the routed [`Store`]) and `primary` (the
//! session store and the job queue on the current primary), `metrics` (the
//! Prometheus families, exported into a registry the router is handed).
//! `election` and `lag` are the topology update's two pure parts.

mod config;
mod election;
mod facade;
mod lag;
mod metrics;
mod policy;
mod primary;
mod probe;
mod topology;

pub use config::RouterConfig;
pub use probe::PROBE_TIMEOUT;
pub use topology::NodeRole;

use crate::{connect_options, unavailable, PgStore, QueueConfig};
use config::redact;
use domain::consistency::ReplicaSetId;
use domain::ports::{JobQueue, SessionStore, Store};
use domain::*;
use metrics::{Exporter, Metrics, NodeCounters};
use policy::{Fallback, Policy};
use primary::PrimarySessions;
use probe::Probe;
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use topology::NodeState;

/// Longest wait for a pooled connection to a node (connecting included): 2 s.
/// A write while the primary is unreachable fails within it instead of
/// hanging; a read on a replica that just died is retried on the primary
/// after it.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`PgRouter::connect`] waits for a primary to be found: 10 s.
pub const PRIMARY_WAIT: Duration = Duration::from_secs(10);

const NO_PRIMARY: usize = usize::MAX;

/// One node as the router sees it, for logs and tests (the metrics export
/// the same: [`PgRouter::register_metrics`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// The node's URL without its password.
    pub url: String,
    /// Its role as of the last probe (or `down` since a failed read).
    pub role: NodeRole,
    /// Its timeline, as of its last answer: a primary's current one; a
    /// replica's as of its last restartpoint (so possibly behind the
    /// timeline it replays, for a while after a failover).
    pub timeline: Option<u32>,
    /// A primary's (or fenced node's) `pg_current_wal_lsn()`, as of its
    /// last answer.
    pub wal_lsn: Option<u64>,
    /// A replica's `pg_last_wal_replay_lsn()`: what its reads can see.
    pub replay_lsn: Option<u64>,
    /// A replica's `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<u64>,
    /// A replica's lag in bytes: the primary's last WAL position minus its
    /// replay position.
    pub lag_bytes: Option<u64>,
    /// A replica's lag in time: how long the primary has been past its
    /// replay position (0 when caught up).
    pub lag_ms: Option<u64>,
    /// Whether it takes reads now (a primary: writes and reads).
    pub usable: bool,
    /// Reads it served.
    pub reads: u64,
    /// Writes it took.
    pub writes: u64,
}

/// Router-wide counters, the same the metrics export (summed over nodes
/// where they are per node).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RouterStats {
    /// Reads sent to the primary because no usable replica had replayed
    /// the read floor.
    pub reads_fallback_floor: u64,
    /// Reads sent to the primary because no replica was usable at all.
    pub reads_fallback_no_replica: u64,
    /// Replica reads that failed and were retried on the primary.
    pub replica_read_retries: u64,
    /// Calls refused at once because no primary was known.
    pub no_primary: u64,
    /// Probe rounds completed.
    pub probe_rounds: u64,
}

/// The database router: a [`Store`] that routes, a session store and a job
/// queue that follow the primary, and the status of every node. Cheap to
/// clone (all clones share the pools and the prober). The prober stops when
/// the last clone (and everything from [`PgRouter::store`] and friends) is
/// dropped.
#[derive(Clone)]
pub struct PgRouter {
    inner: Arc<Inner>,
}

impl fmt::Debug for PgRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgRouter").field("nodes", &self.status()).finish()
    }
}

/// The state every clone, facade and the prober share.
struct Inner {
    /// The replica set of every node: whose read floor applies.
    set: ReplicaSetId,
    policy: Policy,
    nodes: Vec<Arc<Node>>,
    /// Index of the elected primary, or [`NO_PRIMARY`].
    primary: AtomicUsize,
    /// The router-wide counters live in the metrics.
    metrics: Metrics,
    /// Probe rounds completed; [`PgRouter::connect`] waits on it.
    rounds: watch::Sender<u64>,
}

/// One node: its pool, its probe, its routing state and its counters.
struct Node {
    url: String,
    /// In this process's own site: its reads go here first.
    local: bool,
    probe: Probe,
    store: PgStore,
    state: Mutex<NodeState>,
    counters: NodeCounters,
}

impl PgRouter {
    /// Builds a router over `config.nodes`: one lazily-connecting pool per
    /// node (so a node that is down at start is fine), and the prober task.
    /// Waits up to [`PRIMARY_WAIT`] until a primary is found, and fails if
    /// none is (or a URL does not parse). Does not migrate: see
    /// [`PgRouter::migrate`]. Must run inside a tokio runtime.
    pub async fn connect(config: RouterConfig) -> Result<PgRouter, StoreError> {
        if config.nodes.is_empty() {
            return Err(unavailable("the database router has no node"));
        }
        let metrics = Metrics::new(&config.replica_set);
        let nodes = config
            .nodes
            .iter()
            .map(|url| {
                let local = config.local.contains(url);
                Node::new(url, config.max_connections, local, &metrics).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let inner = Arc::new(Inner::new(
            config.replica_set,
            Policy::new(Duration::from_millis(config.max_lag_ms)),
            nodes,
            metrics,
        ));
        let mut rounds_seen = inner.rounds.subscribe();
        let every = Duration::from_millis(config.probe_interval_ms.max(1));
        tokio::spawn(probe::run_prober(Arc::downgrade(&inner), every));
        let deadline = tokio::time::Instant::now() + PRIMARY_WAIT;
        while inner.primary.load(Ordering::Acquire) == NO_PRIMARY {
            let changed = tokio::time::timeout_at(deadline, rounds_seen.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                let router = PgRouter { inner };
                return Err(unavailable(format!(
                    "no primary among the database nodes after {PRIMARY_WAIT:?}: {}",
                    router.describe()
                )));
            }
        }
        let router = PgRouter { inner };
        tracing::info!(nodes = %router.describe(), "database router ready");
        Ok(router)
    }

    /// The routed SQL store: writes to the primary, reads to replicas (see
    /// the module documentation).
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.clone())
    }

    /// Sessions on the current primary, whichever node that is at each call
    /// (a session must be seen by the next request at once).
    pub fn sessions(&self) -> Arc<dyn SessionStore> {
        Arc::new(PrimarySessions {
            inner: Arc::clone(&self.inner),
        })
    }

    /// The job queue on the current primary, whichever node that is at each
    /// call (claims lock rows: only a primary can).
    pub fn queue(&self, config: QueueConfig) -> Arc<dyn JobQueue> {
        let inner = Arc::clone(&self.inner);
        Arc::new(crate::PgJobQueue::on_current(
            move || Ok(inner.primary()?.store.pool().clone()),
            config,
        ))
    }

    /// The current primary's pool: fails at once without a primary.
    pub fn primary_pool(&self) -> Result<sqlx::PgPool, StoreError> {
        Ok(self.inner.primary()?.store.pool().clone())
    }

    /// The pools of the nodes that took reads as replicas at their last
    /// probe (a move waits for them to replay what it wrote).
    pub(crate) fn replica_pools(&self) -> Vec<sqlx::PgPool> {
        self.inner
            .nodes
            .iter()
            .filter(|n| {
                let st = n.lock_state();
                st.role == NodeRole::Replica && st.usable
            })
            .map(|n| n.store.pool().clone())
            .collect()
    }

    /// The shard maps on this set's current primary (the catalog set's).
    pub fn shard_maps(&self) -> crate::ShardMaps {
        let inner = Arc::clone(&self.inner);
        crate::ShardMaps::on_current(move || Ok(inner.primary()?.store.pool().clone()))
    }

    /// The replica set this router serves.
    pub fn replica_set(&self) -> &ReplicaSetId {
        &self.inner.set
    }

    /// Every node (in the configuration's order) as of its last probe, with
    /// its read and write counts.
    pub fn status(&self) -> Vec<NodeStatus> {
        self.inner.nodes.iter().map(|n| n.status()).collect()
    }

    /// Router-wide counters.
    pub fn stats(&self) -> RouterStats {
        let i = &self.inner;
        RouterStats {
            reads_fallback_floor: i.metrics.fallback(Fallback::Floor).get(),
            reads_fallback_no_replica: i.metrics.fallback(Fallback::NoReplica).get(),
            replica_read_retries: i.nodes.iter().map(|n| n.counters.read_retries.get()).sum(),
            no_primary: i.metrics.no_primary().get(),
            probe_rounds: *i.rounds.borrow(),
        }
    }

    /// Exports the router's metrics into `registry` (see `metrics.rs` for
    /// the families; every series is labelled with the replica set and,
    /// per node, the node's URL without its password). Counts from the
    /// router's start, whenever this is called. The registry does not keep
    /// the router alive. Fails if the registry already holds this router's
    /// metrics, or another router's of the same replica set.
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(Exporter::new(
            self.inner.metrics.clone(),
            Arc::downgrade(&self.inner),
        )))
    }

    /// Applies the pending migrations on the current primary.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        crate::migrate(self.inner.primary()?.store.pool()).await
    }

    /// `url=role` for every node, for logs and errors.
    fn describe(&self) -> String {
        self.status()
            .iter()
            .map(|s| format!("{}={}", s.url, s.role))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Inner {
    /// Shared state over `nodes`, no primary known yet.
    fn new(set: ReplicaSetId, policy: Policy, nodes: Vec<Arc<Node>>, metrics: Metrics) -> Inner {
        Inner {
            set,
            policy,
            nodes,
            primary: AtomicUsize::new(NO_PRIMARY),
            metrics,
            rounds: watch::channel(0).0,
        }
    }

    /// The elected primary, or `Unavailable` at once.
    fn primary(&self) -> Result<&Node, StoreError> {
        let i = self.primary.load(Ordering::Acquire);
        self.nodes.get(i).map(|n| &**n).ok_or_else(|| {
            self.metrics.no_primary().inc();
            unavailable("no primary database is known (failover in progress?)")
        })
    }
}

impl Node {
    fn new(url: &str, max_connections: u32, local: bool, metrics: &Metrics) -> Result<Node, StoreError> {
        let options = connect_options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        Ok(Node {
            local,
            url: redact(url),
            probe: Probe::new(redact(url), options),
            store: PgStore::new(pool),
            state: Mutex::new(NodeState::default()),
            counters: metrics.node(&redact(url)),
        })
    }

    fn lock_state(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the node out of the read rotation until a later probe answers.
    fn mark_down(&self) {
        self.lock_state().mark_down(Instant::now());
    }

    fn status(&self) -> NodeStatus {
        let st = self.lock_state().clone();
        let seen = st.seen;
        NodeStatus {
            url: self.url.clone(),
            role: st.role,
            timeline: seen.map(|o| o.timeline),
            wal_lsn: seen.and_then(|o| o.wal_lsn),
            replay_lsn: seen.and_then(|o| o.replay_lsn),
            receive_lsn: seen.and_then(|o| o.receive_lsn),
            lag_bytes: st.lag_bytes,
            lag_ms: st.lag_ms,
            usable: st.usable,
            reads: self.counters.reads.get(),
            writes: self.counters.writes.get(),
        }
    }
}

/// A router over nodes in the given states, none of which listens, with no
/// prober: for the unit tests of the rooms.
#[cfg(test)]
pub(super) mod fixtures {
    use super::*;

    /// A router over `states`, with the primary at `primary`.
    pub(in crate::router) fn router_over(states: Vec<NodeState>, primary: Option<usize>) -> PgRouter {
        router_of(ReplicaSetId::DEFAULT, states, primary)
    }

    /// [`router_over`] for the replica set `set`.
    pub(in crate::router) fn router_of(
        set: ReplicaSetId,
        states: Vec<NodeState>,
        primary: Option<usize>,
    ) -> PgRouter {
        // A port that was free a moment ago: connections are refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let metrics = Metrics::new(&set);
        let nodes = states
            .into_iter()
            .enumerate()
            .map(|(i, st)| {
                // Told apart by their database name.
                let url = format!("postgres://u@127.0.0.1:{port}/db{i}");
                let node = Node::new(&url, 1, false, &metrics).unwrap();
                *node.lock_state() = st;
                Arc::new(node)
            })
            .collect();
        let inner = Inner::new(set, Policy::new(Duration::from_secs(1)), nodes, metrics);
        inner
            .primary
            .store(primary.unwrap_or(NO_PRIMARY), Ordering::Release);
        PgRouter {
            inner: Arc::new(inner),
        }
    }
}
