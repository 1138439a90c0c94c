//! The topology file's **model**: how many of each role, where they listen,
//! and per tier which backend serves it, as the file says it ("the
//! PostgreSQL cluster `up` runs"). Sections map one to one to the boxes of
//! the seed's diagrams, so later tiers (cdn, dns, nats) are new sections or
//! new `kind`s, never a new format.
//!
//! Two things are derived from the model, never written by hand:
//! - the **components** (every process, with its ports, readiness and
//!   dependencies: [`Topology::components`]), from which port clashes are
//!   found;
//! - the **resolved** configuration handed to children
//!   ([`Topology::resolve`] → `backends::BackendsConfig`), in which every
//!   engine is an address.

use crate::component::{self, Bind, Component, Readiness, RestartPolicy};
use crate::role::{Role, MAX_COPIES};
use app::{WebConfig, WebSettings};
use backends::{
    BackendsConfig, BlobsTier, CacheTier, PostgresTier, QueueTier, RedisCacheTier, RedisSessionsTier,
    SessionsTier, SqlTier,
};
use lb::LbConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use worker::{WorkerConfig, WorkerSettings};

/// A whole deployment on this machine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// `[site]`: where this topology runs. One site today.
    #[serde(default)]
    pub site: SiteSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub web: WebTier,
    #[serde(default)]
    pub worker: WorkerTier,
    #[serde(default)]
    pub sql: SqlSection,
    #[serde(default)]
    pub cache: CacheSection,
    #[serde(default)]
    pub sessions: SessionsSection,
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

/// `[site]`: the site (data centre) a topology's components run in. Every
/// component carries its site as a label (`ctl ps`, the Prometheus target
/// list); the multi-site issue adds several.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// Lower-case letters, digits, `-` and `_`. Default `local`.
    #[serde(default = "default_site")]
    pub name: String,
}

fn default_site() -> String {
    "local".into()
}

impl Default for SiteSection {
    fn default() -> Self {
        SiteSection { name: default_site() }
    }
}

/// Where an engine a tier uses runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Server<A> {
    /// The one `up` starts and supervises (`[postgres]`, `[redis]`).
    Managed,
    /// One that runs elsewhere, at these addresses.
    External(A),
}

/// `[sql]` as the file says it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "SqlTier")]
pub enum SqlSection {
    /// SQLite; `path` defaults to `<data>/scalestack.db`.
    Embedded { path: Option<PathBuf> },
    /// PostgreSQL: the nodes (`nodes = [...]`, or the cluster `up` runs when
    /// absent) and the routers' settings (whose `nodes` is always empty
    /// here: where the nodes are is `server`).
    Postgres {
        server: Server<Vec<String>>,
        router: PostgresTier,
    },
}

impl Default for SqlSection {
    fn default() -> Self {
        SqlSection::Embedded { path: None }
    }
}

impl From<SqlTier> for SqlSection {
    fn from(t: SqlTier) -> Self {
        match t {
            SqlTier::Embedded { path } => SqlSection::Embedded { path },
            SqlTier::Postgres(mut router) => SqlSection::Postgres {
                server: match std::mem::take(&mut router.nodes) {
                    nodes if nodes.is_empty() => Server::Managed,
                    nodes => Server::External(nodes),
                },
                router,
            },
        }
    }
}

/// `[cache]` as the file says it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "CacheTier")]
pub enum CacheSection {
    /// In-process in every web server (`CacheTier::Embedded`).
    Embedded(CacheTier),
    /// Redis (`url = ...`, or the one `up` runs when absent) and the
    /// client's settings (whose `url` is always `None` here).
    Redis {
        server: Server<String>,
        client: RedisCacheTier,
    },
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection::Embedded(CacheTier::default())
    }
}

impl From<CacheTier> for CacheSection {
    fn from(t: CacheTier) -> Self {
        match t {
            CacheTier::Redis(mut client) => CacheSection::Redis {
                server: client.url.take().map_or(Server::Managed, Server::External),
                client,
            },
            embedded => CacheSection::Embedded(embedded),
        }
    }
}

/// `[sessions]` as the file says it.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(from = "SessionsTier")]
pub enum SessionsSection {
    /// A table of the SQL store.
    #[default]
    Embedded,
    /// Redis in front of that table (`url`, or the Redis `up` runs), and the
    /// client's settings (whose `url` is always `None` here).
    Redis {
        server: Server<String>,
        client: RedisSessionsTier,
    },
}

