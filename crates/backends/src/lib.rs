//! The one place that knows which adapter serves which port. A
//! [`BackendsConfig`] is the *resolved* configuration a process is handed
//! (every address filled in; the topology's model is `up`'s own): per tier
//! a tagged `kind`, and one builder per port (`sql`, `cache`, `sessions`,
//! `queue`, `blobs`) turns its tier into an adapter behind `Arc<dyn Port>`.
//! Each tier chooses its engine on its own; tiers that keep their data in
//! the SQL store (sessions, the queue) borrow the open [`SqlEngine`].
//! Every builder is handed the process's metrics registry.

pub mod blobs;
pub mod cache;
pub mod queue;
pub mod sessions;
pub mod sql;

pub use self::blobs::BlobsTier;
pub use self::cache::{CacheTier, RedisCacheTier};
pub use self::queue::QueueTier;
pub use self::sessions::{RedisSessionsTier, SessionsTier};
pub use self::sql::{PostgresTier, ReplicaSetNodes, SqlEngine, SqlTier};
pub use ::cache::{CacheConfig, EvictionPolicy};
pub use domain::QueueConfig;

use anyhow::Context;
use domain::ports::{BlobStore, Cache, JobQueue, SessionStore, Store};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Where every shared tier lives. Deserialised from the configuration `up`
/// hands a child (or a hand-written one).
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

pub(crate) fn default_redis_prefix() -> String {
    "scalestack:".into()
}

pub(crate) fn default_redis_timeout_ms() -> u64 {
    200
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

impl BackendsConfig {
    /// The SQLite file of the embedded SQL tier.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.sql.sqlite_path(&self.data_dir)
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
    /// The registry the adapters registered their metrics in; the process
    /// adds its own components and serves it on `/metrics`.
    pub metrics: telemetry::Registry,
    /// The sharded SQL store's own handle (its map and report), when the
    /// tier is sharded.
    pub shards: Option<store_postgres::ShardedStore>,
}

impl Backends {
    /// Opens every tier (creating embedded state and applying migrations),
    /// each with its own builder. The builders are handed the process's
    /// metrics registry, made here and kept in [`Backends::metrics`], to
    /// which the process adds its own components and serves on `/metrics`.
    pub async fn connect(config: &BackendsConfig) -> anyhow::Result<Self> {
        let registry = &telemetry::Registry::new();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let sql = SqlEngine::open(&config.sql, &config.data_dir, registry).await?;
        Ok(Backends {
            store: sql.store(),
            cache: self::cache::build(&config.cache, registry)?,
            sessions: self::sessions::build(&config.sessions, &sql, registry)?,
            queue: self::queue::build(&config.queue, &sql, registry).await?,
            blobs: self::blobs::build(&config.blobs, &config.data_dir).await?,
            metrics: registry.clone(),
            shards: match &sql {
                SqlEngine::Sharded(store) => Some(store.clone()),
                _ => None,
            },
        })
    }
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
        assert_eq!(c.queue.config().max_attempts, 2);
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
