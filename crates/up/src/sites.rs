//! Several sites (data centres) in one topology: `[[sites]]` and `[dns]`.
//!
//! A multi-site topology is the single-site one (its `[lb]`, `[web]`,
//! `[worker]`, `[cdn]`, `[redis]` sections are each site's) plus the sites,
//! each with a loopback address of its own, and the geoDNS servers in front
//! of them. It runs as:
//! - **one `up` per site** (`up --site NAME`, [`Topology::for_site`]): that
//!   site's load balancer, CDN edges, web servers, workers and Redis, on
//!   the site's address, with the database as an external engine whose
//!   nodes in the site take its reads first. This is also how one site is
//!   deployed on a machine of its own.
//! - **the shared tier**, run by the `up` without `--site`
//!   ([`Topology::shared_components`]): the PostgreSQL nodes, each placed
//!   in a site (`[postgres] sites`) so that a site's loss takes its nodes
//!   with it and the failover controller promotes one in another site; the
//!   name servers `ns1`, `ns2`, ... (one per site in turn); and every
//!   site's `up` as a child (`site-dc1`, ...).
//!
//! Engines bind 127.0.0.1 only: a site's Redis takes its own port
//! (`[redis] port` + 10 × the site's index), the database nodes theirs.
//! Everything the clients reach (the load balancer, the edges) is on the
//! site's address at the ports of the file, so `www` resolves to a site
//! and the port is the same everywhere.

use crate::component::{Bind, Component, Readiness, RestartPolicy};
use crate::role::Role;
use crate::supervisor::Launch;
use crate::topology::{CacheSection, QueueSection, Server, SqlSection, Topology};
use anyhow::Context;
use backends::BlobsTier;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

/// `[[sites]]`: one data centre.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteDef {
    /// Lower-case letters, digits and `-`: `dc1`.
    pub name: String,
    /// The site's own loopback address (127.0.1.1): its load balancer, CDN
    /// edges, web servers, workers and control API listen on it, at the
    /// file's ports.
    pub address: Ipv4Addr,
    /// The client networks whose nearest site this is (its region), e.g.
    /// `["127.0.1.0/24"]`; clients in none go to the first site's region.
    #[serde(default)]
    pub networks: Vec<String>,
}

/// `[dns]`: the geoDNS servers in front of the sites.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// The zone: `www.<zone>` is a site's load balancer, `cdn.<zone>` its
    /// first edge. Default `photos.test`.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// One name server per address (`ns1`, `ns2`, ...; UDP and TCP). At
    /// least two. Default 127.0.0.1:5353 and 127.0.0.2:5353.
    #[serde(default = "default_dns_listen")]
    pub listen: Vec<SocketAddr>,
    /// `ns1`'s admin address (`/metrics`, `/sites`); the others take the
    /// next ports. Default 127.0.0.1:8053.
    #[serde(default = "default_dns_admin")]
    pub admin_listen: SocketAddr,
    /// TTL of `www` and `cdn`, in seconds. Default 5.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// UDP threads per name server. Default 1.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Health checks of every site's load balancer (`/readyz` on its admin
    /// port).
    #[serde(default)]
    pub health: dns::config::HealthConfig,
    /// Response rate limiting.
    #[serde(default)]
    pub rrl: dns::config::RrlConfig,
}

fn default_zone() -> String {
    "photos.test".into()
}
fn default_dns_listen() -> Vec<SocketAddr> {
    vec![([127, 0, 0, 1], 5353).into(), ([127, 0, 0, 2], 5353).into()]
}
fn default_dns_admin() -> SocketAddr {
    ([127, 0, 0, 1], 8053).into()
}
fn default_ttl() -> u32 {
    5
}
fn default_threads() -> usize {
    1
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            zone: default_zone(),
            listen: default_dns_listen(),
            admin_listen: default_dns_admin(),
            ttl: default_ttl(),
            threads: default_threads(),
            health: Default::default(),
            rrl: Default::default(),
        }
    }
}