impl From<SessionsTier> for SessionsSection {
    fn from(t: SessionsTier) -> Self {
        match t {
            SessionsTier::Embedded => SessionsSection::Embedded,
            SessionsTier::Redis(mut client) => SessionsSection::Redis {
                server: client.url.take().map_or(Server::Managed, Server::External),
                client,
            },
        }
    }
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
    /// Where it listens: 127.0.0.1:`port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its one process, `redis`, restarted by the supervisor (a cache: it
    /// comes back empty).
    pub fn component(&self, site: &str) -> Component {
        Component {
            name: "redis".into(),
            role: Role::Redis,
            site: site.into(),
            binds: vec![Bind::tcp(self.addr(), "listen")],
            addr: Some(self.addr()),
            metrics: None,
            ready: Readiness::Tcp(self.addr()),
            depends_on: Vec::new(),
            restart: RestartPolicy::Always,
        }
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
        let site = &self.site.name;
        anyhow::ensure!(
            !site.is_empty()
                && site
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'),
            "site.name {site:?}: use lower-case letters, digits, '-' or '_'"
        );
        anyhow::ensure!(self.web.count >= 1, "web.count must be at least 1");
        anyhow::ensure!(
            self.web.count <= MAX_COPIES && self.worker.count <= MAX_COPIES,
            "at most {MAX_COPIES} copies of a role"
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
        if self.needs_managed_postgres() {
            anyhow::ensure!(self.postgres.replicas <= 8, "postgres.replicas must be 0 to 8");
        }
        if let Some(lb) = &self.lb {
            anyhow::ensure!(
                lb.backends.is_empty(),
                "lb.backends is not set by hand: the web servers of [web] are the backends"
            );
            lb.validate().map_err(|e| anyhow::anyhow!("[lb]: {e}"))?;
        }
        let components = self.components();
        component::find_clash(self.control_binds().chain(component::binds_of(&components)))?;
        Ok(())
    }

    /// The binds of `up` itself (its control API), owned by `up`.
    pub fn control_binds<'a>(&self) -> std::iter::Once<(&'a str, Bind)> {
        std::iter::once(("up", Bind::tcp(self.control.listen, "control")))
    }

    /// Whether `up` must start a Redis: a Redis tier without a `url`.
    pub fn needs_managed_redis(&self) -> bool {
        matches!(
            &self.cache,
            CacheSection::Redis {
                server: Server::Managed,
                ..
            }
        ) || matches!(
            &self.sessions,
            SessionsSection::Redis {
                server: Server::Managed,
                ..
            }
        )
    }

    /// Whether `up` must run a PostgreSQL cluster.
    pub fn needs_managed_postgres(&self) -> bool {
        matches!(
            &self.sql,
            SqlSection::Postgres {
                server: Server::Managed,
                ..
            }
        )
    }

    /// The configuration children get: the model with the data directory
    /// resolved and every managed engine replaced by its address.
    pub fn resolve(&self, data_dir: &Path) -> BackendsConfig {
        let managed_redis = || format!("redis://{}", self.redis.addr());
        let redis_url = |server: &Server<String>| match server {
            Server::Managed => managed_redis(),
            Server::External(url) => url.clone(),
        };
        let sql = match &self.sql {
            SqlSection::Embedded { path } => SqlTier::Embedded { path: path.clone() },
            SqlSection::Postgres { server, router } => SqlTier::Postgres(PostgresTier {
                nodes: match server {
                    Server::Managed => self.postgres.urls(),
                    Server::External(nodes) => nodes.clone(),
                },
                ..router.clone()
            }),
        };
        let cache = match &self.cache {
            CacheSection::Embedded(tier) => tier.clone(),
            CacheSection::Redis { server, client } => CacheTier::Redis(RedisCacheTier {
                url: Some(redis_url(server)),
                ..client.clone()
            }),
        };
        let sessions = match &self.sessions {
            SessionsSection::Embedded => SessionsTier::Embedded,
            SessionsSection::Redis { server, client } => SessionsTier::Redis(RedisSessionsTier {
                url: Some(redis_url(server)),
                ..client.clone()
            }),
        };
        BackendsConfig {
            data_dir: data_dir.to_path_buf(),
            sql,
            cache,
            sessions,
            queue: self.queue.clone(),
            blobs: self.blobs.clone(),
        }
    }

    /// The engines `up` runs for this topology, which the application
    /// tiers depend on.
    fn managed_engines(&self) -> Vec<Role> {
        let mut engines = Vec::new();
        if self.needs_managed_postgres() {
            engines.push(Role::Postgres);
        }
        if self.needs_managed_redis() {
            engines.push(Role::Redis);
        }
        engines
    }

