//! The router's configuration, as read from the topology file, and the
//! redaction that keeps the nodes' passwords out of every log line.

use domain::consistency::ReplicaSetId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Configuration of a [`super::PgRouter`]. Deserialised from the topology
/// file; every field but `nodes` has a default.
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
    /// The replica set these nodes form: the key of the read-your-writes
    /// floor this router reads and raises, and a label of its metrics.
    /// Default [`ReplicaSetId::DEFAULT`] (`default`); a sharded tier names
    /// one per shard.
    #[serde(default)]
    pub replica_set: ReplicaSetId,
    /// The nodes in this process's own site (some of `nodes`): reads go to
    /// them first, to the others only when none of them can take the read.
    /// Default none (every replica alike).
    #[serde(default)]
    pub local: Vec<String>,
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
            replica_set: ReplicaSetId::DEFAULT,
            local: Vec::new(),
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
            .field("replica_set", &self.replica_set.as_str())
            .field("local", &self.local.iter().map(|u| redact(u)).collect::<Vec<_>>())
            .finish()
    }
}

/// `url` without its password (`postgres://user:secret@host/db` becomes
/// `postgres://user@host/db`; a `password=` parameter is dropped).
pub(super) fn redact(url: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.replica_set, ReplicaSetId::DEFAULT);
        let c: RouterConfig =
            serde_json::from_str(r#"{"nodes": ["postgres://a@h/db"], "replica_set": "eu-1"}"#).unwrap();
        assert_eq!(c.replica_set.as_str(), "eu-1");
        assert!(
            serde_json::from_str::<RouterConfig>(r#"{"nodes": [], "replica_set": "EU 1"}"#).is_err(),
            "a replica set's name is checked"
        );
        assert!(serde_json::from_str::<RouterConfig>(r#"{"nodes": [], "lag": 5}"#).is_err());
        assert!(
            serde_json::from_str::<RouterConfig>(r#"{}"#).is_err(),
            "nodes are required"
        );
    }
}
