//! The PostgreSQL cluster `up` runs itself (`[postgres]` in a topology): a
//! primary and N streaming replicas under `<data>/pg`, watched every half
//! second. A dead replica is restarted. A primary that is dead, or that
//! answers no query (hung, frozen), for longer than `failover_after_ms` is
//! replaced:
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

use anyhow::Context;
use engines::postgres::{PgNode, PgOptions};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
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
        }
    }
}

impl ManagedPostgres {
    /// Node names: `pg1` (the first primary), `pg2`, ...
    fn names(&self) -> Vec<String> {
        (1..=self.replicas + 1).map(|i| format!("pg{i}")).collect()
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

    /// Every node's address (for overlap checks).
    pub fn addrs(&self) -> Vec<std::net::SocketAddr> {
        (0..=self.replicas)
            .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], self.port + i as u16)))
            .collect()
    }

    fn options(&self, port: u16, standbys: &[String]) -> PgOptions {
        let mut o = PgOptions::new(port);
        if self.synchronous && !standbys.is_empty() {
            o.synchronous_standbys = Some(format!("ANY 1 ({})", standbys.join(", ")));
        }
        o
    }
}

/// Left in a fenced node's data directory until it is rebuilt.
const FENCED_MARKER: &str = "scalestack.fenced";

/// A running cluster.
pub struct PgCluster {
    config: ManagedPostgres,
    dir: PathBuf,
    nodes: Vec<PgNode>,
    primary: AtomicUsize,
    fenced: Mutex<Vec<usize>>,
}

