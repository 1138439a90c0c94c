//! The PostgreSQL cluster `up` runs itself (`[postgres]` in a topology): a
//! primary and N streaming replicas under `<data>/pg`, every node a child of
//! the one supervisor (restart policy: its controller decides), and a
//! failover controller that observes the nodes (the supervisor's process
//! states and a probe over a connection kept open to each node) and carries
//! out what the pure [`failover::decide`] returns. A dead replica is
//! restarted. A primary that is dead, or that answers no query (hung,
//! frozen), for longer than `failover_after_ms` is replaced:
//! 1. a still-running old primary is killed (it must not wake up and take
//!    writes), and it is **fenced**: `standby.signal` in its data directory,
//!    so even a restart by hand brings it back read-only, in recovery;
//! 2. the replica that has *received* the most WAL is chosen (with
//!    synchronous replication an acknowledged commit is flushed on at least
//!    one replica, perhaps not yet replayed), given the synchronous quorum
//!    of the other nodes before it is promoted (so no commit it acknowledges
//!    is on it alone), and promoted;
//! 3. the other replicas follow it;
//! 4. the old primary is rebuilt as a replica of the new one (emptied and
//!    copied anew: its own history may hold writes past the fork that no one
//!    acknowledged) and rejoins the cluster.
//!
//! The name of the current primary is kept in `<data>/pg/primary`, so a
//! restarted `up` brings the cluster back as it left it (a node still
//! fenced then is rebuilt from the primary first). With no replica, a dead
//! primary is simply restarted.

pub mod failover;

