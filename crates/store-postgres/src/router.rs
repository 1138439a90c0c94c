//! The database router every web server runs in front of a replicated
//! PostgreSQL: writes go to the primary; reads go to healthy replicas in
//! turn, never to one whose replay lags more than a ceiling, and under
//! read-your-writes only to one that has replayed past the caller's read
//! floor ([`domain::consistency`]); otherwise to the primary.
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
//! scope's floor. It is taken after the commit returned, so it is at or past
//! the end of the commit record, whatever `synchronous_commit` is; a
//! replica whose replay LSN reached it shows the write. (Measuring inside
//! the write's transaction would give a position before its commit record.)
//! It can overshoot (other sessions' writes), which only sends a read to the
//! primary that a replica could have served.

mod election;
mod lag;

use crate::{connect_options, parse_lsn, unavailable, PgJobQueue, PgSessionStore, PgStore, QueueConfig};
use async_trait::async_trait;
use domain::consistency;
use domain::ports::{JobQueue, SessionStore, Store};
use domain::*;
use election::{elect, Observation};
use lag::LagHistory;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool, Row};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest wait for a pooled connection to a node (connecting included): 2 s.
/// A write while the primary is unreachable fails within it instead of
/// hanging; a read on a replica that just died is retried on the primary
/// after it.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest one probe of one node may take, connecting included: 1 s. A node
/// that does not answer within it counts as down until its next answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long [`PgRouter::connect`] waits for a primary to be found: 10 s.
pub const PRIMARY_WAIT: Duration = Duration::from_secs(10);

const NO_PRIMARY: usize = usize::MAX;

/// What the prober asks every node, in one round trip. The timeline of a
/// primary is read from the name of its current WAL segment, which changes
/// at once on promotion, whereas `pg_control_checkpoint()` only reports the
/// new timeline after the next checkpoint; the larger of the two is used.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
    (SELECT timeline_id FROM pg_control_checkpoint()), \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
    pg_last_wal_replay_lsn()::text, \
    pg_last_wal_receive_lsn()::text";

/// Configuration of a [`PgRouter`]. Deserialised from the topology file;
/// every field but `nodes` has a default.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Every node's URL (`postgres://user[:password]@host:port/db`), the
    /// primary's and the replicas'; which one is the primary is discovered,
    /// so the list does not change at a failover. Required.
    pub nodes: Vec<String>,
    /// Pooled connections per node. Default 10.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Lag ceiling: a replica that has been behind the primary for longer
    /// than this gets no reads. Default 1000 ms.
    #[serde(default = "default_max_lag_ms")]
    pub max_lag_ms: u64,
    /// How often every node is probed. Default 200 ms.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
}

fn default_max_connections() -> u32 {
    10
}
fn default_max_lag_ms() -> u64 {
    1000
}
fn default_probe_interval_ms() -> u64 {
    200
}

impl RouterConfig {
    /// A router over `nodes` with every other setting at its default.
    pub fn new(nodes: Vec<String>) -> Self {
        RouterConfig {
            nodes,
            max_connections: default_max_connections(),
            max_lag_ms: default_max_lag_ms(),
            probe_interval_ms: default_probe_interval_ms(),
        }
    }
}

/// Passwords in the URLs never print.
impl fmt::Debug for RouterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterConfig")
            .field("nodes", &self.nodes.iter().map(|u| redact(u)).collect::<Vec<_>>())
            .field("max_connections", &self.max_connections)
            .field("max_lag_ms", &self.max_lag_ms)
            .field("probe_interval_ms", &self.probe_interval_ms)
            .finish()
    }
}

/// The role a node plays for the router, as of its last probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// The elected primary: every write, and the reads no replica can take.
    Primary,
    /// A replica (in recovery): reads, when usable.
    Replica,
    /// Did not answer its last probe, failed a read since, or was never
    /// reached.
    #[default]
    Down,
    /// Claims to be a primary but lost the election (an old primary back
    /// after a failover): gets nothing.
    Fenced,
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeRole::Primary => "primary",
            NodeRole::Replica => "replica",
            NodeRole::Down => "down",
            NodeRole::Fenced => "fenced",
        })
    }
}