impl PgCluster {
    /// Creates (first run) or reopens the cluster and starts every node.
    pub async fn start(config: &ManagedPostgres, data_dir: &Path) -> anyhow::Result<PgCluster> {
        let dir = data_dir.join("pg");
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
        let head = PgNode::init_primary(
            &names[primary],
            &dir.join(&names[primary]),
            &config.options(port(primary), &others),
        )
        .await
        .with_context(|| format!("preparing PostgreSQL node {}", names[primary]))?;
        head.start().await?;
        let mut nodes: Vec<Option<PgNode>> = (0..names.len()).map(|_| None).collect();
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
            let node = PgNode::init_replica(name, &node_dir, port(i), &head)
                .await
                .with_context(|| format!("preparing PostgreSQL replica {name}"))?;
            node.start().await?;
            nodes[i] = Some(node);
        }
        nodes[primary] = Some(head);
        std::fs::write(&state, format!("{primary_name}\n"))?;
        let nodes: Vec<PgNode> = nodes
            .into_iter()
            .map(|n| n.expect("every node prepared"))
            .collect();
        nodes[primary]
            .wait_for_standbys(config.replicas, Duration::from_secs(60))
            .await
            .context("waiting for the replicas to stream")?;
        tracing::info!(primary = %primary_name, replicas = config.replicas, "postgres cluster up");
        Ok(PgCluster {
            config: config.clone(),
            dir,
            nodes,
            primary: AtomicUsize::new(primary),
            fenced: Mutex::new(Vec::new()),
        })
    }

    fn is_fenced(&self, i: usize) -> bool {
        self.fenced.lock().unwrap_or_else(|e| e.into_inner()).contains(&i)
    }

    fn unfence(&self, i: usize) {
        self.fenced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&f| f != i);
    }

    /// Watches the cluster until `stop` resolves: restarts dead replicas,
    /// rebuilds a fenced old primary as a replica, fails over from a
    /// primary that is dead or unresponsive.
    pub async fn watch(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut primary_down_since: Option<Instant> = None;
        let failover_after = Duration::from_millis(self.config.failover_after_ms);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let primary = self.primary.load(Ordering::Relaxed);
            for (i, node) in self.nodes.iter().enumerate() {
                if i == primary || node.pid().is_some() {
                    continue;
                }
                if self.is_fenced(i) {
                    match self.rejoin(i, primary).await {
                        Ok(()) => self.unfence(i),
                        Err(e) => {
                            tracing::error!(node = node.name(), error = %e, "rebuilding the old primary failed")
                        }
                    }
                    continue;
                }
                tracing::warn!(node = node.name(), "postgres node down; restarting");
                if let Err(e) = node.start().await {
                    tracing::error!(node = node.name(), error = %e, "restart failed");
                }
            }
            let probed_at = Instant::now();
            if self.answers(primary).await {
                primary_down_since = None;
                continue;
            }
            let since = *primary_down_since.get_or_insert(probed_at);
            if since.elapsed() < failover_after {
                continue;
            }
            let Some(new) = self.most_advanced_replica(primary).await else {
                // Nothing to promote: the primary is the only copy.
                let node = &self.nodes[primary];
                if node.pid().is_none() {
                    tracing::warn!(
                        node = node.name(),
                        "primary down and no replica to promote; restarting it"
                    );
                    if let Err(e) = node.start().await {
                        tracing::error!(node = node.name(), error = %e, "restart failed");
                    }
                }
                continue;
            };
            match self.failover(primary, new).await {
                Ok(()) => primary_down_since = None,
                Err(e) => tracing::error!(error = %e, "failover failed; retrying"),
            }
        }
    }

    /// Whether node `i` runs and answers a query within 2 s.
    async fn answers(&self, i: usize) -> bool {
        let node = &self.nodes[i];
        node.pid().is_some()
            && matches!(
                tokio::time::timeout(Duration::from_secs(2), node.psql("SELECT 1")).await,
                Ok(Ok(_))
            )
    }

    /// The live, unfenced replica that has received the most WAL.
    async fn most_advanced_replica(&self, old: usize) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            if i == old || self.is_fenced(i) || node.pid().is_none() {
                continue;
            }
            // Received (flushed) rather than replayed: what a synchronous
            // commit waited for; promotion replays it all first.
            let lsn = node
                .psql("SELECT coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())")
                .await
                .ok()
                .and_then(|s| store_postgres::parse_lsn(&s))
                .unwrap_or(0);
            if best.is_none_or(|(b, _)| lsn > b) {
                best = Some((lsn, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Replaces primary `old` by replica `new` (see the module's steps).
    async fn failover(&self, old: usize, new: usize) -> anyhow::Result<()> {
        let old_node = &self.nodes[old];
        let promoted = &self.nodes[new];
        tracing::warn!(
            old = old_node.name(),
            new = promoted.name(),
            "primary unreachable: failing over"
        );
        if old_node.pid().is_some() {
            // Hung, not dead: make sure it never answers again.
            old_node.kill9()?;
        }
        // Fenced before anything else, so a crash of `up` mid-failover
        // cannot bring it back as a primary.
        let dir = old_node.data_dir();
        std::fs::write(dir.join("standby.signal"), "")
            .and_then(|()| std::fs::write(dir.join(FENCED_MARKER), "fenced by up after a failover\n"))
            .with_context(|| format!("fencing {}", old_node.name()))?;
        self.fenced.lock().unwrap_or_else(|e| e.into_inner()).push(old);
        if self.config.synchronous {
            let others: Vec<&str> = (0..self.nodes.len())
                .filter(|&i| i != new)
                .map(|i| self.nodes[i].name())
                .collect();
            promoted
                .set_synchronous_standbys(&format!("ANY 1 ({})", others.join(", ")))
                .await?;
        }
        promoted.promote().await?;
        self.primary.store(new, Ordering::Relaxed);
        std::fs::write(self.dir.join("primary"), format!("{}\n", promoted.name()))?;
        for i in (0..self.nodes.len()).filter(|&i| i != old && i != new && !self.is_fenced(i)) {
            if let Err(e) = self.nodes[i].follow(promoted).await {
                tracing::error!(node = self.nodes[i].name(), error = %e, "replica cannot follow the new primary");
            }
        }
        tracing::warn!(
            primary = promoted.name(),
            fenced = old_node.name(),
            "failover done"
        );
        Ok(())
    }

    /// Rebuilds fenced node `i` as a replica of `primary` and starts it.
    async fn rejoin(&self, i: usize, primary: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        tracing::warn!(
            node = node.name(),
            primary = self.nodes[primary].name(),
            "rebuilding the fenced old primary as a replica"
        );
        node.rebuild_from(&self.nodes[primary]).await?;
        node.start().await
    }

    /// Every node as `ctl ps` shows it: state `primary`, `replica`,
    /// `fenced` or `down`.
    pub fn ps(&self) -> Vec<crate::supervisor::ChildStatus> {
        let primary = self.primary.load(Ordering::Relaxed);
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let pid = node.pid();
                let state = match (pid, i == primary, self.is_fenced(i)) {
                    (None, _, _) => "down",
                    (_, _, true) => "fenced",
                    (_, true, _) => "primary",
                    _ => "replica",
                };
                crate::supervisor::ChildStatus {
                    name: node.name().to_owned(),
                    role: "postgres".into(),
                    addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], node.port()))),
                    state: state.into(),
                    pid,
                    restarts: 0,
                    since: None,
                }
            })
            .collect()
    }

    /// Sends `signal` to a node's postmaster (`ctl kill pg1`): the watcher
    /// then does what it does with any dead node (restart a replica, fail
    /// over from a primary). `None` if there is no such running node.
    pub fn kill(
        &self,
        name: &str,
        signal: nix::sys::signal::Signal,
    ) -> Option<crate::supervisor::ChildStatus> {
        let node = self.nodes.iter().find(|n| n.name() == name)?;
        let pid = node.pid()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).ok()?;
        tracing::warn!(node = name, ?signal, "postgres node signalled by the operator");
        self.ps().into_iter().find(|c| c.name == name)
    }

    /// Stops every node (fast shutdown).
    pub async fn stop(&self) {
        for node in &self.nodes {
            if let Err(e) = node.stop().await {
                tracing::warn!(node = node.name(), error = %e, "stopping postgres");
            }
        }
    }
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
            Some("ANY 1 (pg2, pg3)")
        );
    }
}