use crate::component::Component;
use crate::supervisor::{Backoff, ChildSpec, Launch, Supervisor};
use anyhow::Context;
use engines::postgres::{PgNode, PgOptions};
use failover::{Action, ClusterView, NodeState, Process};
use nix::sys::signal::Signal;
use serde::Deserialize;
use sqlx::{ConnectOptions, Connection};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `[postgres]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedPostgres {
    /// Port of the first node on 127.0.0.1; the others take the next
    /// ports. Default 6432 (not 5432, which a system PostgreSQL may hold).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Streaming replicas. Default 2.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// `synchronous_standby_names = 'ANY 1 (replicas)'`: a commit waits
    /// until one replica has it, so a failover loses no acknowledged write.
    /// Default false.
    #[serde(default)]
    pub synchronous: bool,
    /// How long the primary may be dead or unresponsive (no answer to a
    /// query within 2 s) before a replica is promoted. Default 3000.
    #[serde(default = "default_failover_after_ms")]
    pub failover_after_ms: u64,
    /// Replica sets, each a primary with `replicas` replicas and a failover
    /// of its own: more than 1 shards the SQL store over them (`s1`, `s2`,
    /// ...; `s1` also holds the catalog). Default 1.
    #[serde(default = "default_sets")]
    pub sets: usize,
    /// In a multi-site topology, the site of each node in name order
    /// (`pg1` first): a site's loss takes its nodes with it. Default: all
    /// in the first site.
    #[serde(default)]
    pub sites: Vec<String>,
    /// The set this is, when one of several (see [`ManagedPostgres::per_set`]).
    #[serde(skip)]
    set: Option<String>,
}

fn default_sets() -> usize {
    1
}

fn default_port() -> u16 {
    6432
}
fn default_replicas() -> usize {
    2
}
fn default_failover_after_ms() -> u64 {
    3000
}

impl Default for ManagedPostgres {
    fn default() -> Self {
        ManagedPostgres {
            port: default_port(),
            replicas: default_replicas(),
            synchronous: false,
            failover_after_ms: default_failover_after_ms(),
            sets: default_sets(),
            sites: Vec::new(),
            set: None,
        }
    }
}

impl ManagedPostgres {
    /// Each replica set as a cluster of its own: this one when there is one
    /// set; else `s1`, `s2`, ... on consecutive runs of ports, nodes named
    /// `s1-pg1`, ..., data under `pg-s1`, ...
    pub fn per_set(&self) -> Vec<ManagedPostgres> {
        if self.sets <= 1 {
            return vec![self.clone()];
        }
        (0..self.sets).map(|k| self.set_at(k)).collect()
    }

    /// Replica set `k` (from 0) of a sharded tier: `s{k+1}`, its ports
    /// after those of the sets before it. Also how `ctl reshard` adds a set
    /// past the configured ones.
    pub fn set_at(&self, k: usize) -> ManagedPostgres {
        ManagedPostgres {
            port: self.port + (k * (self.replicas + 1)) as u16,
            sets: 1,
            set: Some(format!("s{}", k + 1)),
            ..self.clone()
        }
    }

    /// The sets whose data exists under `data_dir` (`pg-s1`, `pg-s2`, ...
    /// without a gap): at least those a restarted `up` runs, so a set
    /// `ctl reshard` added comes back with the others.
    pub fn sets_on_disk(data_dir: &Path) -> usize {
        (1..)
            .take_while(|k| data_dir.join(format!("pg-s{k}")).is_dir())
            .count()
    }

    /// The set's name, when this is one of several.
    pub fn set_name(&self) -> Option<&str> {
        self.set.as_deref()
    }

    /// Node names: `pg1` (the first primary), `pg2`, ... (`s2-pg1`, ... in
    /// set `s2`).
    fn names(&self) -> Vec<String> {
        let prefix = self.set.as_ref().map(|s| format!("{s}-")).unwrap_or_default();
        (1..=self.replicas + 1)
            .map(|i| format!("{prefix}pg{i}"))
            .collect()
    }

    /// The cluster's directory under the data directory.
    fn dir_name(&self) -> String {
        match &self.set {
            Some(set) => format!("pg-{set}"),
            None => "pg".into(),
        }
    }

    /// Every node's URL, in name order; which is primary the routers find out.
    pub fn urls(&self) -> Vec<String> {
        (0..=self.replicas)
            .map(|i| {
                format!(
                    "postgres://{}@127.0.0.1:{}/{}",
                    engines::postgres::ROLE,
                    self.port as usize + i,
                    engines::postgres::DATABASE
                )
            })
            .collect()
    }

    /// Every node's address, of every set (for overlap checks).
    pub fn addrs(&self) -> Vec<std::net::SocketAddr> {
        (0..(self.replicas + 1) * self.sets.max(1))
            .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], self.port + i as u16)))
            .collect()
    }

    /// Every node as a component: `pg1`, `pg2`, ... on consecutive ports,
    /// in `site` (or in its own of `sites`), ready when it answers a query. The failover controller, not the
    /// supervisor alone, decides what happens when one dies.
    pub fn components(&self, site: &str) -> Vec<crate::component::Component> {
        if self.sets > 1 {
            return self.per_set().iter().flat_map(|s| s.components(site)).collect();
        }
        use crate::component::{Bind, Component, Readiness, RestartPolicy};
        self.names()
            .into_iter()
            .zip(self.addrs())
            .zip(self.urls())
            .enumerate()
            .map(|(i, ((name, addr), url))| Component {
                name,
                role: crate::role::Role::Postgres,
                site: self.sites.get(i).map_or(site, String::as_str).into(),
                binds: vec![Bind::tcp(addr, "listen")],
                addr: Some(addr),
                metrics: None,
                ready: Readiness::Postgres { url },
                depends_on: Vec::new(),
                restart: RestartPolicy::ByController,
            })
            .collect()
    }

    fn options(&self, port: u16, standbys: &[String]) -> PgOptions {
        let mut o = PgOptions::new(port);
        if self.synchronous && !standbys.is_empty() {
            o.synchronous_standbys = Some(quorum(standbys));
        }
        o
    }
}

/// `synchronous_standby_names` for any one of `standbys`, quoted (a
/// set's node names hold a `-`).
fn quorum(standbys: &[impl AsRef<str>]) -> String {
    let quoted: Vec<String> = standbys.iter().map(|n| format!("\"{}\"", n.as_ref())).collect();
    format!("ANY 1 ({})", quoted.join(", "))
}

/// Left in a fenced node's data directory until it is rebuilt.
const FENCED_MARKER: &str = "scalestack.fenced";
/// How often the controller observes the cluster (it also wakes on every
/// change of a child's state).
const TICK: Duration = Duration::from_millis(500);
/// Deadline of one probe (connection included): a node that answers
/// nothing within it counts as silent.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a node may take to accept connections after its start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before a SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// What the controller last decided about the cluster.
#[derive(Debug, Clone)]
struct Roles {
    primary: usize,
    fenced: Vec<usize>,
}

/// A probe's answer.
#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    answers: bool,
    lsn: Option<u64>,
}

/// A running cluster: its nodes (children of the supervisor) and its
/// failover controller.
pub struct PgCluster {
    config: ManagedPostgres,
    dir: PathBuf,
    nodes: Vec<Arc<PgNode>>,
    roles: Mutex<Roles>,
    /// One connection kept open per node for the probes; dropped (and
    /// opened again at the next probe) when a probe fails.
    probes: Vec<tokio::sync::Mutex<Option<sqlx::PgConnection>>>,
    supervisor: Arc<Supervisor>,
    failovers: prometheus::IntCounter,
    /// Nodes held down with their site.
    held: Mutex<std::collections::HashSet<String>>,
}

impl PgCluster {
    /// Creates (first run) or reopens the cluster and starts every node
    /// under `supervisor`, the primary first; `components` are the nodes'
    /// declarations ([`ManagedPostgres::components`]). Failovers are
    /// counted in `failovers`.
    pub async fn start(
        config: &ManagedPostgres,
        components: Vec<Component>,
        data_dir: &Path,
        supervisor: Arc<Supervisor>,
        failovers: prometheus::IntCounter,
    ) -> anyhow::Result<PgCluster> {
        let dir = data_dir.join(config.dir_name());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let names = config.names();
        let state = dir.join("primary");
        let primary_name = std::fs::read_to_string(&state)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| names[0].clone());
        let primary = names.iter().position(|n| *n == primary_name).with_context(|| {
            format!(
                "{} names {primary_name:?}, which this topology lacks",
                state.display()
            )
        })?;
        let port = |i: usize| config.port + i as u16;
        let others: Vec<String> = names.iter().filter(|n| **n != primary_name).cloned().collect();
        let head = Arc::new(
            PgNode::init_primary(
                &names[primary],
                &dir.join(&names[primary]),
                &config.options(port(primary), &others),
            )
            .await
            .with_context(|| format!("preparing PostgreSQL node {}", names[primary]))?,
        );
        supervise(&supervisor, &components[primary], &head).await?;
        let mut nodes: Vec<Option<Arc<PgNode>>> = (0..names.len()).map(|_| None).collect();
        for (i, name) in names.iter().enumerate() {
            if i == primary {
                continue;
            }
            let node_dir = dir.join(name);
            if node_dir.join(FENCED_MARKER).exists() {
                // An old primary `up` fenced and had not rebuilt yet.
                tracing::warn!(node = %name, "fenced node: rebuilding it from the primary");
                std::fs::remove_dir_all(&node_dir)
                    .with_context(|| format!("emptying {}", node_dir.display()))?;
            }
            let node = Arc::new(
                PgNode::init_replica(name, &node_dir, port(i), &head)
                    .await
                    .with_context(|| format!("preparing PostgreSQL replica {name}"))?,
            );
            supervise(&supervisor, &components[i], &node).await?;
            nodes[i] = Some(node);
        }
        nodes[primary] = Some(head);
        std::fs::write(&state, format!("{primary_name}\n"))?;
        let nodes: Vec<Arc<PgNode>> = nodes
            .into_iter()
            .map(|n| n.expect("every node prepared"))
            .collect();
        nodes[primary]
            .wait_for_standbys(config.replicas, START_TIMEOUT)
            .await
            .context("waiting for the replicas to stream")?;
        tracing::info!(primary = %primary_name, replicas = config.replicas, "postgres cluster up");
        Ok(PgCluster {
            config: config.clone(),
            dir,
            probes: nodes.iter().map(|_| tokio::sync::Mutex::new(None)).collect(),
            nodes,
            roles: Mutex::new(Roles {
                primary,
                fenced: Vec::new(),
            }),
            supervisor,
            failovers,
            held: Mutex::new(Default::default()),
        })
    }

    fn roles(&self) -> Roles {
        self.roles.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn edit_roles(&self, f: impl FnOnce(&mut Roles)) {
        f(&mut self.roles.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The part a running node plays, as `ctl ps` shows it: `primary`,
    /// `replica` or `fenced`; `None` for a name that is no node here.
    pub fn part(&self, name: &str) -> Option<&'static str> {
        let i = self.nodes.iter().position(|n| n.name() == name)?;
        let roles = self.roles();
        Some(if roles.fenced.contains(&i) {
            "fenced"
        } else if roles.primary == i {
            "primary"
        } else {
            "replica"
        })
    }

    /// The failover controller: observes the cluster every 500 ms and at
    /// every change of a child's state, and carries out what
    /// [`failover::decide`] says, until `stop` resolves. A failed action
    /// ends the round; the next round waits the supervisor's back-off
    /// (doubling while rounds keep failing).
    pub async fn control(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut events = self.supervisor.events();
        let backoff = Backoff::default();
        let mut retry_in: Option<Duration> = None;
        let mut silent_since: Option<Instant> = None;
        loop {
            let pause = retry_in.unwrap_or(TICK);
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(pause) => {}
                _ = events.changed(), if retry_in.is_none() => {}
            }
            let probed_at = Instant::now();
            let nodes = self.observe().await;
            let roles = self.roles();
            silent_since = match nodes[roles.primary].answers {
                true => None,
                false => Some(silent_since.unwrap_or(probed_at)),
            };
            let view = ClusterView {
                nodes,
                primary: roles.primary,
                primary_silent_for: silent_since.map(|t| t.elapsed()),
                failover_after: Duration::from_millis(self.config.failover_after_ms),
                synchronous: self.config.synchronous,
            };
            let mut failed = false;
            for action in failover::decide(&view) {
                if let Err(e) = self.apply(&action).await {
                    tracing::error!(?action, error = %format!("{e:#}"), "postgres controller: action failed; retrying");
                    failed = true;
                    break;
                }
                if matches!(action, Action::Promote(_)) {
                    silent_since = None;
                }
            }
            retry_in = failed.then(|| backoff.next(retry_in.unwrap_or(Duration::ZERO), Duration::ZERO));
        }
    }

    /// Holds node `name` down (with its site: `ctl site fail`) or releases
    /// it: a held node is neither restarted, rebuilt nor promoted, so its
    /// site stays down until restored. False when no node has that name.
    pub fn hold(&self, name: &str, held: bool) -> bool {
        if !self.nodes.iter().any(|n| n.name() == name) {
            return false;
        }
        let mut set = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held {
            set.insert(name.to_owned());
        } else {
            set.remove(name);
        }
        true
    }

    fn held_nodes(&self) -> std::collections::HashSet<String> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every node's state: its process from the supervisor, its probe, and
    /// whether it is fenced. The probes run concurrently (a hung node takes
    /// the whole probe deadline).
    async fn observe(self: &Arc<Self>) -> Vec<NodeState> {
        let mut running = tokio::task::JoinSet::new();
        for i in 0..self.nodes.len() {
            let me = self.clone();
            running.spawn(async move { (i, me.probe(i).await) });
        }
        let mut probes = vec![Probe::default(); self.nodes.len()];
        while let Some(done) = running.join_next().await {
            if let Ok((i, probe)) = done {
                probes[i] = probe;
            }
        }
        let roles = self.roles();
        let held = self.held_nodes();
        self.nodes
            .iter()
            .enumerate()
            .zip(probes)
            .map(|((i, node), probe)| {
                let process = match self.supervisor.status(node.name()).map(|s| s.state) {
                    Some(s) if s == "running" => Process::Running,
                    Some(s) if s == "down" => Process::Down,
                    Some(s) if s == "stopped" || s == "exited" => Process::Stopped,
                    _ => Process::Starting,
                };
                NodeState {
                    process,
                    answers: probe.answers && process == Process::Running,
                    received_lsn: probe.lsn,
                    fenced: roles.fenced.contains(&i),
                    held: held.contains(node.name()),
                }
            })
            .collect()
    }

    /// One probe of node `i`: whether, within 2 s, its postmaster takes a
    /// new session and its kept-open connection (opened if needed) answers,
    /// and the WAL position it has received (a replica) or written (a
    /// primary).
    async fn probe(&self, i: usize) -> Probe {
        let mut slot = self.probes[i].lock().await;
        let attempt = async {
            if slot.is_none() {
                let url = format!(
                    "postgres://{}@127.0.0.1:{}/{}",
                    engines::postgres::SUPERUSER,
                    self.nodes[i].port(),
                    engines::postgres::DATABASE
                );
                let options: sqlx::postgres::PgConnectOptions = url.parse().ok()?;
                *slot = Some(options.disable_statement_logging().connect().await.ok()?);
            }
            // The kept-open session is served by its own backend process,
            // which goes on answering when the postmaster hangs (SIGSTOP):
            // new sessions, which every pool needs, must be accepted too.
            if !accepts_sessions(self.nodes[i].port()).await {
                return None;
            }
            let conn = slot.as_mut()?;
            // COALESCE stops at the first non-null: a replica's received
            // position, else what it replayed, else a primary's own.
            let (lsn,): (Option<String>,) = sqlx::query_as(
                "SELECT coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text",
            )
            .fetch_one(conn)
            .await
            .ok()?;
            Some(lsn.as_deref().and_then(store_postgres::parse_lsn))
        };
        match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
            Ok(Some(lsn)) => Probe { answers: true, lsn },
            _ => {
                // Broken or hung: open a fresh one next time.
                if let Some(conn) = slot.take() {
                    drop(tokio::time::timeout(Duration::from_millis(100), conn.close()).await);
                }
                Probe::default()
            }
        }
    }

    async fn forget_probe(&self, i: usize) {
        self.probes[i].lock().await.take();
    }

    /// Carries out one action.
    async fn apply(&self, action: &Action) -> anyhow::Result<()> {
        let name = |i: usize| self.nodes[i].name();
        match *action {
            Action::Restart(i) => {
                tracing::warn!(node = name(i), "postgres node down; restarting");
                self.supervisor.resume(name(i))?;
            }
            Action::Fence(i) => self.fence(i).await?,
            Action::SetQuorum { node, ref standbys } => {
                let names: Vec<&str> = standbys.iter().map(|&i| name(i)).collect();
                self.nodes[node].set_synchronous_standbys(&quorum(&names)).await?;
            }
            Action::Promote(new) => {
                let old = self.roles().primary;
                tracing::warn!(
                    old = name(old),
                    new = name(new),
                    "primary unreachable: failing over"
                );
                self.nodes[new].promote().await?;
                self.edit_roles(|r| r.primary = new);
                std::fs::write(self.dir.join("primary"), format!("{}\n", name(new)))?;
                self.failovers.inc();
                tracing::warn!(primary = name(new), fenced = name(old), "failover done");
            }
            Action::Repoint { node, to } => {
                // A replica that cannot follow now is not fatal: it is
                // restarted or repointed again later.
                if let Err(e) = self.nodes[node].follow(&self.nodes[to]).await {
                    tracing::error!(node = name(node), error = %format!("{e:#}"), "replica cannot follow the new primary");
                }
            }
            Action::Rebuild { node, from } => {
                tracing::warn!(
                    node = name(node),
                    primary = name(from),
                    "rebuilding the fenced old primary as a replica"
                );
                self.forget_probe(node).await;
                self.nodes[node].rebuild_from(&self.nodes[from]).await?;
                self.edit_roles(|r| r.fenced.retain(|&f| f != node));
                self.supervisor.resume(name(node))?;
            }
        }
        Ok(())
    }

    /// Kills node `i` if it runs and keeps it down, then marks it a standby
    /// (fenced before anything else, so a crash of `up` mid-failover cannot
    /// bring it back as a primary).
    async fn fence(&self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        self.supervisor.kill(node.name(), Signal::SIGKILL)?;
        if let Some(pid) = node.pid() {
            // Hung, not dead: make sure it never answers again (a process
            // the supervisor did not start, after a restart of `up`).
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.pid().is_some() {
            anyhow::ensure!(Instant::now() < deadline, "{} does not die", node.name());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.forget_probe(i).await;
        let dir = node.data_dir();
        std::fs::write(dir.join("standby.signal"), "")
            .and_then(|()| std::fs::write(dir.join(FENCED_MARKER), "fenced by up after a failover\n"))
            .with_context(|| format!("fencing {}", node.name()))?;
        self.edit_roles(|r| {
            if !r.fenced.contains(&i) {
                r.fenced.push(i);
            }
        });
        Ok(())
    }
}

/// Whether the postmaster on 127.0.0.1:`port` takes a new session: it
/// answers an `SSLRequest` (`S` or `N`), which only a backend it forked for
/// the connection does. No session is opened, nothing is logged.
async fn accepts_sessions(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Length 8, then the SSLRequest code 80877103.
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(&SSL_REQUEST).await.is_err() {
        return false;
    }
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.is_ok() && matches!(&answer, b"S" | b"N")
}

/// Adds `node` to the supervisor as `component` and waits until it accepts
/// connections (and is ours).
async fn supervise(supervisor: &Supervisor, component: &Component, node: &Arc<PgNode>) -> anyhow::Result<()> {
    let launch = {
        let node = node.clone();
        Launch::Command(Arc::new(move || node.server_command()))
    };
    let spec = ChildSpec::new(component.clone(), launch).stopped_with(Signal::SIGINT, STOP_GRACE);
    supervisor.add(spec)?;
    if !component.ready.wait(START_TIMEOUT).await {
        anyhow::bail!(
            "postgres {} does not accept connections after {START_TIMEOUT:?}; {}",
            node.name(),
            node.log_excerpt()
        );
    }
    node.verify_serving().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_urls_and_options() {
        let c = ManagedPostgres::default();
        assert_eq!(c.names(), ["pg1", "pg2", "pg3"]);
        assert_eq!(c.urls()[2], "postgres://scalestack@127.0.0.1:6434/scalestack");
        assert_eq!(
            c.options(6432, &["pg2".into(), "pg3".into()])
                .synchronous_standbys,
            None,
            "asynchronous unless asked"
        );
        let sync = ManagedPostgres {
            synchronous: true,
            ..Default::default()
        };
        assert_eq!(
            sync.options(6432, &["pg2".into(), "pg3".into()])
                .synchronous_standbys
                .as_deref(),
            Some("ANY 1 (\"pg2\", \"pg3\")")
        );
    }
}
