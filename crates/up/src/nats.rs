//! The NATS JetStream servers `up` runs (`[nats]`) when `[queue] kind =
//! "nats"` has no `url`: one node, or a cluster of three (or five) whose
//! streams keep a copy on every node, each node a supervised child with its
//! store under `<data>/nats/`.

use crate::component::{Bind, Component, Readiness, RestartPolicy};
use crate::supervisor::Launch;
use crate::Role;
use anyhow::Context;
use engines::nats::{ClusterConf, NatsConf, SyncPolicy};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// `[nats]`: the servers `up` runs for the queue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedNats {
    /// Nodes: 1, 3 or 5 (a cluster needs a majority: an odd count). With
    /// more than one, the queue's streams are replicated on every node
    /// unless `[queue] replicas` says otherwise. Default 1.
    #[serde(default = "default_nodes")]
    pub nodes: usize,
    /// Client port of `nats-1` on 127.0.0.1; node N takes port + N - 1.
    /// Default 4230 (not NATS's usual 4222, which a system NATS may hold).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Route port of `nats-1` (cluster traffic), same rule. Default 6230.
    #[serde(default = "default_cluster_port")]
    pub cluster_port: u16,
    /// Monitoring port of `nats-1` (`/healthz`, `/varz`, `/jsz`), same
    /// rule; `up` waits on `/healthz`. Default 8230.
    #[serde(default = "default_monitor_port")]
    pub monitor_port: u16,
    /// When JetStream syncs to disk before acknowledging: `default` (the
    /// server's schedule, every two minutes: a machine crash can lose
    /// acknowledged jobs; a crash of the server alone cannot) or `always`
    /// (fsync before every acknowledgement). Default `default`.
    #[serde(default)]
    pub sync: SyncPolicy,
}

fn default_nodes() -> usize {
    1
}
fn default_port() -> u16 {
    4230
}
fn default_cluster_port() -> u16 {
    6230
}
fn default_monitor_port() -> u16 {
    8230
}

impl Default for ManagedNats {
    fn default() -> Self {
        ManagedNats {
            nodes: default_nodes(),
            port: default_port(),
            cluster_port: default_cluster_port(),
            monitor_port: default_monitor_port(),
            sync: SyncPolicy::default(),
        }
    }
}

impl ManagedNats {
    /// Refuses counts and ports that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            matches!(self.nodes, 1 | 3 | 5),
            "nats.nodes = {}: use 1, 3 or 5 (a cluster needs a majority)",
            self.nodes
        );
        for (key, port) in [
            ("nats.port", self.port),
            ("nats.cluster_port", self.cluster_port),
            ("nats.monitor_port", self.monitor_port),
        ] {
            anyhow::ensure!(
                port != 0 && port as usize + self.nodes <= 65536,
                "{key} = {port}: nodes need {} ports from a fixed one",
                self.nodes
            );
        }
        Ok(())
    }

    fn addr(port: u16, index: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port + index as u16))
    }

    /// `nats-{index + 1}`.
    fn name(index: usize) -> String {
        format!("nats-{}", index + 1)
    }

    /// Every node's client URL, comma-separated (the clients fail over
    /// between them).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = (0..self.nodes)
            .map(|i| format!("nats://{}", Self::addr(self.port, i)))
            .collect();
        urls.join(",")
    }

    /// One component per node, restarted by the supervisor (its stream
    /// copies catch up from the others), ready when `/healthz` says
    /// JetStream serves.
    pub fn components(&self, site: &str) -> Vec<Component> {
        (0..self.nodes)
            .map(|i| {
                let client = Self::addr(self.port, i);
                let monitor = Self::addr(self.monitor_port, i);
                let mut binds = vec![Bind::tcp(client, "client"), Bind::tcp(monitor, "monitor")];
                if self.nodes > 1 {
                    binds.push(Bind::tcp(Self::addr(self.cluster_port, i), "cluster"));
                }
                Component {
                    name: Self::name(i),
                    role: Role::Nats,
                    site: site.into(),
                    binds,
                    addr: Some(client),
                    metrics: None,
                    ready: Readiness::Http {
                        addr: monitor,
                        path: "/healthz",
                    },
                    depends_on: Vec::new(),
                    restart: RestartPolicy::Always,
                }
            })
            .collect()
    }

    /// The configuration of node `name` (`nats-N`), written under
    /// `<data>/nats/`, and the installed `nats-server` to run with it.
    pub fn launch(&self, name: &str, data_dir: &Path) -> anyhow::Result<Launch> {
        let index = (0..self.nodes)
            .find(|&i| Self::name(i) == name)
            .with_context(|| format!("{name} is no nats node"))?;
        let dir = data_dir.join("nats");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cluster = (self.nodes > 1).then(|| ClusterConf {
            name: "scalestack".into(),
            port: self.cluster_port + index as u16,
            routes: (0..self.nodes).map(|i| self.cluster_port + i as u16).collect(),
        });
        let conf = NatsConf {
            name: name.into(),
            port: self.port + index as u16,
            store_dir: dir.join(format!("{name}-js")),
            log_file: dir.join(format!("{name}.log")),
            sync: self.sync,
            cluster,
        };
        let mut text = engines::nats::server_conf(&conf);
        text.push_str(&format!("http: \"{}\"\n", Self::addr(self.monitor_port, index)));
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(Launch::Program {
            program: engines::nats::locate_server()?,
            args: vec!["-c".into(), path.into()],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_nodes_are_a_cluster_on_consecutive_ports() {
        let n = ManagedNats {
            nodes: 3,
            ..Default::default()
        };
        n.validate().unwrap();
        assert_eq!(
            n.urls(),
            "nats://127.0.0.1:4230,nats://127.0.0.1:4231,nats://127.0.0.1:4232"
        );
        let c = n.components("local");
        assert_eq!(c.len(), 3);
        assert_eq!(c[2].name, "nats-3");
        assert_eq!(c[2].binds.len(), 3);
        let dir = tempfile::tempdir().unwrap();
        let Launch::Program { args, .. } = n.launch("nats-2", dir.path()).unwrap() else {
            panic!("a program")
        };
        let conf = std::fs::read_to_string(&args[1]).unwrap();
        assert!(conf.contains("listen: \"127.0.0.1:4231\""), "{conf}");
        assert!(conf.contains("nats-route://127.0.0.1:6232"), "{conf}");
        assert!(conf.contains("http: \"127.0.0.1:8231\""), "{conf}");
        assert!(n.launch("nats-4", dir.path()).is_err());
    }

    #[test]
    fn bad_counts_and_ports_are_refused() {
        for (n, key) in [
            (
                ManagedNats {
                    nodes: 2,
                    ..Default::default()
                },
                "nats.nodes",
            ),
            (
                ManagedNats {
                    port: 0,
                    ..Default::default()
                },
                "nats.port",
            ),
            (
                ManagedNats {
                    nodes: 3,
                    monitor_port: 65535,
                    ..Default::default()
                },
                "nats.monitor_port",
            ),
        ] {
            let e = n.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let one = ManagedNats::default().components("s");
        assert_eq!(one[0].binds.len(), 2, "a single node has no route port");
    }
}