/// One node as the router sees it, for `/metrics` and tests.
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

/// Router-wide counters, for `/metrics`.
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

struct Inner {
    max_lag: Duration,
    nodes: Vec<Arc<Node>>,
    /// Index of the elected primary, or [`NO_PRIMARY`].
    primary: AtomicUsize,
    /// Round-robin position among the eligible replicas.
    next: AtomicUsize,
    reads_fallback_floor: AtomicU64,
    reads_fallback_no_replica: AtomicU64,
    replica_read_retries: AtomicU64,
    no_primary: AtomicU64,
    /// Probe rounds completed; [`PgRouter::connect`] waits on it.
    rounds: watch::Sender<u64>,
}

struct Node {
    url: String,
    probe_options: PgConnectOptions,
    store: PgStore,
    /// The prober's own connection, apart from the pool so that a busy pool
    /// cannot make a healthy node look dead.
    probe_conn: tokio::sync::Mutex<Option<PgConnection>>,
    state: Mutex<NodeState>,
    reads: AtomicU64,
    writes: AtomicU64,
}

#[derive(Debug, Clone, Default)]
struct NodeState {
    role: NodeRole,
    /// The last answer (kept while down, for the status).
    seen: Option<Observation>,
    lag_bytes: Option<u64>,
    lag_ms: Option<u64>,
    usable: bool,
    /// When a read failed on it: it stays down until a probe that started
    /// later answers.
    marked_down: Option<Instant>,
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
        let nodes = config
            .nodes
            .iter()
            .map(|url| Node::new(url, config.max_connections).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (rounds, mut rounds_seen) = watch::channel(0u64);
        let inner = Arc::new(Inner {
            max_lag: Duration::from_millis(config.max_lag_ms),
            nodes,
            primary: AtomicUsize::new(NO_PRIMARY),
            next: AtomicUsize::new(0),
            reads_fallback_floor: AtomicU64::new(0),
            reads_fallback_no_replica: AtomicU64::new(0),
            replica_read_retries: AtomicU64::new(0),
            no_primary: AtomicU64::new(0),
            rounds,
        });
        let every = Duration::from_millis(config.probe_interval_ms.max(1));
        tokio::spawn(run_prober(Arc::downgrade(&inner), every));
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
        Arc::new(PgJobQueue::on_current(
            move || Ok(inner.primary()?.store.pool().clone()),
            config,
        ))
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
            reads_fallback_floor: i.reads_fallback_floor.load(Ordering::Relaxed),
            reads_fallback_no_replica: i.reads_fallback_no_replica.load(Ordering::Relaxed),
            replica_read_retries: i.replica_read_retries.load(Ordering::Relaxed),
            no_primary: i.no_primary.load(Ordering::Relaxed),
            probe_rounds: *i.rounds.borrow(),
        }
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

