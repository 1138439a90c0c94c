//! The roles of a topology's processes: one variant per kind of box in the
//! seed's diagrams, so every decision about a role is a `match` the compiler
//! checks, not a string compared in several places.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::RangeInclusive;

/// What a process of a topology is. Serialised in lower case (`"web"`), as
/// `ctl ps` and the control API show it.
///
/// A new tier (the DNS and NATS nodes to come) is a new variant here,
/// a section of the topology model that declares its components
/// (`topology::Tier`), and the way its process is launched (`lib.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A CDN edge: the shared HTTP cache in front of the origin (the load
    /// balancer, or the web server without one).
    Cdn,
    /// The HTTP load balancer in front of the web tier.
    Lb,
    /// A stateless web server.
    Web,
    /// A job consumer.
    Worker,
    /// A node of the PostgreSQL cluster `up` runs.
    Postgres,
    /// The Redis `up` runs.
    Redis,
    /// A node of the NATS JetStream servers `up` runs (the queue's broker).
    Nats,
    /// An authoritative geoDNS server in front of the sites.
    Dns,
    /// A whole site's `up` (`up --site NAME`), run by the multi-site `up`.
    Site,
    /// The Prometheus `up` runs (`[prometheus]`).
    Prometheus,
    /// The node exporter beside it: the machine's CPU, memory, disks, network.
    #[serde(rename = "node-exporter")]
    NodeExporter,
    /// The log collector (rsyslog) `up` runs (`[logs]`).
    Logs,
}

impl Role {
    /// Every role, in the order `ctl ps` groups them.
    pub const ALL: [Role; 12] = [
        Role::Site,
        Role::Dns,
        Role::Cdn,
        Role::Lb,
        Role::Web,
        Role::Worker,
        Role::Postgres,
        Role::Redis,
        Role::Nats,
        Role::Prometheus,
        Role::NodeExporter,
        Role::Logs,
    ];

    /// The name used in the topology file, `ctl` and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Cdn => "cdn",
            Role::Lb => "lb",
            Role::Web => "web",
            Role::Worker => "worker",
            Role::Postgres => "postgres",
            Role::Redis => "redis",
            Role::Nats => "nats",
            Role::Dns => "dns",
            Role::Site => "site",
            Role::Prometheus => "prometheus",
            Role::NodeExporter => "node-exporter",
            Role::Logs => "logs",
        }
    }

    /// The role named `name`, if any.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// How many copies `ctl scale` may ask for; `None`: not scalable at
    /// runtime. The web tier keeps at least one server (it is the public
    /// address without a load balancer); workers may go to zero. CDN edges
    /// are independent caches with their own public addresses (one per
    /// site), so their count is the topology's, not scaled.
    pub fn scale_range(self) -> Option<RangeInclusive<usize>> {
        match self {
            Role::Web => Some(1..=MAX_COPIES),
            Role::Worker => Some(0..=MAX_COPIES),
            Role::Cdn
            | Role::Lb
            | Role::Postgres
            | Role::Redis
            | Role::Nats
            | Role::Dns
            | Role::Site
            | Role::Prometheus
            | Role::NodeExporter
            | Role::Logs => None,
        }
    }

    /// Whether it is an engine the application tiers use (started, and
    /// ready, before the migrations run).
    pub fn is_engine(self) -> bool {
        matches!(self, Role::Postgres | Role::Redis | Role::Nats)
    }

    /// The roles `ctl scale` accepts, for error messages.
    pub fn scalable() -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(|r| r.scale_range().is_some())
    }
}

/// The most copies of one role. Default and only value: 64.
pub const MAX_COPIES: usize = 64;

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` honours widths, for `ctl ps`'s columns.
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_serialise_in_lower_case() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(
                serde_json::to_string(&role).unwrap(),
                format!("\"{}\"", role.as_str())
            );
        }
        assert_eq!(Role::parse("db"), None);
        assert_eq!(Role::parse("cdn"), Some(Role::Cdn));
        assert_eq!(format!("{:<6}|", Role::Web), "web   |");
    }

    #[test]
    fn only_web_and_worker_scale() {
        let scalable: Vec<_> = Role::scalable().collect();
        assert_eq!(scalable, [Role::Web, Role::Worker]);
        assert_eq!(Role::Web.scale_range(), Some(1..=64));
        assert_eq!(Role::Worker.scale_range(), Some(0..=64));
        assert_eq!(Role::Cdn.scale_range(), None);
        assert!(!Role::Cdn.is_engine());
    }
}