    /// Every process of the topology at its configured counts, as its tier
    /// declares it.
    pub fn components(&self) -> Vec<Component> {
        let mut all = Vec::new();
        if self.needs_managed_postgres() {
            all.extend(self.postgres.components(&self.site.name));
        }
        if self.needs_managed_redis() {
            all.push(self.redis.component(&self.site.name));
        }
        all.extend((0..self.web.count).filter_map(|i| self.copy(Role::Web, i)));
        all.extend((0..self.worker.count).filter_map(|i| self.copy(Role::Worker, i)));
        if let Some(lb) = &self.lb {
            all.push(Component {
                name: "lb".into(),
                role: Role::Lb,
                site: self.site.name.clone(),
                binds: vec![
                    Bind::tcp(lb.listen, "listen"),
                    Bind::tcp(lb.admin_listen, "admin"),
                ],
                addr: Some(lb.listen),
                metrics: Some(lb.admin_listen),
                ready: Readiness::Http {
                    addr: lb.listen,
                    path: "/readyz",
                },
                depends_on: vec![Role::Web],
                restart: RestartPolicy::Always,
            });
        }
        all
    }

    /// Copy `index` (0-based) of a role that runs in copies (`web`,
    /// `worker`); `None` for the others.
    pub fn copy(&self, role: Role, index: usize) -> Option<Component> {
        let (name, addr, purpose) = match role {
            Role::Web => (
                format!("web-{}", index + 1),
                nth(self.web.listen, index),
                "listen",
            ),
            Role::Worker => (
                format!("worker-{}", index + 1),
                nth(self.worker.metrics_listen, index),
                "metrics",
            ),
            Role::Lb | Role::Postgres | Role::Redis => return None,
        };
        Some(Component {
            name,
            role,
            site: self.site.name.clone(),
            binds: vec![Bind::tcp(addr, purpose)],
            addr: Some(addr),
            // The web servers serve /metrics beside the application.
            metrics: Some(addr),
            ready: Readiness::Http {
                addr,
                path: "/readyz",
            },
            depends_on: self.managed_engines(),
            restart: RestartPolicy::Always,
        })
    }

    /// The first address copies of `role` take, and whether copy `count - 1`
    /// still has a port.
    pub fn copies_fit(&self, role: Role, count: usize) -> bool {
        let first = match role {
            Role::Web => self.web.listen,
            Role::Worker => self.worker.metrics_listen,
            _ => return false,
        };
        first.port() as usize + count <= 65536
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
        assert_eq!(t.web_configs(&t.resolve(Path::new("/d"))).len(), 1);
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
        let b = t.resolve(Path::new("/d"));
        assert!(matches!(b.cache, CacheTier::Redis(r) if r.url.as_deref() == Some("redis://127.0.0.1:6390")));
        let t = Topology::parse("[cache]\nkind = \"redis\"\nurl = \"redis://10.0.0.5:6379\"").unwrap();
        assert!(!t.needs_managed_redis());
    }

    #[test]
    fn a_postgres_tier_without_nodes_is_run_by_up() {
        let t = Topology::parse("[sql]\nkind = \"postgres\"\n[postgres]\nreplicas = 1").unwrap();
        assert!(t.needs_managed_postgres());
        let b = t.resolve(Path::new("/d"));
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
        let b = t.resolve(Path::new("/d"));
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
        let b = t.resolve(Path::new("/d"));
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
            .worker_configs(&t.resolve(Path::new("/d")))
            .into_iter()
            .map(|(n, c)| (n, c.metrics_listen.port()))
            .collect();
        assert_eq!(
            names,
            [("worker-1".to_string(), 9201), ("worker-2".to_string(), 9202)]
        );
    }