impl Topology {
    /// Whether the topology has several sites.
    pub fn is_multi_site(&self) -> bool {
        !self.sites.is_empty()
    }

    fn site_index(&self, name: &str) -> anyhow::Result<usize> {
        self.sites.iter().position(|s| s.name == name).with_context(|| {
            let names: Vec<&str> = self.sites.iter().map(|s| s.name.as_str()).collect();
            format!(
                "no site {name:?} in this topology (its sites: {})",
                names.join(", ")
            )
        })
    }

    /// The single-site topology of site `name`, as `up --site NAME` runs
    /// it: the file's site sections on the site's address, its Redis on a
    /// port of its own, its data under `<data>/sites/NAME`, the photos in
    /// the shared `<data>/blobs`, and the database as external nodes.
    pub fn for_site(&self, name: &str) -> anyhow::Result<Topology> {
        anyhow::ensure!(self.is_multi_site(), "--site needs a topology with [[sites]]");
        let index = self.site_index(name)?;
        let ip = IpAddr::V4(self.sites[index].address);
        let at = |a: SocketAddr| SocketAddr::new(ip, a.port());
        let mut t = self.clone();
        t.sites = Vec::new();
        t.dns = None;
        t.postgres.sites = Vec::new();
        t.site.name = name.to_owned();
        if let Some(lb) = &mut t.lb {
            lb.listen = at(lb.listen);
            lb.admin_listen = at(lb.admin_listen);
        }
        if let Some(cdn) = &mut t.cdn {
            cdn.listen = at(cdn.listen);
            cdn.admin_listen = at(cdn.admin_listen);
            cdn.origin = cdn.origin.map(at);
        }
        if let Some(logs) = &mut t.logs {
            logs.listen = at(logs.listen);
        }
        if let Some(p) = &mut t.prometheus {
            p.listen = at(p.listen);
            p.node_exporter = at(p.node_exporter);
        }
        t.web.listen = at(t.web.listen);
        t.worker.metrics_listen = at(t.worker.metrics_listen);
        t.control.listen = at(t.control.listen);
        t.redis.port += 10 * index as u16;
        if let CacheSection::Redis {
            server: Server::Managed,
            client,
        } = &mut t.cache
        {
            // Every other site's cache gets this site's invalidations.
            client.peers = (0..self.sites.len())
                .filter(|&j| j != index)
                .map(|j| format!("redis://127.0.0.1:{}", self.redis.port + 10 * j as u16))
                .collect();
        }
        t.data.dir = self.data.dir.join("sites").join(name);
        if let BlobsTier::Embedded { dir: None } = &t.blobs {
            t.blobs = BlobsTier::Embedded {
                dir: Some(self.data.dir.join("blobs")),
            };
        }
        if let SqlSection::Postgres {
            server: server @ Server::Managed,
            router,
        } = &mut t.sql
        {
            let urls = self.postgres.urls();
            // Reads stay in the site while one of its replicas can take them.
            router.local_nodes = urls
                .iter()
                .zip(&self.postgres.sites)
                .filter(|(_, site)| *site == name)
                .map(|(url, _)| url.clone())
                .collect();
            *server = Server::External(urls);
        }
        t.validate().map_err(|e| anyhow::anyhow!("site {name}: {e:#}"))?;
        Ok(t)
    }

