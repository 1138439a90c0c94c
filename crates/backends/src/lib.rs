//! The one place that knows which adapter serves which port. A
//! [`BackendsConfig`] names, per tier, the kind of backend (today only
//! `embedded`; `managed` and `external` engines slot in as new variants), and
//! [`Backends::connect`] builds the adapters behind `Arc<dyn Port>`s.

use anyhow::Context;
use domain::ports::{BlobStore, Cache, JobQueue, SessionStore, Store};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cache::{CacheConfig, EvictionPolicy};
pub use domain::QueueConfig;

/// Where every shared tier lives. Deserialised from the topology file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    /// Root of all embedded state. Default `./data`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
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
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

impl Default for BackendsConfig {
    fn default() -> Self {
        BackendsConfig {
            data_dir: default_data_dir(),
            sql: SqlTier::default(),
            cache: CacheTier::default(),
            sessions: SessionsTier::default(),
            queue: QueueTier::default(),
            blobs: BlobsTier::default(),
        }
    }
}

/// The SQL store tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SqlTier {
    /// SQLite in WAL mode; `path` defaults to `<data_dir>/scalestack.db`.
    Embedded {
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// PostgreSQL primary and replicas.
    Postgres(PostgresTier),
}

/// `[sql] kind = "postgres"`: a primary and replicas behind the DB router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTier {
    /// URL of every node, primary and replicas, in any order: the router
    /// finds out which is the primary, and follows a failover. Empty in a
    /// topology: the cluster `up` runs (`[postgres]`).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Connections per node and process. Default 10.
    #[serde(default = "default_pg_connections")]
    pub max_connections: u32,
    /// A replica further behind than this gets no reads. Default 1000.
    #[serde(default = "default_max_lag_ms")]
    pub max_lag_ms: u64,
    /// How often the router probes every node. Default 200.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
}

fn default_pg_connections() -> u32 {
    10
}
fn default_max_lag_ms() -> u64 {
    1000
}
fn default_probe_interval_ms() -> u64 {
    200
}

impl Default for SqlTier {
    fn default() -> Self {
        SqlTier::Embedded { path: None }
    }
}

/// The cache tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CacheTier {
    /// In-process cache in every web server.
    Embedded {
        #[serde(flatten)]
        config: CacheConfig,
    },
    /// Redis, shared by every web server, behind an in-process near-cache.
    Redis(RedisCacheTier),
}

/// `[cache] kind = "redis"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisCacheTier {
    /// `redis://host:port` of an external Redis. Absent in a topology: the
    /// Redis that `up` starts itself (`[redis]`); `up` fills it in for its
    /// children.
    #[serde(default)]
    pub url: Option<String>,
    /// Prefix of every key. Default `scalestack:`.
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
    /// Deadline of each Redis call, ms; past it the call is a miss. Default 200.
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
    /// Entries live ttl × (1 ± jitter) so that entries set together do not
    /// expire together. Default 0.1.
    #[serde(default = "default_ttl_jitter")]
    pub ttl_jitter: f64,
    /// Lifetime of near-cache entries in each web server, ms; also the
    /// bound on how stale another server's write can look. 0 turns the
    /// near-cache off. Default 2000.
    #[serde(default = "default_near_ttl_ms")]
    pub near_ttl_ms: u64,
    /// Size bound of the near-cache. Default 16 MiB.
    #[serde(default = "default_near_max_bytes")]
    pub near_max_bytes: usize,
}

fn default_redis_prefix() -> String {
    "scalestack:".into()
}
fn default_redis_timeout_ms() -> u64 {
    200
}
fn default_ttl_jitter() -> f64 {
    0.1
}
fn default_near_ttl_ms() -> u64 {
    2000
}
fn default_near_max_bytes() -> usize {
    16 << 20
}

impl Default for CacheTier {
    fn default() -> Self {
        CacheTier::Embedded {
            config: CacheConfig::default(),
        }
    }
}

