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
pub use store_sqlite::QueueConfig;

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
        let pool = match &config.sql {
            SqlTier::Embedded { .. } => {
                let path = config.sqlite_path().expect("embedded tier has a path");
                store_sqlite::open(&path)
                    .await
                    .with_context(|| format!("opening SQLite database {}", path.display()))?
            }
        };
        let store: Arc<dyn Store> = Arc::new(store_sqlite::SqliteStore::new(pool.clone()));
        let cache: Arc<dyn Cache> = match &config.cache {
            CacheTier::Embedded { config } => Arc::new(cache::InProcessCache::new(*config)),
        };
        let sessions: Arc<dyn SessionStore> = match &config.sessions {
            SessionsTier::Embedded => Arc::new(store_sqlite::SqlSessionStore::new(pool.clone())),
        };
        let queue: Arc<dyn JobQueue> = match &config.queue {
            QueueTier::Embedded { config } => Arc::new(store_sqlite::SqlJobQueue::new(pool.clone(), *config)),
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