    /// Runs a read: on the next usable replica that has replayed the read
    /// floor, else on the primary. A replica that fails the read is marked
    /// down and the read is retried once on the primary (reads are safe to
    /// repeat).
    async fn read<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(PgStore) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, StoreError>> + Send,
        T: Send,
    {
        let inner = &self.inner;
        match inner.choose_replica(consistency::read_floor()) {
            Ok(i) => {
                let node = &inner.nodes[i];
                match f(node.store.clone()).await {
                    Ok(v) => {
                        node.reads.fetch_add(1, Ordering::Relaxed);
                        return Ok(v);
                    }
                    // Conflict and NotFound are answers, not failures.
                    Err(StoreError::Unavailable(error)) => {
                        node.mark_down();
                        inner.replica_read_retries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(node = %node.url, %error, "replica read failed: marked down, retrying on the primary");
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(Fallback::Floor) => {
                inner.reads_fallback_floor.fetch_add(1, Ordering::Relaxed);
            }
            Err(Fallback::NoReplica) => {
                inner.reads_fallback_no_replica.fetch_add(1, Ordering::Relaxed);
            }
        }
        let node = inner.primary()?;
        let v = f(node.store.clone()).await?;
        node.reads.fetch_add(1, Ordering::Relaxed);
        Ok(v)
    }

    /// Runs a write on the primary, then, inside a consistency scope, notes
    /// its LSN as the scope's read floor. Refused at once without a primary.
    async fn write<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(PgStore) -> Fut + Send,
        Fut: Future<Output = Result<T, StoreError>> + Send,
        T: Send,
    {
        let node = self.inner.primary()?;
        let v = f(node.store.clone()).await?;
        node.writes.fetch_add(1, Ordering::Relaxed);
        if consistency::in_scope() {
            match wal_insert_lsn(node.store.pool()).await {
                Ok(lsn) => consistency::note_write(lsn),
                // The write is done: failing it now would invite a retry
                // that writes twice. The primary is most likely gone, and
                // with it the guarantee.
                Err(error) => {
                    tracing::warn!(node = %node.url, %error, "no LSN after a write: read-your-writes not guaranteed for it")
                }
            }
        }
        Ok(v)
    }
}

/// Why a read goes to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// Usable replicas exist, but none has replayed the read floor.
    Floor,
    /// No replica is usable.
    NoReplica,
}

impl Inner {
    /// The elected primary, or `Unavailable` at once.
    fn primary(&self) -> Result<&Node, StoreError> {
        let i = self.primary.load(Ordering::Acquire);
        self.nodes.get(i).map(|n| &**n).ok_or_else(|| {
            self.no_primary.fetch_add(1, Ordering::Relaxed);
            unavailable("no primary database is known (failover in progress?)")
        })
    }

    /// The next replica in turn among the usable ones that have replayed
    /// `floor`.
    fn choose_replica(&self, floor: Option<u64>) -> Result<usize, Fallback> {
        let mut usable = false;
        let mut eligible = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let st = node.lock_state();
            if st.role != NodeRole::Replica || !st.usable {
                continue;
            }
            usable = true;
            let replayed = st.seen.and_then(|o| o.replay_lsn);
            if floor.is_none_or(|floor| replayed.is_some_and(|r| r >= floor)) {
                eligible.push(i);
            }
        }
        if eligible.is_empty() {
            return Err(if usable {
                Fallback::Floor
            } else {
                Fallback::NoReplica
            });
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(eligible[turn % eligible.len()])
    }

    /// Probes every node at once, elects the primary and updates every
    /// node's role, lag and usability.
    async fn probe_round(&self, prober: &mut Prober) {
        let started = Instant::now();
        let mut probes = tokio::task::JoinSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let node = Arc::clone(node);
            probes.spawn(async move { (i, node.probe().await) });
        }
        let mut seen = vec![None; self.nodes.len()];
        while let Some(done) = probes.join_next().await {
            if let Ok((i, answer)) = done {
                seen[i] = answer;
            }
        }
        let now = Instant::now();

        let election = elect(&seen, prober.elected.map(|(i, _)| i), prober.fence);
        let primary = election.primary.map(|i| (i, seen[i].map_or(0, |o| o.timeline)));
        if let Some((i, timeline)) = primary {
            if prober.elected != primary {
                // Another node (or timeline): its WAL positions are not
                // comparable with the old history.
                prober.history.clear();
                prober.elected = primary;
                tracing::info!(node = %self.nodes[i].url, timeline, "primary elected");
            }
            prober.fence = prober.fence.max(timeline);
            if let Some(lsn) = seen[i].and_then(|o| o.wal_lsn) {
                prober.history.observe(lsn, now);
            }
        }
        let latest = prober.history.latest();

        for (i, node) in self.nodes.iter().enumerate() {
            let mut st = node.lock_state();
            let before = st.role;
            if let Some(at) = st.marked_down {
                if at >= started {
                    // A read failed after this probe began: its answer may
                    // predate the failure.
                    continue;
                }
                st.marked_down = None;
            }
            match seen[i] {
                None => {
                    st.role = NodeRole::Down;
                    st.usable = false;
                }
                Some(o) => {
                    st.seen = Some(o);
                    (st.lag_bytes, st.lag_ms) = (None, None);
                    if primary.is_some_and(|(p, _)| p == i) {
                        st.role = NodeRole::Primary;
                        st.usable = true;
                    } else if !o.in_recovery || election.fenced[i] {
                        st.role = NodeRole::Fenced;
                        st.usable = false;
                    } else {
                        st.role = NodeRole::Replica;
                        let lag = o.replay_lsn.and_then(|r| prober.history.lag(r, now));
                        st.lag_bytes = latest.zip(o.replay_lsn).map(|(p, r)| p.saturating_sub(r));
                        st.lag_ms = lag.map(|d| d.as_millis().try_into().unwrap_or(u64::MAX));
                        st.usable = lag.is_some_and(|d| d <= self.max_lag);
                    }
                }
            }
            if st.role != before {
                match st.role {
                    NodeRole::Primary | NodeRole::Replica => {
                        tracing::info!(node = %node.url, role = %st.role, was = %before, "database node role")
                    }
                    NodeRole::Down | NodeRole::Fenced => {
                        tracing::warn!(node = %node.url, role = %st.role, was = %before, "database node role")
                    }
                }
            }
        }
        let was = self
            .primary
            .swap(primary.map_or(NO_PRIMARY, |(i, _)| i), Ordering::AcqRel);
        if primary.is_none() && was != NO_PRIMARY {
            tracing::warn!(node = %self.nodes[was].url, "no primary: writes are refused until one is found");
        }
        self.rounds.send_modify(|r| *r += 1);
    }
}

impl Node {
    fn new(url: &str, max_connections: u32) -> Result<Node, StoreError> {
        let options = connect_options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        Ok(Node {
            url: redact(url),
            probe_options: options,
            store: PgStore::new(pool),
            probe_conn: tokio::sync::Mutex::new(None),
            state: Mutex::new(NodeState::default()),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        })
    }

