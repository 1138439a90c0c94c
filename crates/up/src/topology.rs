//! The topology file's **model**: how many of each role, where they listen,
//! and per tier which backend serves it, as the file says it ("the
//! PostgreSQL cluster `up` runs"). Sections map one to one to the boxes of
//! the seed's diagrams, so later tiers (dns, nats) are new sections or
//! new `kind`s, never a new format.
//!
//! Two things are derived from the model, never written by hand:
//! - the **components** (every process, with its ports, readiness and
//!   dependencies: [`Topology::components`]), from which port clashes are
//!   found;
//! - the **resolved** configuration handed to children
//!   ([`Topology::resolve`] → `backends::BackendsConfig`, in which every
//!   engine is an address; [`Topology::cdn_config`] per edge;
//!   [`Topology::web_settings`], which point the web tier at the edges).

use crate::component::{self, Bind, Component, Readiness, RestartPolicy};
use crate::role::{Role, MAX_COPIES};
use app::{WebConfig, WebSettings};
use backends::{
    BackendsConfig, BlobsTier, CacheTier, PostgresTier, QueueConfig, QueueTier, RedisCacheTier,
    RedisSessionsTier, ReplicaSetNodes, SessionsTier, SqlTier,
};
use cdn::config::{CdnConfig, CdnLimits, DiskSection, QuerySection};
use lb::LbConfig;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use worker::{WorkerConfig, WorkerSettings};