    /// The processes the `up` without `--site` runs for a multi-site
    /// topology: the database nodes in their sites, the name servers, and
    /// every site's `up`.
    pub fn shared_components(&self) -> Vec<Component> {
        let mut all = Vec::new();
        let first = self.sites.first().map_or("local", |s| s.name.as_str());
        if self.needs_managed_postgres() {
            all.extend(self.postgres.components(first));
        }
        if let Some(dns) = &self.dns {
            for (i, &listen) in dns.listen.iter().enumerate() {
                let admin = SocketAddr::new(dns.admin_listen.ip(), dns.admin_listen.port() + i as u16);
                all.push(Component {
                    name: format!("ns{}", i + 1),
                    role: Role::Dns,
                    site: self.sites[i % self.sites.len()].name.clone(),
                    binds: vec![
                        Bind::udp(listen, "listen"),
                        Bind::tcp(listen, "listen"),
                        Bind::tcp(admin, "admin"),
                    ],
                    addr: Some(listen),
                    metrics: Some(admin),
                    ready: Readiness::Http {
                        addr: admin,
                        path: "/readyz",
                    },
                    // Started once the sites serve, so its first probes
                    // find them up and every region its own site at once.
                    depends_on: vec![Role::Site],
                    restart: RestartPolicy::Always,
                });
            }
        }
        for site in &self.sites {
            let Ok(t) = self.for_site(&site.name) else {
                continue;
            };
            let (addr, ready) = match &t.lb {
                Some(lb) => (lb.listen, lb.admin_listen),
                None => (t.web.listen, t.web.listen),
            };
            all.push(Component {
                name: format!("site-{}", site.name),
                role: Role::Site,
                site: site.name.clone(),
                binds: vec![Bind::tcp(t.control.listen, "control")],
                addr: Some(addr),
                metrics: Some(t.control.listen),
                ready: Readiness::Http {
                    addr: ready,
                    path: "/readyz",
                },
                depends_on: if self.needs_managed_postgres() {
                    vec![Role::Postgres]
                } else {
                    Vec::new()
                },
                restart: RestartPolicy::Always,
            });
        }
        all
    }

    /// What the shared `up` prints once every site serves.
    pub fn sites_banner(&self, data_dir: &Path) -> String {
        let mut lines = vec![format!(
            "scalestack is up: {} sites, data in {}",
            self.sites.len(),
            data_dir.display()
        )];
        if let Some(dns) = &self.dns {
            let servers: Vec<String> = dns.listen.iter().map(|l| l.to_string()).collect();
            lines.push(format!(
                "  www.{} and cdn.{} on name servers {}",
                dns.zone,
                dns.zone,
                servers.join(", ")
            ));
        }
        for s in &self.sites {
            if let Ok(t) = self.for_site(&s.name) {
                lines.push(format!(
                    "  {}: {}  (dashboard http://{})",
                    s.name,
                    t.public_url(),
                    t.control.listen
                ));
            }
        }
        lines.push(format!(
            "  shared: database, name servers, dashboard http://{}",
            self.control.listen
        ));
        lines.join("\n")
    }

    /// How the shared `up` starts site `name`'s `up`.
    pub fn site_launch(&self, name: &str, data_dir: &Path) -> anyhow::Result<Launch> {
        let source = self
            .source
            .as_ref()
            .context("a multi-site topology runs from a file (up --topology FILE)")?;
        Ok(Launch::Scalestack(vec![
            "up".into(),
            "--topology".into(),
            source.clone().into(),
            "--site".into(),
            name.into(),
            "--data-dir".into(),
            data_dir.into(),
        ]))
    }