    fn lock_state(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the node out of the read rotation until a later probe answers.
    fn mark_down(&self) {
        let mut st = self.lock_state();
        st.role = NodeRole::Down;
        st.usable = false;
        st.marked_down = Some(Instant::now());
    }

    /// Asks the node [`PROBE_SQL`] within [`PROBE_TIMEOUT`]; `None` if it
    /// does not answer. The connection is kept between probes and dropped
    /// after any failure.
    async fn probe(&self) -> Option<Observation> {
        let mut conn = self.probe_conn.lock().await;
        let answer = tokio::time::timeout(PROBE_TIMEOUT, probe_on(&mut conn, &self.probe_options)).await;
        match answer {
            Ok(Ok(o)) => Some(o),
            Ok(Err(error)) => {
                tracing::debug!(node = %self.url, %error, "probe failed");
                *conn = None;
                None
            }
            Err(_) => {
                tracing::debug!(node = %self.url, "probe timed out");
                *conn = None;
                None
            }
        }
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
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }
}

async fn probe_on(
    conn: &mut Option<PgConnection>,
    options: &PgConnectOptions,
) -> Result<Observation, String> {
    if conn.is_none() {
        *conn = Some(
            PgConnection::connect_with(options)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let Some(c) = conn.as_mut() else {
        return Err("no connection".into());
    };
    let row = sqlx::query(PROBE_SQL)
        .fetch_one(&mut *c)
        .await
        .map_err(|e| e.to_string())?;
    let get_lsn = |i: usize| -> Result<Option<u64>, String> {
        let text: Option<String> = row.try_get(i).map_err(|e| e.to_string())?;
        text.map(|t| parse_lsn(&t).ok_or_else(|| format!("unexpected lsn {t:?}")))
            .transpose()
    };
    let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
    let checkpoint_timeline: Option<i32> = row.try_get(1).map_err(|e| e.to_string())?;
    let walfile: Option<String> = row.try_get(3).map_err(|e| e.to_string())?;
    let timeline = checkpoint_timeline
        .and_then(|t| u32::try_from(t).ok())
        .unwrap_or(0)
        .max(walfile.as_deref().and_then(walfile_timeline).unwrap_or(0));
    Ok(Observation {
        in_recovery,
        timeline,
        wal_lsn: get_lsn(2)?,
        replay_lsn: get_lsn(4)?,
        receive_lsn: get_lsn(5)?,
    })
}

/// The timeline of a WAL segment file name (`000000020000000000000003`: the
/// first 8 hex digits).
fn walfile_timeline(name: &str) -> Option<u32> {
    let hex = name.get(..8)?;
    hex.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

/// `pg_current_wal_insert_lsn()` on the primary: the end of everything
/// inserted into the WAL so far, so past every commit that has returned.
async fn wal_insert_lsn(pool: &PgPool) -> Result<u64, StoreError> {
    let text: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(pool)
        .await
        .map_err(unavailable)?;
    parse_lsn(&text).ok_or_else(|| unavailable(format!("unexpected lsn {text:?}")))
}

/// The prober's own memory between rounds.
#[derive(Debug, Default)]
struct Prober {
    /// The last primary elected, with its timeline (kept while no node is
    /// primary, so a primary that comes back keeps its lag history).
    elected: Option<(usize, u32)>,
    /// The highest timeline ever elected: a node claiming to be primary on
    /// a lower one is fenced, even when it is the only claimant.
    fence: u32,
    history: LagHistory,
}

async fn run_prober(inner: Weak<Inner>, every: Duration) {
    let mut prober = Prober::default();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.probe_round(&mut prober).await;
    }
}

/// `url` without its password (`postgres://user:secret@host/db` becomes
/// `postgres://user@host/db`; a `password=` parameter is dropped).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(unparsable url)".to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|p| !p.to_ascii_lowercase().starts_with("password="))
                .collect();
            if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[async_trait]
impl Store for PgRouter {
    async fn create_user(&self, username: &Username, password_hash: &str) -> Result<UserId, StoreError> {
        self.write(|s| async move { s.create_user(username, password_hash).await })
            .await
    }

    async fn user_by_name(&self, username: &Username) -> Result<Option<User>, StoreError> {
        self.read(|s| async move { s.user_by_name(username).await }).await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.read(|s| async move { s.user_by_id(id).await }).await
    }

    async fn profile(&self, id: UserId) -> Result<Option<Profile>, StoreError> {
        self.read(|s| async move { s.profile(id).await }).await
    }

    async fn create_photo(&self, photo: &NewPhoto) -> Result<Photo, StoreError> {
        self.write(|s| async move { s.create_photo(photo).await }).await
    }

    async fn delete_photo(&self, id: PhotoId) -> Result<(), StoreError> {
        self.write(|s| async move { s.delete_photo(id).await }).await
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        self.read(|s| async move { s.photo(id).await }).await
    }

    async fn set_photo_status(&self, id: PhotoId, status: PhotoStatus) -> Result<(), StoreError> {
        self.write(|s| async move { s.set_photo_status(id, status).await })
            .await
    }

    async fn user_photo_ids(&self, owner: UserId, page: Page) -> Result<Vec<PhotoId>, StoreError> {
        self.read(|s| async move { s.user_photo_ids(owner, page).await })
            .await
    }

    async fn follow(&self, follower: UserId, followee: UserId) -> Result<(), StoreError> {
        self.write(|s| async move { s.follow(follower, followee).await })
            .await
    }

    async fn unfollow(&self, follower: UserId, followee: UserId) -> Result<(), StoreError> {
        self.write(|s| async move { s.unfollow(follower, followee).await })
            .await
    }

    async fn is_following(&self, follower: UserId, followee: UserId) -> Result<bool, StoreError> {
        self.read(|s| async move { s.is_following(follower, followee).await })
            .await
    }

    async fn feed_ids(&self, user: UserId, page: Page) -> Result<Vec<PhotoId>, StoreError> {
        self.read(|s| async move { s.feed_ids(user, page).await }).await
    }

    /// Routed like a read: while the primary is down (a failover under way)
    /// the store can still serve reads from caught-up replicas, so a web
    /// server stays ready, answering reads and refusing writes quickly.
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|s| async move { s.ping().await }).await
    }
}

/// Sessions on whichever node is the primary at each call.
struct PrimarySessions {
    inner: Arc<Inner>,
}

impl PrimarySessions {
    fn store(&self) -> Result<PgSessionStore, BackendError> {
        Ok(PgSessionStore::new(self.inner.primary()?.store.pool().clone()))
    }
}

#[async_trait]
impl SessionStore for PrimarySessions {
    async fn create(&self, user: UserId, ttl: Duration) -> Result<SessionToken, BackendError> {
        self.store()?.create(user, ttl).await
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<Session>, BackendError> {
        self.store()?.get(token).await
    }

    async fn delete(&self, token: &SessionToken) -> Result<(), BackendError> {
        self.store()?.delete(token).await
    }
}

#[cfg(test)]
mod tests {
    use super::election::fixtures::{primary, replica};
    use super::*;

