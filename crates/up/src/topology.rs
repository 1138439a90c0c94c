//! The topology file: how many of each role, where they listen, and per tier
//! which backend serves it. Sections map one to one to the boxes of the
//! seed's diagrams, so later tiers (lb, cdn, dns, managed engines) are new
//! sections or new `kind`s, never a new format.

use app::{WebConfig, WebSettings};
use backends::{BackendsConfig, BlobsTier, CacheTier, QueueTier, SessionsTier, SqlTier};
use lb::LbConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use worker::{WorkerConfig, WorkerSettings};

/// A whole deployment on this machine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub web: WebTier,
    #[serde(default)]
    pub worker: WorkerTier,
    #[serde(default)]
    pub sql: SqlTier,
    #[serde(default)]
    pub cache: CacheTier,
    #[serde(default)]
    pub sessions: SessionsTier,
    #[serde(default)]
    pub queue: QueueTier,
    #[serde(default)]
    pub blobs: BlobsTier,
    /// `[lb]`: a load balancer in front of the web tier. Absent: the first
    /// web server is the public address (the single-server stage).
    #[serde(default)]
    pub lb: Option<LbConfig>,
    #[serde(default)]
    pub control: ControlSection,
    /// `[redis]`: the Redis `up` starts when a tier is `kind = "redis"`
    /// without a `url`.
    #[serde(default)]
    pub redis: ManagedRedis,
    /// `[postgres]`: the cluster `up` runs when `[sql] kind = "postgres"`
    /// has no `nodes`.
    #[serde(default)]
    pub postgres: crate::postgres::ManagedPostgres,
}

/// `[redis]`: a Redis server started and supervised by `up` (a cache: no
/// persistence), under `<data>/redis`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedRedis {
    /// Port on 127.0.0.1. Default 6390 (not Redis's usual 6379, which a
    /// system Redis may hold).
    #[serde(default = "default_redis_port")]
    pub port: u16,
}

fn default_redis_port() -> u16 {
    6390
}

impl Default for ManagedRedis {
    fn default() -> Self {
        ManagedRedis {
            port: default_redis_port(),
        }
    }
}

impl ManagedRedis {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// `[control]`: the orchestrator's dashboard and control API (`ctl`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Default 127.0.0.1:8090; keep it on loopback.
    #[serde(default = "default_control_listen")]
    pub listen: SocketAddr,
}

fn default_control_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8090))
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection {
            listen: default_control_listen(),
        }
    }
}

/// `[data]`: where embedded state lives.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Default `./data`, relative to the working directory of `up`.
    #[serde(default = "default_data_dir")]
    pub dir: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            dir: default_data_dir(),
        }
    }
}

/// `[web]`: the stateless web tier.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "toml::Table")]
pub struct WebTier {
    /// Copies to run. Default 1.
    pub count: usize,
    /// Address of the first copy; copy `n` listens on port + n. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// Every other key of the section.
    pub settings: WebSettings,
}

/// `[worker]`: job consumers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "toml::Table")]
pub struct WorkerTier {
    /// Copies to run. Default 1.
    pub count: usize,
    /// Metrics address of the first copy; copy `n` uses port + n. Default 127.0.0.1:9201.
    pub metrics_listen: SocketAddr,
    /// Every other key of the section.
    pub settings: WorkerSettings,
}

/// Splits a role section into its `count`, its address key and the
/// role's own settings. (`#[serde(flatten)]` would do this but silently
/// drops unknown keys; here they reach the settings' `deny_unknown_fields`.)
fn split_role<S: serde::de::DeserializeOwned>(
    mut table: toml::Table,
    addr_key: &str,
    default_addr: SocketAddr,
) -> Result<(usize, SocketAddr, S), String> {
    let count = match table.remove("count") {
        None => 1,
        Some(v) => v
            .as_integer()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("count must be a non-negative integer, not {v}"))?,
    };
    let addr = match table.remove(addr_key) {
        None => default_addr,
        Some(v) => v
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{addr_key} must be an \"ip:port\" string, not {v}"))?,
    };
    let settings = toml::Value::Table(table)
        .try_into::<S>()
        .map_err(|e| e.to_string())?;
    Ok((count, addr, settings))
}

impl TryFrom<toml::Table> for WebTier {
    type Error = String;
    fn try_from(t: toml::Table) -> Result<Self, String> {
        let (count, listen, settings) = split_role(t, "listen", default_web_listen())?;
        Ok(WebTier {
            count,
            listen,
            settings,
        })
    }
}

impl TryFrom<toml::Table> for WorkerTier {
    type Error = String;
    fn try_from(t: toml::Table) -> Result<Self, String> {
        let (count, metrics_listen, settings) = split_role(t, "metrics_listen", default_worker_listen())?;
        Ok(WorkerTier {
            count,
            metrics_listen,
            settings,
        })
    }
}
fn default_web_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_worker_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9201))
}