    #[test]
    fn every_topology_file_of_today_loads_into_components() {
        let files = [
            (
                "single-server",
                include_str!("../../../topologies/single-server.toml"),
            ),
            ("web-tier", include_str!("../../../topologies/web-tier.toml")),
            ("replicated", include_str!("../../../topologies/replicated.toml")),
            ("default", crate::DEFAULT_TOPOLOGY),
        ];
        for (file, text) in files {
            let t = Topology::parse(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            let names: Vec<String> = t.components().into_iter().map(|c| c.name).collect();
            let expected: &[&str] = match file {
                "single-server" => &["web-1", "worker-1"],
                "replicated" => &[
                    "pg1", "pg2", "pg3", "redis", "web-1", "web-2", "web-3", "worker-1", "lb",
                ],
                _ => &["web-1", "web-2", "web-3", "worker-1", "lb"],
            };
            assert_eq!(names, expected, "{file}");
            assert!(
                t.components().iter().all(|c| c.site == "local"),
                "{file}: one site"
            );
        }
    }

    #[test]
    fn components_declare_ports_readiness_and_dependencies() {
        let t = Topology::parse(include_str!("../../../topologies/replicated.toml")).unwrap();
        let cs = t.components();
        let get = |name: &str| cs.iter().find(|c| c.name == name).unwrap().clone();
        let lb = get("lb");
        assert_eq!(lb.role, Role::Lb);
        let ports: Vec<u16> = lb.binds.iter().map(|b| b.addr.port()).collect();
        assert_eq!(ports, [8080, 8091]);
        assert_eq!(lb.depends_on, [Role::Web]);
        assert_eq!(lb.metrics.unwrap().port(), 8091, "the admin port serves /metrics");
        let web = get("web-2");
        assert_eq!(web.depends_on, [Role::Postgres, Role::Redis]);
        assert_eq!(
            web.ready,
            Readiness::Http {
                addr: "127.0.0.1:9102".parse().unwrap(),
                path: "/readyz"
            }
        );
        let pg = get("pg3");
        assert_eq!((pg.role, pg.binds[0].addr.port()), (Role::Postgres, 6434));
        assert_eq!(pg.restart, RestartPolicy::ByController);
        assert!(matches!(pg.ready, Readiness::Postgres { .. }));
        assert_eq!(get("redis").restart, RestartPolicy::Always);
        // Without managed engines the application tiers depend on nothing.
        let single = Topology::parse("").unwrap();
        assert!(single.components().iter().all(|c| c.depends_on.is_empty()));
    }

    #[test]
    fn the_site_groups_every_component() {
        let t = Topology::parse("[site]\nname = \"dc-east\"\n[worker]\ncount = 2").unwrap();
        assert!(t.components().iter().all(|c| c.site == "dc-east"));
        assert_eq!(Topology::parse("").unwrap().site.name, "local");
        for bad in ["", "DC1", "a b"] {
            let e = Topology::parse(&format!("[site]\nname = {bad:?}")).unwrap_err();
            assert!(e.to_string().contains("site.name"), "{e}");
        }
        assert!(Topology::parse("[site]\nregion = \"x\"").is_err());
    }

    #[test]
    fn a_port_clash_names_both_components() {
        let e = Topology::parse("[web]\ncount = 2\nlisten = \"127.0.0.1:9200\"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "web-2 (listen 127.0.0.1:9201/tcp) overlaps worker-1 (metrics 127.0.0.1:9201/tcp)"
        );
        let e = Topology::parse("[cache]\nkind = \"redis\"\n[redis]\nport = 8091\n[lb]").unwrap_err();
        assert!(e.to_string().contains("redis (listen 127.0.0.1:8091/tcp)"), "{e}");
        assert!(e.to_string().contains("lb (admin 127.0.0.1:8091/tcp)"), "{e}");
        let e = Topology::parse("[control]\nlisten = \"0.0.0.0:9201\"").unwrap_err();
        assert!(e.to_string().contains("up (control"), "{e}");
    }

    #[test]
    fn the_model_says_managed_and_the_resolved_configuration_says_where() {
        let t = Topology::parse("[sql]\nkind = \"postgres\"\nmax_lag_ms = 50\n[sessions]\nkind = \"redis\"")
            .unwrap();
        let SqlSection::Postgres { server, router } = &t.sql else {
            panic!("postgres")
        };
        assert_eq!(*server, Server::Managed);
        assert_eq!(router.max_lag_ms, 50);
        assert!(router.nodes.is_empty());
        assert!(matches!(
            &t.sessions,
            SessionsSection::Redis {
                server: Server::Managed,
                ..
            }
        ));
        let b = t.resolve(Path::new("/d"));
        let SqlTier::Postgres(pg) = b.sql else {
            panic!("postgres")
        };
        assert_eq!((pg.nodes.len(), pg.max_lag_ms), (3, 50));
        assert!(
            matches!(b.sessions, SessionsTier::Redis(r) if r.url.as_deref() == Some("redis://127.0.0.1:6390"))
        );
        let t = Topology::parse("[cache]\nkind = \"redis\"\nurl = \"redis://c:1\"").unwrap();
        assert!(matches!(
            &t.cache,
            CacheSection::Redis { server: Server::External(u), client } if u == "redis://c:1" && client.url.is_none()
        ));
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
