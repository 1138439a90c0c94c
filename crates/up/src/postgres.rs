//! The PostgreSQL cluster `up` runs itself (`[postgres]` in a topology): a
//! primary and N streaming replicas under `<data>/pg`, watched every half
//! second. A dead replica is restarted. A primary unreachable for longer
//! than `failover_after_ms` is replaced: the most advanced replica is
//! promoted, the others follow it, and the old primary is **fenced**: a
//! `standby.signal` is written into its data directory before it is started
//! again, so it comes back read-only, in recovery, on an old timeline, and
//! the web servers' routers (which find the primary by asking every node)
//! never send it a write.
//!
//! The name of the current primary is kept in `<data>/pg/primary`, so a
//! restarted `up` brings the cluster back as it left it.

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
    /// How long the primary may be unreachable before a replica is
    /// promoted. Default 3000.
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
            let node = PgNode::init_replica(name, &dir.join(name), port(i), &head)
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

    /// Watches the cluster until `stop` resolves: restarts dead replicas,
    /// fails over from a dead primary.
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
                if i != primary && node.pid().is_none() {
                    tracing::warn!(
                        node = node.name(),
                        fenced = self.is_fenced(i),
                        "postgres node down; restarting"
                    );
                    if let Err(e) = node.start().await {
                        tracing::error!(node = node.name(), error = %e, "restart failed");
                    }
                }
            }
            if self.nodes[primary].pid().is_some() {
                primary_down_since = None;
                continue;
            }
            let since = *primary_down_since.get_or_insert_with(Instant::now);
            if since.elapsed() < failover_after {
                continue;
            }
            match self.failover(primary).await {
                Ok(()) => primary_down_since = None,
                Err(e) => tracing::error!(error = %e, "failover failed; retrying"),
            }
        }
    }

    /// Promotes the most advanced live replica, points the others at it,
    /// fences the old primary.
    async fn failover(&self, old: usize) -> anyhow::Result<()> {
        let mut best: Option<(u64, usize)> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            if i == old || self.is_fenced(i) || node.pid().is_none() {
                continue;
            }
            let lsn = node
                .psql("SELECT pg_last_wal_replay_lsn()")
                .await
                .ok()
                .and_then(|s| store_postgres::parse_lsn(&s))
                .unwrap_or(0);
            if best.is_none_or(|(b, _)| lsn > b) {
                best = Some((lsn, i));
            }
        }
        let (_, new) = best.context("no live replica to promote")?;
        let promoted = &self.nodes[new];
        tracing::warn!(
            old = self.nodes[old].name(),
            new = promoted.name(),
            "primary unreachable: failing over"
        );
        promoted.promote().await?;
        let followers: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| i != old && i != new && !self.is_fenced(i))
            .collect();
        for &i in &followers {
            if let Err(e) = self.nodes[i].follow(promoted).await {
                tracing::error!(node = self.nodes[i].name(), error = %e, "replica cannot follow the new primary");
            }
        }
        if self.config.synchronous {
            let names: Vec<&str> = followers.iter().map(|&i| self.nodes[i].name()).collect();
            let value = if names.is_empty() {
                String::new()
            } else {
                format!("ANY 1 ({})", names.join(", "))
            };
            promoted
                .psql(&format!(
                    "ALTER SYSTEM SET synchronous_standby_names = '{value}'; SELECT pg_reload_conf()"
                ))
                .await?;
        }
        // Fence: if the old primary runs again, it runs as a standby.
        let signal = self.nodes[old].data_dir().join("standby.signal");
        std::fs::write(&signal, "").with_context(|| format!("fencing {}", self.nodes[old].name()))?;
        self.fenced.lock().unwrap_or_else(|e| e.into_inner()).push(old);
        self.primary.store(new, Ordering::Relaxed);
        std::fs::write(self.dir.join("primary"), format!("{}\n", promoted.name()))?;
        tracing::warn!(
            primary = promoted.name(),
            fenced = self.nodes[old].name(),
            "failover done"
        );
        Ok(())
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