impl Default for WebTier {
    fn default() -> Self {
        WebTier {
            count: 1,
            listen: default_web_listen(),
            settings: WebSettings::default(),
        }
    }
}

impl Default for WorkerTier {
    fn default() -> Self {
        WorkerTier {
            count: 1,
            metrics_listen: default_worker_listen(),
            settings: WorkerSettings::default(),
        }
    }
}

/// The address of copy `index` (0-based) of a tier starting at `first`.
pub fn nth(first: SocketAddr, index: usize) -> SocketAddr {
    let mut a = first;
    a.set_port(first.port() + index as u16);
    a
}

impl Topology {
    /// Parses and checks a topology file's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let t: Topology = toml::from_str(text).map_err(|e| anyhow::anyhow!("invalid topology: {e}"))?;
        t.validate()?;
        Ok(t)
    }

    /// Reads a topology file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read topology {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.web.count >= 1, "web.count must be at least 1");
        anyhow::ensure!(
            self.web.count <= 64 && self.worker.count <= 64,
            "at most 64 copies of a role"
        );
        for (name, first, count) in [
            ("web.listen", self.web.listen, self.web.count),
            (
                "worker.metrics_listen",
                self.worker.metrics_listen,
                self.worker.count,
            ),
        ] {
            anyhow::ensure!(
                first.port() == 0 || first.port() as usize + count <= 65536,
                "{name}: ports run past 65535"
            );
            anyhow::ensure!(
                count <= 1 || first.port() != 0,
                "{name}: port 0 only with count = 1"
            );
        }
        anyhow::ensure!(
            self.worker.settings.max_pixels >= self.web.settings.max_pixels,
            "worker.max_pixels ({}) is below web.max_pixels ({}): uploads the web tier accepts would \
             fail in the worker; raise worker.max_pixels too",
            self.worker.settings.max_pixels,
            self.web.settings.max_pixels
        );
        let web: Vec<_> = self.web_addrs().collect();
        let workers: Vec<_> = (0..self.worker.count)
            .map(|i| nth(self.worker.metrics_listen, i))
            .collect();
        anyhow::ensure!(
            !web.iter().any(|a| a.port() != 0 && workers.contains(a)),
            "web and worker addresses overlap"
        );
        let mut singles = vec![("control.listen", self.control.listen)];
        if self.needs_managed_redis() {
            singles.push(("redis.port", self.redis.addr()));
        }
        if self.needs_managed_postgres() {
            anyhow::ensure!(self.postgres.replicas <= 8, "postgres.replicas must be 0 to 8");
            singles.extend(self.postgres.addrs().into_iter().map(|a| ("postgres.port", a)));
        }
        if let Some(lb) = &self.lb {
            anyhow::ensure!(
                lb.backends.is_empty(),
                "lb.backends is not set by hand: the web servers of [web] are the backends"
            );
            lb.validate().map_err(|e| anyhow::anyhow!("[lb]: {e}"))?;
            singles.push(("lb.listen", lb.listen));
            singles.push(("lb.admin_listen", lb.admin_listen));
        }
        for (i, (name, addr)) in singles.iter().enumerate() {
            let clash = web.contains(addr)
                || workers.contains(addr)
                || singles[..i].iter().any(|(_, other)| other == addr);
            anyhow::ensure!(
                addr.port() == 0 || !clash,
                "{name} {addr} overlaps another address"
            );
        }
        Ok(())
    }

    /// Whether `up` must start a Redis: a Redis tier without a `url`.
    pub fn needs_managed_redis(&self) -> bool {
        matches!(&self.cache, CacheTier::Redis(t) if t.url.is_none())
            || matches!(&self.sessions, SessionsTier::Redis(t) if t.url.is_none())
    }

    /// Whether `up` must run a PostgreSQL cluster.
    pub fn needs_managed_postgres(&self) -> bool {
        matches!(&self.sql, SqlTier::Postgres(t) if t.nodes.is_empty())
    }

    /// Where the shared tiers live, with the data directory resolved and
    /// managed engines' addresses filled in.
    pub fn backends(&self, data_dir: &Path) -> BackendsConfig {
        let managed = format!("redis://{}", self.redis.addr());
        let mut cache = self.cache.clone();
        if let CacheTier::Redis(t) = &mut cache {
            t.url.get_or_insert_with(|| managed.clone());
        }
        let mut sessions = self.sessions.clone();
        if let SessionsTier::Redis(t) = &mut sessions {
            t.url.get_or_insert(managed);
        }
        let mut sql = self.sql.clone();
        if let SqlTier::Postgres(t) = &mut sql {
            if t.nodes.is_empty() {
                t.nodes = self.postgres.urls();
            }
        }
        BackendsConfig {
            data_dir: data_dir.to_path_buf(),
            sql,
            cache,
            sessions,
            queue: self.queue.clone(),
            blobs: self.blobs.clone(),
        }
    }

    /// Listen addresses of the web copies.
    pub fn web_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        (0..self.web.count).map(|i| nth(self.web.listen, i))
    }

    /// The address users open: the load balancer's, or the web server's.
    pub fn public_url(&self) -> String {
        match &self.lb {
            Some(lb) => format!("http://{}", lb.listen),
            None => format!("http://{}", self.web.listen),
        }
    }

    /// The configuration of the load balancer, with the web servers as
    /// backends.
    pub fn lb_config(&self) -> Option<LbConfig> {
        let mut c = self.lb.clone()?;
        c.backends = self
            .web_addrs()
            .map(|addr| lb::BackendSpec { addr, weight: 1 })
            .collect();
        Some(c)
    }

    /// The configuration of web copy `index` (0-based).
    pub fn web_config(&self, index: usize, backends: &BackendsConfig) -> (String, WebConfig) {
        (
            format!("web-{}", index + 1),
            WebConfig {
                listen: nth(self.web.listen, index),
                settings: self.web.settings.clone(),
                backends: backends.clone(),
            },
        )
    }

    /// The configuration of worker copy `index` (0-based).
    pub fn worker_config(&self, index: usize, backends: &BackendsConfig) -> (String, WorkerConfig) {
        (
            format!("worker-{}", index + 1),
            WorkerConfig {
                metrics_listen: nth(self.worker.metrics_listen, index),
                settings: self.worker.settings.clone(),
                backends: backends.clone(),
            },
        )
    }

    /// Name and configuration of every web copy.
    pub fn web_configs(&self, backends: &BackendsConfig) -> Vec<(String, WebConfig)> {
        (0..self.web.count)
            .map(|i| self.web_config(i, backends))
            .collect()
    }

    /// Name and configuration of every worker copy.
    pub fn worker_configs(&self, backends: &BackendsConfig) -> Vec<(String, WorkerConfig)> {
        (0..self.worker.count)
            .map(|i| self.worker_config(i, backends))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_single_server_file_is_the_format_default() {
        let text = include_str!("../../../topologies/single-server.toml");
        let t = Topology::parse(text).unwrap();
        assert_eq!(t, Topology::parse("").unwrap());
        assert_eq!(t.public_url(), "http://127.0.0.1:8080");
        assert_eq!(t.web_configs(&t.backends(Path::new("/d"))).len(), 1);
        assert!(t.lb_config().is_none());
    }

    #[test]
    fn the_worker_decodes_whatever_the_web_tier_accepts() {
        let e = Topology::parse("[web]\nmax_pixels = 50000000").unwrap_err();
        assert!(e.to_string().contains("worker.max_pixels"), "{e}");
        Topology::parse("[web]\nmax_pixels = 50000000\n[worker]\nmax_pixels = 50000000").unwrap();
    }

    #[test]
    fn a_redis_tier_without_url_is_managed_by_up() {
        let t = Topology::parse("[cache]\nkind = \"redis\"").unwrap();
        assert!(t.needs_managed_redis());
        let b = t.backends(Path::new("/d"));
        assert!(matches!(b.cache, CacheTier::Redis(r) if r.url.as_deref() == Some("redis://127.0.0.1:6390")));
        let t = Topology::parse("[cache]\nkind = \"redis\"\nurl = \"redis://10.0.0.5:6379\"").unwrap();
        assert!(!t.needs_managed_redis());
    }

    #[test]
    fn a_postgres_tier_without_nodes_is_run_by_up() {
        let t = Topology::parse("[sql]\nkind = \"postgres\"\n[postgres]\nreplicas = 1").unwrap();
        assert!(t.needs_managed_postgres());
        let b = t.backends(Path::new("/d"));
        let SqlTier::Postgres(pg) = b.sql else {
            panic!("postgres")
        };
        assert_eq!(pg.nodes.len(), 2);
        assert!(Topology::parse(
            "[sql]\nkind = \"postgres\"\n[postgres]\nport = 9101\n[web]\nlisten = \"127.0.0.1:9102\""
        )
        .is_err());
    }

    #[test]
    fn the_replicated_file_runs_postgres_and_redis_under_up() {
        let t = Topology::parse(include_str!("../../../topologies/replicated.toml")).unwrap();
        assert!(t.needs_managed_postgres() && t.needs_managed_redis());
        assert_eq!((t.web.count, t.worker.count, t.postgres.replicas), (3, 1, 2));
        assert!(t.lb_config().is_some());
        let b = t.backends(Path::new("/d"));
        let SqlTier::Postgres(pg) = b.sql else {
            panic!("postgres")
        };
        let ports: Vec<_> = pg
            .nodes
            .iter()
            .map(|n| n.rsplit(':').next().unwrap().to_owned())
            .collect();
        assert_eq!(ports, ["6432/scalestack", "6433/scalestack", "6434/scalestack"]);
        assert!(matches!(b.cache, CacheTier::Redis(_)));
        assert!(matches!(b.sessions, backends::SessionsTier::Redis(_)));
    }

    #[test]
    fn external_engines_are_used_as_given() {
        let t = Topology::parse(
            "[sql]\nkind = \"postgres\"\nnodes = [\"postgres://db1:5432/app\", \"postgres://db2:5432/app\"]\n\
             [cache]\nkind = \"redis\"\nurl = \"redis://cache:6379\"\n\
             [sessions]\nkind = \"redis\"\nurl = \"redis://sessions:6379\"",
        )
        .unwrap();
        assert!(!t.needs_managed_postgres() && !t.needs_managed_redis());
        let b = t.backends(Path::new("/d"));
        let SqlTier::Postgres(pg) = b.sql else {
            panic!("postgres")
        };
        assert_eq!(pg.nodes, ["postgres://db1:5432/app", "postgres://db2:5432/app"]);
        assert!(matches!(b.cache, CacheTier::Redis(r) if r.url.as_deref() == Some("redis://cache:6379")));
        assert!(
            matches!(b.sessions, backends::SessionsTier::Redis(r) if r.url.as_deref() == Some("redis://sessions:6379"))
        );
    }

    #[test]
    fn the_default_is_the_web_tier_behind_the_lb() {
        let t = Topology::parse(crate::DEFAULT_TOPOLOGY).unwrap();
        assert_eq!(t.public_url(), "http://127.0.0.1:8080");
        let lb = t.lb_config().unwrap();
        let ports: Vec<_> = lb.backends.iter().map(|b| b.addr.port()).collect();
        assert_eq!(ports, [9101, 9102, 9103]);
        assert_eq!(lb.admin_listen.port(), 8091);
        assert_eq!(t.control.listen.port(), 8090);
    }

    #[test]
    fn copies_take_consecutive_ports() {
        let t =
            Topology::parse("[web]\ncount = 3\nlisten = \"127.0.0.1:9101\"\n[worker]\ncount = 2").unwrap();
        let web: Vec<_> = t.web_addrs().map(|a| a.port()).collect();
        assert_eq!(web, [9101, 9102, 9103]);
        let names: Vec<_> = t
            .worker_configs(&t.backends(Path::new("/d")))
            .into_iter()
            .map(|(n, c)| (n, c.metrics_listen.port()))
            .collect();
        assert_eq!(
            names,
            [("worker-1".to_string(), 9201), ("worker-2".to_string(), 9202)]
        );
    }

    #[test]
    fn bad_topologies_are_refused_with_a_reason() {
        for (text, needle) in [
            ("[web]\ncount = 0", "web.count"),
            ("[web]\nlisten = \"nowhere\"", "listen"),
            ("[web]\nmax_body_bytez = 1", "max_body_bytez"),
            ("[cache]\nkind = \"embedded\"\npolicy = \"mru\"", "mru"),
            ("[sql]\nkind = \"oracle\"", "oracle"),
            ("[lb2]\n", "lb2"),
            ("[worker]\nconcurency = 2", "concurency"),
            ("[web]\ncount = -1", "count"),
            ("[cache]\nkind = \"embedded\"\nmax_byte = 5", "max_byte"),
            ("[queue]\nkind = \"embedded\"\nmax_attempt = 5", "max_attempt"),
            ("[web]\nlisten = \"127.0.0.1:9201\"", "overlap"),
            ("[web]\ncount = 2\nlisten = \"127.0.0.1:0\"", "port 0"),
            ("[lb]\nalgorithm = \"random\"", "random"),
            ("[lb]\n[[lb.backends]]\naddr = \"127.0.0.1:1\"", "lb.backends"),
            ("[lb]\nlisten = \"127.0.0.1:8080\"", "overlaps"),
            ("[lb]\n[lb.health]\nfall = 0", "fall"),
            ("[control]\nlisten = \"127.0.0.1:9201\"", "overlaps"),
            ("[cache]\nkind = \"redis\"\n[redis]\nport = 8090", "overlaps"),
            ("[cache]\nkind = \"redis\"\nnear_ttl = 5", "near_ttl"),
            ("[redis]\nlisten = 5", "listen"),
        ] {
            let e = Topology::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} gave {e:?}");
        }
    }
}