    /// The configuration of name server `index` (0-based): every site's
    /// load balancer and first edge, each site's region its own networks
    /// with itself first and the others after, in file order.
    pub fn dns_config(&self, index: usize) -> Option<dns::DnsConfig> {
        let section = self.dns.as_ref()?;
        let listen = *section.listen.get(index)?;
        let sites = self
            .sites
            .iter()
            .filter_map(|s| {
                let t = self.for_site(&s.name).ok()?;
                Some(dns::config::SiteSpec {
                    name: s.name.clone(),
                    www: vec![IpAddr::V4(s.address)],
                    cdn: t.cdn.as_ref().map(|c| vec![c.listen.ip()]).unwrap_or_default(),
                    health: t.lb.as_ref().map(|lb| lb.admin_listen),
                })
            })
            .collect();
        let regions = self
            .sites
            .iter()
            .map(|s| dns::config::RegionSpec {
                name: s.name.clone(),
                networks: s.networks.clone(),
                sites: std::iter::once(s.name.clone())
                    .chain(
                        self.sites
                            .iter()
                            .filter(|o| o.name != s.name)
                            .map(|o| o.name.clone()),
                    )
                    .collect(),
            })
            .collect();
        Some(dns::DnsConfig {
            listen,
            admin_listen: SocketAddr::new(
                section.admin_listen.ip(),
                section.admin_listen.port() + index as u16,
            ),
            zone: section.zone.clone(),
            ttl: section.ttl,
            threads: section.threads,
            name_servers: section
                .listen
                .iter()
                .enumerate()
                .map(|(i, l)| dns::config::NameServerSpec {
                    name: format!("ns{}", i + 1),
                    addr: l.ip(),
                })
                .collect(),
            sites,
            regions,
            health: section.health.clone(),
            rrl: section.rrl.clone(),
            ..dns::DnsConfig::default()
        })
    }