    #[test]
    fn timelines_come_from_wal_file_names() {
        assert_eq!(walfile_timeline("000000020000000000000003"), Some(2));
        assert_eq!(walfile_timeline("0000000A0000000100000003"), Some(10));
        assert_eq!(walfile_timeline("0000"), None);
        assert_eq!(walfile_timeline("zzzzzzzz0000000000000003"), None);
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact("postgres://app:s3cret@db1:5432/photos"),
            "postgres://app@db1:5432/photos"
        );
        assert_eq!(
            redact("postgres://app@127.0.0.1:5432/photos?sslmode=disable&password=x"),
            "postgres://app@127.0.0.1:5432/photos?sslmode=disable"
        );
        assert_eq!(redact("postgresql://h/db?password=x"), "postgresql://h/db");
        assert_eq!(redact("postgres://u:p@ss@h"), "postgres://u@h");
        assert_eq!(redact("no url"), "(unparsable url)");
        let config = RouterConfig::new(vec!["postgres://app:s3cret@db1/photos".into()]);
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn config_defaults_and_refuses_unknown_fields() {
        let c: RouterConfig = serde_json::from_str(r#"{"nodes": ["postgres://a@h/db"]}"#).unwrap();
        assert_eq!(c, RouterConfig::new(vec!["postgres://a@h/db".into()]));
        assert_eq!(
            (c.max_connections, c.max_lag_ms, c.probe_interval_ms),
            (10, 1000, 200)
        );
        assert!(serde_json::from_str::<RouterConfig>(r#"{"nodes": [], "lag": 5}"#).is_err());
        assert!(
            serde_json::from_str::<RouterConfig>(r#"{}"#).is_err(),
            "nodes are required"
        );
    }

    fn router_over(states: Vec<NodeState>) -> Inner {
        let nodes = states
            .into_iter()
            .map(|st| {
                let node = Node::new("postgres://u@127.0.0.1:1/db", 1).unwrap();
                *node.lock_state() = st;
                Arc::new(node)
            })
            .collect();
        Inner {
            max_lag: Duration::from_secs(1),
            nodes,
            primary: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            reads_fallback_floor: AtomicU64::new(0),
            reads_fallback_no_replica: AtomicU64::new(0),
            replica_read_retries: AtomicU64::new(0),
            no_primary: AtomicU64::new(0),
            rounds: watch::channel(0).0,
        }
    }

    fn state(role: NodeRole, seen: Option<Observation>, usable: bool) -> NodeState {
        NodeState {
            role,
            seen,
            usable,
            ..NodeState::default()
        }
    }

    #[tokio::test]
    async fn reads_take_usable_replicas_in_turn_above_the_floor() {
        let inner = router_over(vec![
            state(NodeRole::Primary, primary(1, 500), true),
            state(NodeRole::Replica, replica(1, 500), true),
            state(NodeRole::Down, replica(1, 500), false),
            state(NodeRole::Replica, replica(1, 300), true),
            state(NodeRole::Replica, replica(1, 500), false), // lagging
            state(NodeRole::Fenced, primary(1, 900), false),
        ]);
        let picks: Vec<_> = (0..4).map(|_| inner.choose_replica(None)).collect();
        assert_eq!(picks, vec![Ok(1), Ok(3), Ok(1), Ok(3)]);
        assert_eq!(inner.choose_replica(Some(400)), Ok(1));
        assert_eq!(inner.choose_replica(Some(500)), Ok(1));
        assert_eq!(inner.choose_replica(Some(501)), Err(Fallback::Floor));
        inner.nodes[1].mark_down();
        inner.nodes[3].mark_down();
        assert_eq!(inner.choose_replica(None), Err(Fallback::NoReplica));
    }
}