/// A whole deployment on this machine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// `[site]`: the site this topology runs in (`up --site` sets it).
    #[serde(default)]
    pub site: SiteSection,
    /// `[[sites]]`: several data centres, each running the site sections
    /// below on an address of its own (see [`crate::sites`]).
    #[serde(default)]
    pub sites: Vec<crate::sites::SiteDef>,
    /// `[dns]`: the geoDNS servers in front of the sites.
    #[serde(default)]
    pub dns: Option<crate::sites::DnsSection>,
    /// The file it was read from, which the sites' `up`s are started with.
    #[serde(skip)]
    pub source: Option<PathBuf>,
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
    pub queue: QueueSection,
    #[serde(default)]
    pub blobs: BlobsTier,
    /// `[lb]`: a load balancer in front of the web tier. Absent: the first
    /// web server is the public address (the single-server stage).
    #[serde(default)]
    pub lb: Option<LbConfig>,
    /// `[cdn]`: CDN edges in front of the origin (the load balancer, or the
    /// web server without one). Absent: no edge, the web tier serves its
    /// static content and media itself.
    #[serde(default)]
    pub cdn: Option<CdnSection>,
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
    /// `[nats]`: the NATS servers `up` runs when `[queue] kind = "nats"`
    /// has no `url`.
    #[serde(default)]
    pub nats: crate::nats::ManagedNats,
    /// `[prometheus]`: Prometheus and the node exporter `up` runs,
    /// scraping every process. Absent: none (the target list is still kept).
    #[serde(default)]
    pub prometheus: Option<crate::prometheus::ManagedPrometheus>,
    /// `[logs]`: the log collector `up` runs, gathering every process's
    /// lines (`ctl logs`). Absent: the children write to `up`'s output only.
    #[serde(default)]
    pub logs: Option<crate::logs::LogsSection>,
    /// `[autoscale.worker]`, `[autoscale.web]`: tiers that size themselves.
    #[serde(default)]
    pub autoscale: crate::autoscale::AutoscaleSection,
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
                // External sets stay in `router`.
                server: match std::mem::take(&mut router.nodes) {
                    nodes if nodes.is_empty() && router.sets.is_empty() => Server::Managed,
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

/// `[queue]` as the file says it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "QueueTier")]
pub enum QueueSection {
    /// A table of the SQL store.
    Embedded(QueueConfig),
    /// NATS JetStream: the servers (`url = ...`, or the ones `up` runs
    /// when absent), the queue's name, its stream copies (`None`: one per
    /// managed node, else 1) and its retry policy.
    Nats {
        server: Server<String>,
        name: String,
        replicas: Option<usize>,
        config: QueueConfig,
    },
}

impl Default for QueueSection {
    fn default() -> Self {
        QueueSection::Embedded(QueueConfig::default())
    }
}

impl From<QueueTier> for QueueSection {
    fn from(t: QueueTier) -> Self {
        match t {
            QueueTier::Embedded { config } => QueueSection::Embedded(config),
            QueueTier::Nats {
                url,
                name,
                replicas,
                config,
            } => QueueSection::Nats {
                server: url.map_or(Server::Managed, Server::External),
                name,
                replicas,
                config,
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

/// `[cdn]`: the CDN edges `up` runs (`cdn-1`..`cdn-N`), each an independent
/// cache (`scalestack cdn`) in front of the same origin. Every edge gets a
/// [`CdnConfig`] ([`Topology::cdn_config`]); keys left out take its
/// defaults, and keys it does not know are refused.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdnSection {
    /// Edges to run. Default 1.
    #[serde(default = "default_cdn_count")]
    pub count: usize,
    /// Public address of `cdn-1`; edge N takes port + N - 1. The web tier's
    /// media and assets point at `cdn-1`'s. Default 127.0.0.1:8081.
    #[serde(default = "default_cdn_listen")]
    pub listen: SocketAddr,
    /// Admin address (purge, stats, `/metrics`, `/readyz`) of `cdn-1`, same
    /// rule; keep it on loopback. Default 127.0.0.1:8092.
    #[serde(default = "default_cdn_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Where the edges fetch misses. Default: `[lb]`'s listen address, or
    /// the (first) web server's without a load balancer.
    #[serde(default)]
    pub origin: Option<SocketAddr>,
    /// MiB of each edge's memory tier. Default 256.
    #[serde(default = "default_cdn_memory_mb")]
    pub memory_mb: u64,
    /// The largest object kept in memory, MiB; larger answers go to the
    /// disk tier, else stream through uncached. Default 16 (or
    /// `memory_mb` if smaller).
    #[serde(default)]
    pub max_object_mb: Option<u64>,
    /// MiB of each edge's disk tier, under `<data dir>/cdn-N/`; 0 means no
    /// disk tier. It keeps objects up to 256 MiB (or `disk_mb` if smaller).
    /// Default 0.
    #[serde(default)]
    pub disk_mb: u64,
    /// Seconds past freshness a stored answer may be served when the
    /// origin fails. Default 10.
    #[serde(default = "default_cdn_grace_secs")]
    pub grace_secs: u64,
    /// Seconds an uncacheable answer is remembered (hit-for-miss).
    /// Default 120.
    #[serde(default = "default_cdn_hit_for_miss_secs")]
    pub hit_for_miss_secs: u64,
    /// Milliseconds a request waits for another's fetch of the same key.
    /// Default 5000.
    #[serde(default = "default_cdn_coalesce_wait_ms")]
    pub coalesce_wait_ms: u64,
    /// Worker threads of each edge; 0 means one per core. Default 0.
    #[serde(default)]
    pub threads: usize,
    /// One log line per request, with its `Cache-Status`. Default true.
    #[serde(default = "default_cdn_access_log")]
    pub access_log: bool,
    /// Query parameters that key an object: `keep = [...]` (only these) or
    /// `ignore = [...]` (all but these). Default: all of them.
    #[serde(default)]
    pub query: QuerySection,
    /// Store answers carrying `Set-Cookie` (without it). Default false.
    #[serde(default)]
    pub store_set_cookie: bool,
    /// `[cdn.limits]`: client-side and origin limits. Default
    /// `CdnLimits::default()`.
    #[serde(default)]
    pub limits: CdnLimits,
}

/// The largest object an edge's disk tier keeps: `CdnConfig`'s default
/// (256 MiB), or the tier's size if smaller.
const CDN_DISK_MAX_OBJECT_BYTES: u64 = 256 << 20;

fn default_cdn_count() -> usize {
    1
}
fn default_cdn_listen() -> SocketAddr {
    CdnConfig::default().listen
}
fn default_cdn_admin_listen() -> SocketAddr {
    CdnConfig::default().admin_listen
}
fn default_cdn_memory_mb() -> u64 {
    CdnConfig::default().memory_bytes >> 20
}
fn default_cdn_grace_secs() -> u64 {
    CdnConfig::default().grace_secs
}
fn default_cdn_hit_for_miss_secs() -> u64 {
    CdnConfig::default().hit_for_miss_secs
}
fn default_cdn_coalesce_wait_ms() -> u64 {
    CdnConfig::default().coalesce_wait_ms
}
fn default_cdn_access_log() -> bool {
    CdnConfig::default().access_log
}

impl Default for CdnSection {
    fn default() -> Self {
        CdnSection {
            count: default_cdn_count(),
            listen: default_cdn_listen(),
            admin_listen: default_cdn_admin_listen(),
            origin: None,
            memory_mb: default_cdn_memory_mb(),
            max_object_mb: None,
            disk_mb: 0,
            grace_secs: default_cdn_grace_secs(),
            hit_for_miss_secs: default_cdn_hit_for_miss_secs(),
            coalesce_wait_ms: default_cdn_coalesce_wait_ms(),
            threads: 0,
            access_log: default_cdn_access_log(),
            query: QuerySection::default(),
            store_set_cookie: false,
            limits: CdnLimits::default(),
        }
    }
}

impl CdnSection {
    /// Public address of edge `index` (0-based).
    pub fn listen_of(&self, index: usize) -> SocketAddr {
        nth(self.listen, index)
    }

    /// Admin address of edge `index` (0-based).
    pub fn admin_of(&self, index: usize) -> SocketAddr {
        nth(self.admin_listen, index)
    }

    /// Checks the section's own keys, in its own words (the resolved
    /// [`CdnConfig`] is validated after this).
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=MAX_COPIES).contains(&self.count),
            "cdn.count must be 1 to {MAX_COPIES} (leave out [cdn] for no edge)"
        );
        for (name, first) in [
            ("cdn.listen", self.listen),
            ("cdn.admin_listen", self.admin_listen),
        ] {
            anyhow::ensure!(
                first.port() != 0,
                "{name}: port 0 cannot be used, the web tier must know the edges' addresses"
            );
            anyhow::ensure!(
                first.port() as usize + self.count <= 65536,
                "{name}: ports run past 65535"
            );
        }
        let max_mb = u64::MAX >> 20;
        anyhow::ensure!(
            (1..=max_mb).contains(&self.memory_mb),
            "cdn.memory_mb must be 1 to {max_mb}, not {}",
            self.memory_mb
        );
        anyhow::ensure!(
            self.disk_mb <= max_mb,
            "cdn.disk_mb must be 0 to {max_mb}, not {}",
            self.disk_mb
        );
        if let Some(mb) = self.max_object_mb {
            anyhow::ensure!(
                (1..=self.memory_mb).contains(&mb),
                "cdn.max_object_mb must be 1 to memory_mb ({}), not {mb}",
                self.memory_mb
            );
        }
        if let Some(origin) = self.origin {
            anyhow::ensure!(
                origin.port() != 0,
                "cdn.origin: port 0 is no address to fetch from"
            );
        }
        Ok(())
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
    /// Whether the section sets `media_base_url` itself (even to ""); if
    /// not, `up` points it at the first CDN edge when there is one.
    pub media_base_url_set: bool,
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
        let media_base_url_set = t.contains_key("media_base_url");
        let (count, listen, settings) = split_role(t, "listen", default_web_listen())?;
        Ok(WebTier {
            count,
            listen,
            settings,
            media_base_url_set,
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
            media_base_url_set: false,
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

/// The address another process connects to for a listener bound at
/// `bind`: a listener on every address (`0.0.0.0`, `::`) is reached on
/// loopback.
pub fn connectable(bind: SocketAddr) -> SocketAddr {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
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
        let mut t = Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        t.source = Some(path.canonicalize().unwrap_or_else(|_| path.to_path_buf()));
        Ok(t)
    }

    /// This topology with `sets` PostgreSQL replica sets, checked like a
    /// parsed one (their ports must not clash with anything else).
    pub fn with_sets(&self, sets: usize) -> anyhow::Result<Topology> {
        let mut t = self.clone();
        t.postgres.sets = sets;
        t.validate()?;
        Ok(t)
    }

    pub(crate) fn validate(&self) -> anyhow::Result<()> {
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
            anyhow::ensure!(
                (1..=8).contains(&self.postgres.sets),
                "postgres.sets must be 1 to 8"
            );
        }
        if let Some(lb) = &self.lb {
            anyhow::ensure!(
                lb.backends.is_empty(),
                "lb.backends is not set by hand: the web servers of [web] are the backends"
            );
            lb.validate().map_err(|e| anyhow::anyhow!("[lb]: {e}"))?;
        }
        if let Some(cdn) = &self.cdn {
            cdn.check()?;
            let origin = self.cdn_origin().expect("a [cdn] section");
            for index in 0..cdn.count {
                let name = format!("cdn-{}", index + 1);
                anyhow::ensure!(
                    connectable(cdn.listen_of(index)) != origin,
                    "cdn.origin {origin} is {name}'s own address: the edge would fetch from itself"
                );
                let config = self.cdn_config(index, &self.data.dir).expect("a [cdn] section");
                config.validate().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            }
        }
        if self.needs_managed_nats() {
            self.nats.validate()?;
        }
        self.autoscale.validate()?;
        anyhow::ensure!(
            self.autoscale.web.is_none() || self.lb.is_some(),
            "autoscale.web needs an [lb]: the web tier scales behind the load balancer"
        );
        if let SqlSection::Postgres { router, .. } = &self.sql {
            router.check()?;
        }
        if let QueueSection::Nats { server, replicas, .. } = &self.queue {
            let most = match server {
                Server::Managed => self.nats.nodes,
                Server::External(_) => 5,
            };
            if let Some(r) = replicas {
                anyhow::ensure!(
                    (1..=most).contains(r),
                    "queue.replicas = {r}: 1 to {most} (one copy per node at most)"
                );
            }
        }
        if let Some(p) = &self.prometheus {
            p.validate()?;
        }
        if let Some(logs) = &self.logs {
            logs.validate()?;
        }
        self.validate_sites()?;
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

    /// Whether `up` must run NATS: a NATS queue without a `url`.
    pub fn needs_managed_nats(&self) -> bool {
        matches!(
            &self.queue,
            QueueSection::Nats {
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
            SqlSection::Postgres { server, router } => SqlTier::Postgres(match server {
                Server::Managed if self.postgres.sets > 1 => PostgresTier {
                    sets: self
                        .postgres
                        .per_set()
                        .iter()
                        .map(|set| ReplicaSetNodes {
                            name: set.set_name().unwrap_or_default().to_owned(),
                            nodes: set.urls(),
                        })
                        .collect(),
                    ..router.clone()
                },
                Server::Managed => PostgresTier {
                    nodes: self.postgres.urls(),
                    ..router.clone()
                },
                Server::External(nodes) => PostgresTier {
                    nodes: nodes.clone(),
                    ..router.clone()
                },
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
            queue: match &self.queue {
                QueueSection::Embedded(config) => QueueTier::Embedded { config: *config },
                QueueSection::Nats {
                    server,
                    name,
                    replicas,
                    config,
                } => {
                    let (url, copies) = match server {
                        Server::Managed => (self.nats.urls(), self.nats.nodes),
                        Server::External(url) => (url.clone(), 1),
                    };
                    QueueTier::Nats {
                        url: Some(url),
                        name: name.clone(),
                        replicas: Some(replicas.unwrap_or(copies)),
                        config: *config,
                    }
                }
            },
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
        if self.needs_managed_nats() {
            engines.push(Role::Nats);
        }
        engines
    }

    /// Every process of the topology at its configured counts, as its tier
    /// declares it.
    pub fn components(&self) -> Vec<Component> {
        if self.is_multi_site() {
            return self.shared_components();
        }
        let mut all = Vec::new();
        if self.needs_managed_postgres() {
            all.extend(self.postgres.components(&self.site.name));
        }
        if self.needs_managed_redis() {
            all.push(self.redis.component(&self.site.name));
        }
        if self.needs_managed_nats() {
            all.extend(self.nats.components(&self.site.name));
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
        let edges = self.cdn.as_ref().map_or(0, |c| c.count);
        all.extend((0..edges).filter_map(|i| self.cdn_component(i)));
        if let Some(p) = &self.prometheus {
            all.extend(p.components(&self.site.name));
        }
        if let Some(logs) = &self.logs {
            all.push(logs.component(&self.site.name));
        }
        all
    }

    /// CDN edge `index` (0-based), `cdn-{index + 1}`: its public and admin
    /// ports, ready when its admin port answers `/readyz`, started after
    /// its origin's role; `None` without a `[cdn]` section.
    pub fn cdn_component(&self, index: usize) -> Option<Component> {
        let cdn = self.cdn.as_ref()?;
        let (listen, admin) = (cdn.listen_of(index), cdn.admin_of(index));
        Some(Component {
            name: format!("cdn-{}", index + 1),
            role: Role::Cdn,
            site: self.site.name.clone(),
            binds: vec![Bind::tcp(listen, "listen"), Bind::tcp(admin, "admin")],
            addr: Some(listen),
            // The admin port serves /metrics.
            metrics: Some(admin),
            ready: Readiness::Http {
                addr: admin,
                path: "/readyz",
            },
            depends_on: vec![if self.lb.is_some() { Role::Lb } else { Role::Web }],
            restart: RestartPolicy::Always,
        })
    }

    /// Where the edges fetch misses: `cdn.origin`, else the load balancer,
    /// else the first web server. `None` without a `[cdn]` section.
    pub fn cdn_origin(&self) -> Option<SocketAddr> {
        let cdn = self.cdn.as_ref()?;
        let default = match &self.lb {
            Some(lb) => lb.listen,
            None => self.web.listen,
        };
        Some(connectable(cdn.origin.unwrap_or(default)))
    }

    /// The configuration of CDN edge `index` (0-based), its disk tier (if
    /// any) under `<data_dir>/cdn-N/`; `None` without a `[cdn]` section.
    pub fn cdn_config(&self, index: usize, data_dir: &Path) -> Option<CdnConfig> {
        let cdn = self.cdn.as_ref()?;
        let n = index + 1;
        let memory_bytes = cdn.memory_mb.saturating_mul(1 << 20);
        let defaults = CdnConfig::default();
        let max_object_bytes = match cdn.max_object_mb {
            Some(mb) => mb.saturating_mul(1 << 20),
            None => defaults.max_object_bytes.min(memory_bytes),
        };
        let disk = (cdn.disk_mb > 0).then(|| {
            let capacity_bytes = cdn.disk_mb.saturating_mul(1 << 20);
            DiskSection {
                dir: data_dir.join(format!("cdn-{n}")),
                capacity_bytes,
                max_object_bytes: CDN_DISK_MAX_OBJECT_BYTES.min(capacity_bytes),
            }
        });
        Some(CdnConfig {
            listen: cdn.listen_of(index),
            admin_listen: cdn.admin_of(index),
            origin: self.cdn_origin()?,
            name: format!("{}-cdn-{n}", self.site.name),
            threads: cdn.threads,
            access_log: cdn.access_log,
            memory_bytes,
            max_object_bytes,
            disk,
            grace_secs: cdn.grace_secs,
            hit_for_miss_secs: cdn.hit_for_miss_secs,
            coalesce_wait_ms: cdn.coalesce_wait_ms,
            query: cdn.query.clone(),
            store_set_cookie: cdn.store_set_cookie,
            limits: cdn.limits.clone(),
        })
    }

    /// The public URL of the first CDN edge (`http://127.0.0.1:8081`), if
    /// there is one.
    pub fn cdn_url(&self) -> Option<String> {
        let cdn = self.cdn.as_ref()?;
        Some(format!("http://{}", connectable(cdn.listen)))
    }

    /// The web tier's settings as its servers get them: `[web]`'s, with
    /// `media_base_url` pointing at the first edge (unless `[web]` sets
    /// it) and every edge's admin URL added to `cdn_purge_urls`.
    pub fn web_settings(&self) -> WebSettings {
        let mut settings = self.web.settings.clone();
        let Some(cdn) = &self.cdn else {
            return settings;
        };
        if !self.web.media_base_url_set {
            settings.media_base_url = self.cdn_url().expect("a [cdn] section");
        }
        for index in 0..cdn.count {
            let url = format!("http://{}", connectable(cdn.admin_of(index)));
            if !settings.cdn_purge_urls.contains(&url) {
                settings.cdn_purge_urls.push(url);
            }
        }
        settings
    }

    /// Copy `index` (0-based) of a role that `ctl scale` runs in copies
    /// (`web`, `worker`); `None` for the others (edges:
    /// [`Self::cdn_component`]).
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
            Role::Cdn
            | Role::Lb
            | Role::Postgres
            | Role::Redis
            | Role::Nats
            | Role::Dns
            | Role::Site
            | Role::Prometheus
            | Role::NodeExporter
            | Role::Logs => return None,
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
                settings: self.web_settings(),
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
    fn the_sharded_file_runs_two_replica_sets_under_up() {
        let t = Topology::parse(include_str!("../../../topologies/sharded.toml")).unwrap();
        assert!(t.needs_managed_postgres() && t.needs_managed_redis() && t.needs_managed_nats());
        let names: Vec<String> = t
            .components()
            .into_iter()
            .filter(|c| c.role == Role::Postgres)
            .map(|c| format!("{}@{}", c.name, c.addr.unwrap().port()))
            .collect();
        assert_eq!(
            names,
            ["s1-pg1@6432", "s1-pg2@6433", "s2-pg1@6434", "s2-pg2@6435"]
        );
        let b = t.resolve(Path::new("/d"));
        let SqlTier::Postgres(pg) = b.sql else {
            panic!("postgres")
        };
        assert!(pg.nodes.is_empty());
        let sets: Vec<(&str, usize)> = pg.sets.iter().map(|s| (s.name.as_str(), s.nodes.len())).collect();
        assert_eq!(sets, [("s1", 2), ("s2", 2)]);
        assert!(pg.sets[1].nodes[0].contains(":6434/"));
    }

    #[test]
    fn external_sets_stay_external() {
        let t = Topology::parse(
            "[sql]\nkind = \"postgres\"\nsets = [{ name = \"a\", nodes = [\"postgres://a:5432/app\"] }, \
             { name = \"b\", nodes = [\"postgres://b:5432/app\"] }]",
        )
        .unwrap();
        assert!(!t.needs_managed_postgres());
        let SqlTier::Postgres(pg) = t.resolve(Path::new("/d")).sql else {
            panic!("postgres")
        };
        assert_eq!(pg.sets.len(), 2);
        assert!(Topology::parse("[sql]\nkind = \"postgres\"\n[postgres]\nsets = 9").is_err());
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
        // One edge on :8081 in front of the LB, and the web tier points at it.
        let edge = t.cdn_config(0, Path::new("/d")).unwrap();
        assert_eq!(
            (edge.listen.port(), edge.admin_listen.port(), edge.origin.port()),
            (8081, 8092, 8080)
        );
        assert_eq!(edge.name, "local-cdn-1");
        assert_eq!(edge.disk, None);
        assert_eq!(t.cdn.as_ref().map(|c| c.count), Some(1));
        assert_eq!(t.cdn_url().as_deref(), Some("http://127.0.0.1:8081"));
        let web = t.web_settings();
        assert_eq!(web.media_base_url, "http://127.0.0.1:8081");
        assert_eq!(web.cdn_purge_urls, ["http://127.0.0.1:8092"]);
    }

    #[test]
    fn the_replicated_and_single_server_files_have_no_edge() {
        for text in [
            include_str!("../../../topologies/replicated.toml"),
            include_str!("../../../topologies/single-server.toml"),
        ] {
            let t = Topology::parse(text).unwrap();
            assert!(t.cdn.is_none() && t.cdn_url().is_none());
            assert_eq!(t.web_settings(), t.web.settings, "the web tier serves its media");
            assert!(t.components().iter().all(|c| c.role != Role::Cdn));
        }
    }

    #[test]
    fn an_empty_cdn_section_is_one_edge_with_the_edge_defaults() {
        // Without [lb] the origin is the web server.
        let t = Topology::parse("[cdn]").unwrap();
        let edge = t.cdn_config(0, Path::new("/d")).unwrap();
        assert_eq!(
            edge,
            cdn::config::CdnConfig {
                origin: "127.0.0.1:8080".parse().unwrap(),
                name: "local-cdn-1".into(),
                ..cdn::config::CdnConfig::default()
            },
            "the topology's defaults are the edge's"
        );
        assert_eq!((edge.listen.port(), edge.admin_listen.port()), (8081, 8092));
        assert_eq!((edge.memory_bytes, edge.max_object_bytes), (256 << 20, 16 << 20));
        let names: Vec<String> = t.components().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["web-1", "worker-1", "cdn-1"]);
        let c = t.cdn_component(0).unwrap();
        assert_eq!(c.depends_on, [Role::Web], "the origin's role");
        // A small memory tier takes a smaller default object limit.
        let t = Topology::parse("[cdn]\nmemory_mb = 4").unwrap();
        assert_eq!(
            t.cdn_config(0, Path::new("/d")).unwrap().max_object_bytes,
            4 << 20
        );
        // The site names the edge in Cache-Status.
        let t = Topology::parse("[site]\nname = \"dc-east\"\n[cdn]").unwrap();
        assert_eq!(t.cdn_config(0, Path::new("/d")).unwrap().name, "dc-east-cdn-1");
        assert_eq!(t.cdn_component(0).unwrap().site, "dc-east");
    }

    #[test]
    fn edges_take_consecutive_ports_and_their_own_disk_directories() {
        let t = Topology::parse(include_str!("../../../topologies/cdn.toml")).unwrap();
        let edges: Vec<_> = (0..2)
            .map(|i| t.cdn_config(i, Path::new("/data")).unwrap())
            .collect();
        let ports: Vec<_> = edges
            .iter()
            .map(|e| (e.listen.port(), e.admin_listen.port(), e.origin.port()))
            .collect();
        assert_eq!(ports, [(8081, 8092, 8080), (8082, 8093, 8080)]);
        let names: Vec<_> = edges.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["local-cdn-1", "local-cdn-2"]);
        let disks: Vec<_> = edges.iter().map(|e| e.disk.clone().unwrap()).collect();
        assert_eq!(disks[0].dir, Path::new("/data/cdn-1"));
        assert_eq!(disks[1].dir, Path::new("/data/cdn-2"));
        assert_eq!(
            (disks[0].capacity_bytes, disks[0].max_object_bytes),
            (512 << 20, 256 << 20)
        );
        assert_eq!(
            (edges[0].memory_bytes, edges[0].max_object_bytes),
            (64 << 20, 8 << 20)
        );
        assert_eq!(edges[1].query.ignore, ["utm_*", "fbclid"]);
        assert_eq!(edges[0].grace_secs, 30);
        let web = t.web_settings();
        assert_eq!(web.media_base_url, "http://127.0.0.1:8081", "the first edge");
        assert_eq!(
            web.cdn_purge_urls,
            ["http://127.0.0.1:8092", "http://127.0.0.1:8093"],
            "every edge"
        );
        // A small disk tier bounds its largest object.
        let t = Topology::parse("[cdn]\ndisk_mb = 100\n[data]\ndir = \"/srv\"").unwrap();
        let disk = t.cdn_config(0, &t.data.dir).unwrap().disk.unwrap();
        assert_eq!(
            (disk.capacity_bytes, disk.max_object_bytes),
            (100 << 20, 100 << 20)
        );
        assert_eq!(disk.dir, Path::new("/srv/cdn-1"));
    }

    #[test]
    fn every_cdn_key_reaches_the_edge() {
        let t = Topology::parse(
            "[cdn]\norigin = \"127.0.0.1:7000\"\nmemory_mb = 32\nmax_object_mb = 2\n\
             grace_secs = 5\nhit_for_miss_secs = 7\ncoalesce_wait_ms = 900\nthreads = 3\n\
             access_log = false\nstore_set_cookie = true\nquery = { keep = [\"v\"] }\n\
             [cdn.limits]\nmax_headers = 50",
        )
        .unwrap();
        let e = t.cdn_config(0, Path::new("/d")).unwrap();
        assert_eq!(e.origin, "127.0.0.1:7000".parse().unwrap());
        assert_eq!((e.memory_bytes, e.max_object_bytes), (32 << 20, 2 << 20));
        assert_eq!(
            (e.grace_secs, e.hit_for_miss_secs, e.coalesce_wait_ms, e.threads),
            (5, 7, 900, 3)
        );
        assert!(!e.access_log && e.store_set_cookie);
        assert_eq!(e.query.keep, Some(vec!["v".to_string()]));
        assert_eq!(e.limits.max_headers, 50);
        assert_eq!(
            e.limits.max_header_bytes, 16384,
            "the other limits keep their defaults"
        );
    }

    #[test]
    fn edges_are_components_with_ports_readiness_and_dependencies() {
        let t = Topology::parse(include_str!("../../../topologies/cdn.toml")).unwrap();
        let cs = t.components();
        let edge = cs.iter().find(|c| c.name == "cdn-2").unwrap();
        assert_eq!(edge.role, Role::Cdn);
        let binds: Vec<(u16, &str)> = edge.binds.iter().map(|b| (b.addr.port(), b.purpose)).collect();
        assert_eq!(binds, [(8082, "listen"), (8093, "admin")]);
        assert_eq!(edge.addr.unwrap().port(), 8082);
        assert_eq!(
            edge.metrics.unwrap().port(),
            8093,
            "the admin port serves /metrics"
        );
        assert_eq!(
            edge.ready,
            Readiness::Http {
                addr: "127.0.0.1:8093".parse().unwrap(),
                path: "/readyz"
            }
        );
        assert_eq!(edge.depends_on, [Role::Lb]);
        assert_eq!(edge.restart, RestartPolicy::Always);
        // Edges start last (after their origin) and so stop first.
        assert_eq!(
            component::start_levels(&cs),
            [vec![Role::Web, Role::Worker], vec![Role::Lb], vec![Role::Cdn]]
        );
        // Not scaled by `ctl scale`: `copy` is for web and worker.
        assert!(t.copy(Role::Cdn, 0).is_none());
        assert!(Topology::parse("").unwrap().cdn_component(0).is_none());
    }

    #[test]
    fn explicit_web_settings_win_over_the_edges() {
        let t = Topology::parse(
            "[cdn]\n[web]\nmedia_base_url = \"https://static.example.com\"\n\
             cdn_purge_urls = [\"http://10.0.0.9:8092\", \"http://127.0.0.1:8092\"]",
        )
        .unwrap();
        let web = t.web_settings();
        assert_eq!(web.media_base_url, "https://static.example.com");
        assert_eq!(
            web.cdn_purge_urls,
            ["http://10.0.0.9:8092", "http://127.0.0.1:8092"],
            "an edge given by hand is not purged twice"
        );
        // Even an explicit "" (media served by the web tier) is kept.
        let t = Topology::parse("[cdn]\n[web]\nmedia_base_url = \"\"").unwrap();
        assert_eq!(t.web_settings().media_base_url, "");
        assert_eq!(t.web_settings().cdn_purge_urls, ["http://127.0.0.1:8092"]);
    }

    #[test]
    fn addresses_on_every_interface_are_reached_on_loopback() {
        let t = Topology::parse(
            "[cdn]\nlisten = \"0.0.0.0:8081\"\n[lb]\nlisten = \"0.0.0.0:8080\"\n\
             [web]\nlisten = \"127.0.0.1:9101\"",
        )
        .unwrap();
        let edge = t.cdn_config(0, Path::new("/d")).unwrap();
        assert_eq!(edge.origin, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(edge.listen, "0.0.0.0:8081".parse().unwrap(), "it binds as told");
        assert_eq!(t.web_settings().media_base_url, "http://127.0.0.1:8081");
        let t = Topology::parse("[cdn]\norigin = \"[::]:9000\"").unwrap();
        assert_eq!(t.cdn_origin(), Some("[::1]:9000".parse().unwrap()));
    }

    #[test]
    fn an_edge_that_clashes_with_another_component_is_refused() {
        let e = Topology::parse(
            "[cdn]\nlisten = \"127.0.0.1:9102\"\n[web]\ncount = 2\nlisten = \"127.0.0.1:9101\"",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "web-2 (listen 127.0.0.1:9102/tcp) overlaps cdn-1 (listen 127.0.0.1:9102/tcp)"
        );
        // `up`'s control port, and the lb's admin port, against the second
        // edge's admin port.
        let behind_lb = "[lb]\n[web]\nlisten = \"127.0.0.1:9101\"\n[cdn]\ncount = 2\n";
        let e = Topology::parse(&format!("{behind_lb}admin_listen = \"127.0.0.1:8089\"")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "up (control 127.0.0.1:8090/tcp) overlaps cdn-2 (admin 127.0.0.1:8090/tcp)"
        );
        let e = Topology::parse(&format!(
            "{behind_lb}admin_listen = \"127.0.0.1:8090\"\n[control]\nlisten = \"127.0.0.1:7000\""
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "lb (admin 127.0.0.1:8091/tcp) overlaps cdn-2 (admin 127.0.0.1:8091/tcp)"
        );
        // Edges against each other: cdn-3's public port is cdn-1's admin port.
        let e = Topology::parse(
            "[cdn]\ncount = 3\nlisten = \"127.0.0.1:7000\"\nadmin_listen = \"127.0.0.1:7002\"",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cdn-1 (admin 127.0.0.1:7002/tcp) overlaps cdn-3 (listen 127.0.0.1:7002/tcp)"
        );
        // The managed Redis too.
        let e = Topology::parse("[cache]\nkind = \"redis\"\n[redis]\nport = 8081\n[cdn]").unwrap_err();
        assert_eq!(
            e.to_string(),
            "redis (listen 127.0.0.1:8081/tcp) overlaps cdn-1 (listen 127.0.0.1:8081/tcp)"
        );
    }

    #[test]
    fn bad_cdn_sections_are_refused_with_a_reason() {
        for (text, needle) in [
            ("[cdn]\ncount = 0", "cdn.count must be 1 to 64"),
            ("[cdn]\ncount = 65", "cdn.count"),
            ("[cdn]\ncount = -1", "count"),
            ("[cdn]\nmemory_bytes = 1000", "unknown field `memory_bytes`"),
            ("[cdn]\nmemory = 5", "unknown field `memory`"),
            ("[cdn]\ndisk = 5", "unknown field `disk`"),
            ("[cdn]\nname = \"x\"", "unknown field `name`"),
            ("[cdn]\nmemory_mb = 0", "cdn.memory_mb must be 1"),
            ("[cdn]\nmemory_mb = 17592186044416", "cdn.memory_mb must be 1 to"),
            ("[cdn]\ndisk_mb = 17592186044416", "cdn.disk_mb must be 0 to"),
            (
                "[cdn]\nmax_object_mb = 0",
                "cdn.max_object_mb must be 1 to memory_mb (256)",
            ),
            ("[cdn]\nmemory_mb = 8\nmax_object_mb = 9", "cdn.max_object_mb"),
            ("[cdn]\nlisten = \"127.0.0.1:0\"", "cdn.listen: port 0"),
            (
                "[cdn]\nadmin_listen = \"127.0.0.1:0\"",
                "cdn.admin_listen: port 0",
            ),
            (
                "[cdn]\nlisten = \"127.0.0.1:65535\"\ncount = 2",
                "cdn.listen: ports run past 65535",
            ),
            ("[cdn]\nlisten = \"nowhere\"", "listen"),
            ("[cdn]\norigin = \"127.0.0.1:0\"", "cdn.origin"),
            ("[cdn]\norigin = \"127.0.0.1:8081\"", "cdn-1's own address"),
            (
                "[cdn]\ncount = 2\norigin = \"127.0.0.1:8082\"",
                "cdn-2's own address",
            ),
            (
                "[cdn]\nlisten = \"127.0.0.1:8092\"",
                "cdn-1: [cdn] listen and admin_listen are the same address",
            ),
            (
                "[cdn]\nquery = { keep = [\"v\"], ignore = [\"utm_*\"] }",
                "cdn-1: [cdn] query: `keep` and `ignore` exclude each other",
            ),
            ("[cdn]\nquery = { drop = [\"v\"] }", "drop"),
            ("[cdn]\naccess_log = \"yes\"", "access_log"),
            ("[cdn]\ngrace_secs = -1", "grace_secs"),
            ("[cdn.limits]\nmax_header = 5", "max_header"),
        ] {
            let e = Topology::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} gave {e:?}");
        }
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
    fn a_nats_queue_without_url_runs_under_up_with_a_copy_per_node() {
        let t = Topology::parse(include_str!("../../../topologies/queue.toml")).unwrap();
        assert!(t.needs_managed_nats());
        let QueueTier::Nats { url, replicas, .. } = t.resolve(Path::new("/d")).queue else {
            panic!("a nats queue")
        };
        assert_eq!(
            url.as_deref(),
            Some("nats://127.0.0.1:4230,nats://127.0.0.1:4231,nats://127.0.0.1:4232")
        );
        assert_eq!(replicas, Some(3));
        let web = t.copy(Role::Web, 0).unwrap();
        assert_eq!(web.depends_on, [Role::Nats]);
        assert!(t.autoscale.worker.is_some() && t.autoscale.web.is_some());

        let t = Topology::parse("[queue]\nkind = \"nats\"\nurl = \"nats://q:4222\"").unwrap();
        assert!(!t.needs_managed_nats());
        assert!(t.components().iter().all(|c| c.role != Role::Nats));
        for (text, key) in [
            ("[queue]\nkind = \"nats\"\nreplicas = 3", "queue.replicas"),
            ("[queue]\nkind = \"nats\"\n[nats]\nnodes = 2", "nats.nodes"),
            (
                "[queue]\nkind = \"nats\"\n[nats]\nsync = \"sometimes\"",
                "sometimes",
            ),
            ("[autoscale.web]\ntarget_in_flight = 4", "needs an [lb]"),
            ("[autoscale.worker]\nmin = 5\nmax = 2", "autoscale.worker"),
        ] {
            let e = Topology::parse(text).unwrap_err();
            assert!(format!("{e:#}").contains(key), "{text}: {e:#}");
        }
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
            ("cdn", include_str!("../../../topologies/cdn.toml")),
            ("queue", include_str!("../../../topologies/queue.toml")),
            ("default", crate::DEFAULT_TOPOLOGY),
        ];
        for (file, text) in files {
            let t = Topology::parse(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            let names: Vec<String> = t.components().into_iter().map(|c| c.name).collect();
            let expected: &[&str] = match file {
                "single-server" => &["web-1", "worker-1"],
                "replicated" => &[
                    "pg1",
                    "pg2",
                    "pg3",
                    "redis",
                    "web-1",
                    "web-2",
                    "web-3",
                    "worker-1",
                    "lb",
                    "prometheus",
                    "node-exporter",
                    "logs",
                ],
                "cdn" => &["web-1", "web-2", "web-3", "worker-1", "lb", "cdn-1", "cdn-2"],
                "queue" => &[
                    "nats-1",
                    "nats-2",
                    "nats-3",
                    "web-1",
                    "web-2",
                    "worker-1",
                    "lb",
                    "prometheus",
                    "node-exporter",
                    "logs",
                ],
                _ => &["web-1", "web-2", "web-3", "worker-1", "lb", "cdn-1"],
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
