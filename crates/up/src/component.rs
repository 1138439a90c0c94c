//! Components: every process of a topology declared with what the
//! orchestrator needs to know about it (the ports it binds, where its
//! metrics are, how to tell it is ready, what it depends on, who restarts
//! it), so clashes, start and stop order and the Prometheus target list are
//! derived from the declarations instead of lists kept by hand.

use crate::role::Role;
use serde::Serialize;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// A transport a port is bound on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    /// The DNS servers'.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One address a component listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bind {
    pub proto: Proto,
    pub addr: SocketAddr,
    /// What it is for (`listen`, `admin`, `metrics`, ...), for error messages.
    pub purpose: &'static str,
}

impl Bind {
    /// A TCP listener.
    pub fn tcp(addr: SocketAddr, purpose: &'static str) -> Bind {
        Bind {
            proto: Proto::Tcp,
            addr,
            purpose,
        }
    }

    /// A UDP port (a DNS server's).
    pub fn udp(addr: SocketAddr, purpose: &'static str) -> Bind {
        Bind {
            proto: Proto::Udp,
            addr,
            purpose,
        }
    }

    /// Whether two binds cannot both succeed: same transport and port, and
    /// the same address or one of them on every address. Port 0 (a port the
    /// kernel picks) never clashes.
    pub fn overlaps(&self, other: &Bind) -> bool {
        self.proto == other.proto
            && self.addr.port() != 0
            && self.addr.port() == other.addr.port()
            && (self.addr.ip() == other.addr.ip()
                || self.addr.ip().is_unspecified()
                || other.addr.ip().is_unspecified())
    }
}

impl fmt::Display for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.purpose, self.addr, self.proto)
    }
}

/// How the orchestrator tells that a component is ready for traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// `GET path` on `addr` answers 200.
    Http { addr: SocketAddr, path: &'static str },
    /// `addr` accepts TCP connections.
    Tcp(SocketAddr),
    /// A PostgreSQL node at `url` answers a query.
    Postgres { url: String },
}

impl Readiness {
    /// One check, at most 2 s.
    pub async fn check(&self) -> bool {
        match self {
            Readiness::Http { addr, path } => crate::http_ok(*addr, path).await,
            Readiness::Tcp(addr) => matches!(
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            ),
            Readiness::Postgres { url } => {
                let probe = async {
                    let pool = store_postgres::connect(url, 1).await.ok()?;
                    let answered = sqlx::query("SELECT 1").execute(&pool).await.is_ok();
                    pool.close().await;
                    Some(answered)
                };
                tokio::time::timeout(Duration::from_secs(2), probe)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(false)
            }
        }
    }

    /// Polls [`Self::check`] until it passes (true) or `limit` runs out.
    pub async fn wait(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.check().await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Who brings a component back when its process ends unplanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// The supervisor, with its back-off.
    Always,
    /// A controller decides (a PostgreSQL node: a dead primary is failed
    /// over, not restarted); the supervisor waits for its word, then applies
    /// the same back-off.
    ByController,
}

/// One process of a topology, as declared by its tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// Unique in the topology: `web-1`, `worker-2`, `pg1`, `redis`, `lb`.
    pub name: String,
    pub role: Role,
    /// The site (data centre) it runs in; one site today.
    pub site: String,
    /// Every address it binds.
    pub binds: Vec<Bind>,
    /// The address `ctl ps` shows (the one it serves on).
    pub addr: Option<SocketAddr>,
    /// Where Prometheus scrapes its `/metrics`; `None`: it has none (the
    /// engines, which would need an exporter).
    pub metrics: Option<SocketAddr>,
    pub ready: Readiness,
    /// Roles that must be ready before it starts (and that stop after it).
    pub depends_on: Vec<Role>,
    pub restart: RestartPolicy,
}

/// Two components that want the same port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{first} ({first_bind}) overlaps {second} ({second_bind})")]
pub struct PortClash {
    pub first: String,
    pub first_bind: Bind,
    pub second: String,
    pub second_bind: Bind,
}

/// Finds the first pair of binds that overlap, among `owned` (owner name,
/// bind) pairs; a component's own binds are checked against each other too.
pub fn find_clash<'a>(owned: impl IntoIterator<Item = (&'a str, Bind)>) -> Result<(), Box<PortClash>> {
    let all: Vec<(&str, Bind)> = owned.into_iter().collect();
    for (i, (first, a)) in all.iter().enumerate() {
        if let Some((second, b)) = all[i + 1..].iter().find(|(_, b)| a.overlaps(b)) {
            return Err(Box::new(PortClash {
                first: first.to_string(),
                first_bind: *a,
                second: second.to_string(),
                second_bind: *b,
            }));
        }
    }
    Ok(())
}