/// The session store tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SessionsTier {
    /// A table of the SQL store.
    #[default]
    Embedded,
    /// Redis in front of the SQL table: reads from Redis, the table stays
    /// the truth, so a Redis outage logs nobody out.
    Redis(RedisSessionsTier),
}

/// `[sessions] kind = "redis"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSessionsTier {
    /// As `[cache] url`: absent means the Redis `up` manages.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest a session stays in Redis before it is re-read from SQL.
    /// Default 300.
    #[serde(default = "default_session_fast_ttl_secs")]
    pub fast_ttl_secs: u64,
}

fn default_session_fast_ttl_secs() -> u64 {
    300
}

/// The job queue tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum QueueTier {
    /// A table of the SQL store with a visibility timeout.
    Embedded {
        #[serde(flatten)]
        config: QueueConfig,
    },
}

impl Default for QueueTier {
    fn default() -> Self {
        QueueTier::Embedded {
            config: QueueConfig::default(),
        }
    }
}

/// The blob store tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BlobsTier {
    /// Files under `dir`, default `<data_dir>/blobs`.
    Embedded {
        #[serde(default)]
        dir: Option<PathBuf>,
    },
}

impl Default for BlobsTier {
    fn default() -> Self {
        BlobsTier::Embedded { dir: None }
    }
}

/// The adapters of every port, ready to share between tasks.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub cache: Arc<dyn Cache>,
    pub sessions: Arc<dyn SessionStore>,
    pub queue: Arc<dyn JobQueue>,
    pub blobs: Arc<dyn BlobStore>,
}

impl BackendsConfig {
    /// The SQLite file of the embedded SQL tier.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match &self.sql {
            SqlTier::Embedded { path } => Some(self.under_data(path.as_deref(), "scalestack.db")),
            SqlTier::Postgres(_) => None,
        }
    }

    fn under_data(&self, explicit: Option<&Path>, default: &str) -> PathBuf {
        explicit.map_or_else(|| self.data_dir.join(default), Path::to_path_buf)
    }
}

impl Backends {
    /// Opens every tier (creating embedded state and applying migrations).
    pub async fn connect(config: &BackendsConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let queue_config = match &config.queue {
            QueueTier::Embedded { config } => *config,
        };
        // The SQL tier serves the store, the durable sessions and the queue.
        let (store, sql_sessions, queue): (Arc<dyn Store>, Arc<dyn SessionStore>, Arc<dyn JobQueue>) =
            match &config.sql {
                SqlTier::Embedded { .. } => {
                    let path = config.sqlite_path().expect("embedded tier has a path");
                    let pool = store_sqlite::open(&path)
                        .await
                        .with_context(|| format!("opening SQLite database {}", path.display()))?;
                    (
                        Arc::new(store_sqlite::SqliteStore::new(pool.clone())),
                        Arc::new(store_sqlite::SqlSessionStore::new(pool.clone())),
                        Arc::new(store_sqlite::SqlJobQueue::new(pool, queue_config)),
                    )
                }
                SqlTier::Postgres(tier) => {
                    anyhow::ensure!(
                        !tier.nodes.is_empty(),
                        "sql.nodes is empty (up fills it in when it runs the PostgreSQL cluster)"
                    );
                    let router =
                        store_postgres::router::PgRouter::connect(store_postgres::router::RouterConfig {
                            nodes: tier.nodes.clone(),
                            max_connections: tier.max_connections,
                            max_lag_ms: tier.max_lag_ms,
                            probe_interval_ms: tier.probe_interval_ms,
                            replica_set: domain::consistency::ReplicaSetId::DEFAULT,
                        })
                        .await
                        .context("connecting to PostgreSQL")?;
                    router.migrate().await.context("migrating PostgreSQL")?;
                    (router.store(), router.sessions(), router.queue(queue_config))
                }
            };
        let cache: Arc<dyn Cache> = match &config.cache {
            CacheTier::Embedded { config } => Arc::new(cache::InProcessCache::new(*config)),
            CacheTier::Redis(tier) => redis_cache(tier)?,
        };
        let sessions: Arc<dyn SessionStore> = match &config.sessions {
            SessionsTier::Embedded => sql_sessions,
            SessionsTier::Redis(tier) => {
                let url = tier
                    .url
                    .clone()
                    .context("sessions.url is missing (up sets it when it manages the Redis)")?;
                let redis_config = store_redis::RedisConfig {
                    url,
                    prefix: tier.prefix.clone(),
                    timeout_ms: tier.timeout_ms,
                    ..Default::default()
                };
                let (_, fast) = store_redis::connect(&redis_config).context("configuring Redis sessions")?;
                Arc::new(store_redis::LayeredSessions::new(
                    fast,
                    sql_sessions,
                    std::time::Duration::from_secs(tier.fast_ttl_secs),
                ))
            }
        };
        let blobs: Arc<dyn BlobStore> = match &config.blobs {
            BlobsTier::Embedded { dir } => {
                let dir = config.under_data(dir.as_deref(), "blobs");
                Arc::new(
                    blob::LocalBlobStore::open(&dir)
                        .await
                        .with_context(|| format!("opening blob directory {}", dir.display()))?,
                )
            }
        };
        Ok(Backends {
            store,
            cache,
            sessions,
            queue,
            blobs,
        })
    }
}