    /// The multi-site checks: names, addresses, the name servers, where
    /// the database nodes are, and each site's own topology.
    pub(crate) fn validate_sites(&self) -> anyhow::Result<()> {
        if !self.is_multi_site() {
            anyhow::ensure!(self.dns.is_none(), "[dns] needs [[sites]] to send clients to");
            anyhow::ensure!(
                self.postgres.sites.is_empty(),
                "postgres.sites needs [[sites]] to place the nodes in"
            );
            return Ok(());
        }
        anyhow::ensure!(self.sites.len() <= 8, "at most 8 sites");
        for (i, s) in self.sites.iter().enumerate() {
            anyhow::ensure!(
                !s.name.is_empty()
                    && s.name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "site name {:?}: lower-case letters, digits and -",
                s.name
            );
            anyhow::ensure!(
                s.address.is_loopback(),
                "site {}: address {} is not a loopback address",
                s.name,
                s.address
            );
            for other in &self.sites[..i] {
                anyhow::ensure!(other.name != s.name, "site {} is defined twice", s.name);
                anyhow::ensure!(
                    other.address != s.address,
                    "sites {} and {} share the address {}",
                    other.name,
                    s.name,
                    s.address
                );
            }
            for n in &s.networks {
                n.parse::<dns::geo::Network>()
                    .map_err(|e| anyhow::anyhow!("site {}: {e}", s.name))?;
            }
        }
        anyhow::ensure!(
            !matches!(self.queue, QueueSection::Nats { server: Server::Managed, .. }),
            "a multi-site topology's queue is the SQL store's ([queue] kind = \"embedded\") or an external NATS: \
             a managed NATS per site would be a queue per site"
        );
        anyhow::ensure!(
            !matches!(self.sql, SqlSection::Embedded { .. }),
            "a multi-site topology needs a shared database: [sql] kind = \"postgres\""
        );
        for site in &self.postgres.sites {
            self.site_index(site)
                .map_err(|e| anyhow::anyhow!("postgres.sites: {e}"))?;
        }
        if self.needs_managed_postgres() {
            anyhow::ensure!(
                self.postgres.sets <= 1,
                "a multi-site topology runs one replica set (sharding across sites is not built)"
            );
            anyhow::ensure!(
                self.postgres.sites.is_empty() || self.postgres.sites.len() == self.postgres.replicas + 1,
                "postgres.sites names {} sites for {} nodes",
                self.postgres.sites.len(),
                self.postgres.replicas + 1
            );
        }
        if let Some(dns) = &self.dns {
            anyhow::ensure!(
                dns.listen.len() >= 2,
                "[dns] needs at least two name servers (listen = [...])"
            );
            for i in 0..dns.listen.len() {
                let config = self.dns_config(i).expect("a [dns] section");
                config.validate().map_err(|e| anyhow::anyhow!("[dns]: {e}"))?;
            }
        }
        for s in &self.sites {
            self.for_site(&s.name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &str = include_str!("../../../topologies/multi-dc.toml");

    #[test]
    fn the_multi_dc_file_runs_two_sites_behind_two_name_servers() {
        let t = Topology::parse(MULTI).unwrap();
        let shared = t.shared_components();
        let names: Vec<(&str, &str)> = shared
            .iter()
            .map(|c| (c.name.as_str(), c.site.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("pg1", "dc1"),
                ("pg2", "dc2"),
                ("pg3", "dc2"),
                ("ns1", "dc1"),
                ("ns2", "dc2"),
                ("site-dc1", "dc1"),
                ("site-dc2", "dc2")
            ]
        );
        let dc2 = t.for_site("dc2").unwrap();
        let lb = dc2.lb.as_ref().unwrap();
        assert_eq!(lb.listen, "127.0.2.1:8080".parse().unwrap());
        assert_eq!(dc2.control.listen, "127.0.2.1:8090".parse().unwrap());
        assert_eq!(dc2.redis.port, t.redis.port + 10);
        let CacheSection::Redis { client, .. } = &dc2.cache else {
            panic!("a Redis cache")
        };
        assert_eq!(
            client.peers,
            [format!("redis://127.0.0.1:{}", t.redis.port)],
            "dc1's cache hears dc2's deletes"
        );
        assert!(dc2.components().iter().all(|c| c.site == "dc2"));
        assert!(
            dc2.components().iter().all(|c| c.role != Role::Postgres),
            "the database is shared"
        );
        let SqlSection::Postgres {
            server: Server::External(nodes),
            ..
        } = &dc2.sql
        else {
            panic!("the database is external to a site")
        };
        assert_eq!(nodes, &t.postgres.urls());
        let SqlSection::Postgres { router, .. } = &dc2.sql else {
            unreachable!()
        };
        assert_eq!(
            router.local_nodes,
            t.postgres.urls()[1..],
            "pg2 and pg3 are dc2's"
        );
        let config = t.dns_config(1).unwrap();
        assert_eq!(config.listen, "127.0.0.2:5353".parse().unwrap());
        assert_eq!(config.sites[1].www, [IpAddr::from([127, 0, 2, 1])]);
        assert_eq!(config.sites[1].health, Some("127.0.2.1:8091".parse().unwrap()));
        assert_eq!(config.regions[1].sites, ["dc2", "dc1"]);
        assert!(t
            .for_site("dc9")
            .unwrap_err()
            .to_string()
            .contains("no site \"dc9\""));
    }

    #[test]
    fn multi_site_mistakes_are_refused() {
        let bad = |edit: &str, expected: &str| {
            let text = format!("{MULTI}\n{edit}");
            let e = Topology::parse(&text).map(|_| ()).unwrap_err();
            assert!(format!("{e:#}").contains(expected), "{edit}: {e:#}");
        };
        bad(
            "[[sites]]\nname = \"dc1\"\naddress = \"127.0.3.1\"",
            "site dc1 is defined twice",
        );
        bad(
            "[[sites]]\nname = \"dc3\"\naddress = \"10.0.0.1\"",
            "not a loopback address",
        );
        bad(
            "[[sites]]\nname = \"dc3\"\naddress = \"127.0.3.1\"\nnetworks = [\"127.0.3.1/24\"]",
            "host bits",
        );
        let one_ns = MULTI.replace(
            "listen = [\"127.0.0.1:5353\", \"127.0.0.2:5353\"]",
            "listen = [\"127.0.0.1:5353\"]",
        );
        assert!(Topology::parse(&one_ns).is_err());
        let sites = MULTI.replace(
            "sites = [\"dc1\", \"dc2\", \"dc2\"]",
            "sites = [\"dc1\", \"dc2\"]",
        );
        assert!(format!("{:#}", Topology::parse(&sites).unwrap_err()).contains("names 2 sites for 3 nodes"));
    }
}