/// Every bind of `components`, with its owner's name.
pub fn binds_of(components: &[Component]) -> impl Iterator<Item = (&str, Bind)> {
    components
        .iter()
        .flat_map(|c| c.binds.iter().map(move |b| (c.name.as_str(), *b)))
}

/// Start order: `components`' roles grouped in levels, each level depending
/// only on earlier ones (engines first, the load balancer last). Stop order
/// is the reverse. Dependencies on roles absent from `components` are
/// ignored; a cycle puts the rest in one last level.
pub fn start_levels(components: &[Component]) -> Vec<Vec<Role>> {
    let mut roles: Vec<Role> = components.iter().map(|c| c.role).collect();
    roles.sort();
    roles.dedup();
    let deps = |r: Role| -> Vec<Role> {
        let mut d: Vec<Role> = components
            .iter()
            .filter(|c| c.role == r)
            .flat_map(|c| c.depends_on.iter().copied())
            .filter(|d| roles.contains(d) && *d != r)
            .collect();
        d.dedup();
        d
    };
    let mut placed: Vec<Role> = Vec::new();
    let mut levels = Vec::new();
    while placed.len() < roles.len() {
        let level: Vec<Role> = roles
            .iter()
            .copied()
            .filter(|r| !placed.contains(r) && deps(*r).iter().all(|d| placed.contains(d)))
            .collect();
        let level = if level.is_empty() {
            roles.iter().copied().filter(|r| !placed.contains(r)).collect()
        } else {
            level
        };
        placed.extend(&level);
        levels.push(level);
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn component(name: &str, role: Role, binds: Vec<Bind>, depends_on: Vec<Role>) -> Component {
        Component {
            name: name.into(),
            role,
            site: "local".into(),
            addr: binds.first().map(|b| b.addr),
            binds,
            metrics: None,
            ready: Readiness::Tcp(addr("127.0.0.1:1")),
            depends_on,
            restart: RestartPolicy::Always,
        }
    }

    #[test]
    fn binds_overlap_on_the_same_port_and_transport() {
        let a = Bind::tcp(addr("127.0.0.1:80"), "listen");
        assert!(a.overlaps(&Bind::tcp(addr("127.0.0.1:80"), "admin")));
        assert!(
            a.overlaps(&Bind::tcp(addr("0.0.0.0:80"), "admin")),
            "every address"
        );
        assert!(!a.overlaps(&Bind::tcp(addr("127.0.0.2:80"), "admin")));
        assert!(!a.overlaps(&Bind::tcp(addr("127.0.0.1:81"), "admin")));
        let udp = Bind {
            proto: Proto::Udp,
            ..a
        };
        assert!(!a.overlaps(&udp), "a DNS server takes udp and tcp 53");
        let zero = Bind::tcp(addr("127.0.0.1:0"), "listen");
        assert!(!zero.overlaps(&zero), "the kernel picks distinct ports");
    }

    #[test]
    fn a_clash_names_both_components_and_their_binds() {
        let cs = vec![
            component(
                "web-1",
                Role::Web,
                vec![Bind::tcp(addr("127.0.0.1:9101"), "listen")],
                vec![],
            ),
            component(
                "lb",
                Role::Lb,
                vec![
                    Bind::tcp(addr("127.0.0.1:8080"), "listen"),
                    Bind::tcp(addr("127.0.0.1:9101"), "admin"),
                ],
                vec![],
            ),
        ];
        let e = find_clash(binds_of(&cs)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "web-1 (listen 127.0.0.1:9101/tcp) overlaps lb (admin 127.0.0.1:9101/tcp)"
        );
        find_clash(binds_of(&cs[..1])).unwrap();
    }

    #[test]
    fn levels_follow_the_declared_dependencies() {
        let cs = vec![
            component("lb", Role::Lb, vec![], vec![Role::Web]),
            component("web-1", Role::Web, vec![], vec![Role::Postgres, Role::Redis]),
            component("worker-1", Role::Worker, vec![], vec![Role::Postgres]),
            component("pg1", Role::Postgres, vec![], vec![]),
            component("redis", Role::Redis, vec![], vec![]),
        ];
        assert_eq!(
            start_levels(&cs),
            [
                vec![Role::Postgres, Role::Redis],
                vec![Role::Web, Role::Worker],
                vec![Role::Lb]
            ]
        );
        // Absent dependencies are ignored: the single-server stage.
        assert_eq!(start_levels(&cs[1..3]), [vec![Role::Web, Role::Worker]]);
        // A cycle still starts everything.
        let cycle = vec![
            component("web-1", Role::Web, vec![], vec![Role::Worker]),
            component("worker-1", Role::Worker, vec![], vec![Role::Web]),
        ];
        assert_eq!(start_levels(&cycle), [vec![Role::Web, Role::Worker]]);
    }
}