/// The Redis cache, behind a near-cache unless that is turned off.
fn redis_cache(tier: &RedisCacheTier) -> anyhow::Result<Arc<dyn Cache>> {
    let url = tier
        .url
        .clone()
        .context("cache.url is missing (up sets it when it manages the Redis)")?;
    let redis_config = store_redis::RedisConfig {
        url,
        prefix: tier.prefix.clone(),
        timeout_ms: tier.timeout_ms,
        ttl_jitter: tier.ttl_jitter,
    };
    let (remote, _sessions) = store_redis::connect(&redis_config).context("configuring the Redis cache")?;
    if tier.near_ttl_ms == 0 {
        return Ok(Arc::new(remote));
    }
    let near = CacheConfig {
        policy: EvictionPolicy::Lru,
        max_bytes: tier.near_max_bytes,
    };
    Ok(Arc::new(cache::NearCache::new(
        near,
        std::time::Duration::from_millis(tier.near_ttl_ms),
        Arc::new(remote),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_from_toml() {
        let c: BackendsConfig = toml::from_str(
            r#"
            data_dir = "/tmp/x"
            [sql]
            kind = "embedded"
            [cache]
            kind = "embedded"
            policy = "lfu"
            max_bytes = 1024
            [queue]
            kind = "embedded"
            max_attempts = 2
            "#,
        )
        .unwrap();
        assert_eq!(
            c.cache,
            CacheTier::Embedded {
                config: CacheConfig {
                    policy: EvictionPolicy::Lfu,
                    max_bytes: 1024
                }
            }
        );
        let QueueTier::Embedded { config } = c.queue;
        assert_eq!(config.max_attempts, 2);
        assert_eq!(c.sqlite_path().unwrap(), PathBuf::from("/tmp/x/scalestack.db"));
    }

    #[test]
    fn unknown_kinds_and_keys_are_errors() {
        let e = toml::from_str::<BackendsConfig>("[cache]\nkind = \"memcached\"").unwrap_err();
        assert!(e.to_string().contains("memcached"), "{e}");
        let e = toml::from_str::<BackendsConfig>("[cache]\nkind = \"embedded\"\npolicy = \"random\"")
            .unwrap_err();
        assert!(e.to_string().contains("random"), "{e}");
        assert!(toml::from_str::<BackendsConfig>("colour = 1").is_err());
    }

    #[tokio::test]
    async fn connect_creates_embedded_state() {
        let dir = tempfile::tempdir().unwrap();
        let config = BackendsConfig {
            data_dir: dir.path().join("data"),
            ..Default::default()
        };
        let b = Backends::connect(&config).await.unwrap();
        b.store.ping().await.unwrap();
        assert!(dir.path().join("data/scalestack.db").exists());
        assert!(dir.path().join("data/blobs").is_dir());
    }
}
