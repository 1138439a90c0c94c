//! The SQL store tier (`[sql]`) and the engine it opens: SQLite embedded, or
//! PostgreSQL replica sets behind the DB router. The engine serves the
//! `Store` port, and also the session store and the job queue when their
//! tiers choose a table of the SQL store.

use anyhow::Context;
use domain::ports::{JobQueue, SessionStore, Store};
use domain::QueueConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

impl Default for SqlTier {
    fn default() -> Self {
        SqlTier::Embedded { path: None }
    }
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
    /// Several replica sets instead of `nodes`: the store is sharded over
    /// them by logical shard (`store_postgres::ShardedStore`); the first
    /// is the catalog (usernames, shard map, sessions, queue). Empty in a
    /// topology: the sets `up` runs (`[postgres] sets = N`).
    #[serde(default)]
    pub sets: Vec<ReplicaSetNodes>,
    /// With `sets`: followers from which a user's photos are merged into
    /// feeds at read time instead of fanned out. Default 10 000.
    #[serde(default = "default_celebrity_followers")]
    pub celebrity_followers: i64,
    /// With `sets`: the share (0 to 1) of a process's recent requests from
    /// which a user is hot, their profile and their photos merged into
    /// feeds then served from a near-cache. 0 turns that off. Default 0.01.
    #[serde(default = "default_hot_key_share")]
    pub hot_key_share: f64,
    /// With `sets`: how long a hot read is kept, the staleness it allows.
    /// Default 1000.
    #[serde(default = "default_hot_key_ttl_ms")]
    pub hot_key_ttl_ms: u64,
    /// The nodes (of `nodes` or `sets`) in this process's own site: reads
    /// go to them first. Set by `up --site` from `[postgres] sites`.
    /// Default none (every replica alike).
    #[serde(default)]
    pub local_nodes: Vec<String>,
}

impl PostgresTier {
    /// Refuses settings no store could run by (`up` checks them when it
    /// loads a topology, a web server when it connects).
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.hot_key_share),
            "sql.hot_key_share must be between 0 and 1 (0 turns the hot-key near-cache off), not {}",
            self.hot_key_share
        );
        Ok(())
    }
}

/// One replica set of a sharded tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSetNodes {
    /// Its name (`[a-z0-9_-]`, as the shard map and the metrics name it).
    pub name: String,
    /// URL of every node, as [`PostgresTier::nodes`].
    pub nodes: Vec<String>,
}

fn default_celebrity_followers() -> i64 {
    store_postgres::ShardedConfig::default().celebrity_followers
}
fn default_hot_key_share() -> f64 {
    store_postgres::ShardedConfig::default().hot_share
}
fn default_hot_key_ttl_ms() -> u64 {
    store_postgres::ShardedConfig::default().hot_ttl.as_millis() as u64
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

impl SqlTier {
    /// The SQLite file of the embedded tier under `data_dir`; `None` for
    /// PostgreSQL.
    pub fn sqlite_path(&self, data_dir: &Path) -> Option<PathBuf> {
        match self {
            SqlTier::Embedded { path } => {
                Some(path.clone().unwrap_or_else(|| data_dir.join("scalestack.db")))
            }
            SqlTier::Postgres(_) => None,
        }
    }
}

/// An open SQL engine: what the `[sql]` tier chose, connected and migrated.
/// Other tiers that keep their data in the SQL store (sessions, the queue)
/// borrow it.
pub enum SqlEngine {
    /// One SQLite database shared by every adapter.
    Sqlite(store_sqlite::SqlitePool),
    /// The DB router over the PostgreSQL nodes.
    Postgres(store_postgres::router::PgRouter),
    /// A router per replica set, the store sharded over them; sessions and
    /// the queue on the catalog set.
    Sharded(store_postgres::ShardedStore),
}

impl SqlEngine {
    /// Opens (creating an embedded database) and migrates the tier's engine.
    /// The router's metrics go to `registry`.
    pub async fn open(
        tier: &SqlTier,
        data_dir: &Path,
        registry: &telemetry::Registry,
    ) -> anyhow::Result<Self> {
        match tier {
            SqlTier::Embedded { .. } => {
                let path = tier.sqlite_path(data_dir).expect("embedded tier has a path");
                let pool = store_sqlite::open(&path)
                    .await
                    .with_context(|| format!("opening SQLite database {}", path.display()))?;
                Ok(SqlEngine::Sqlite(pool))
            }
            SqlTier::Postgres(tier) if !tier.sets.is_empty() => {
                anyhow::ensure!(tier.nodes.is_empty(), "sql: give nodes or sets, not both");
                let mut routers = std::collections::BTreeMap::new();
                for set in &tier.sets {
                    let id = domain::consistency::ReplicaSetId::parse(&set.name)
                        .map_err(|e| anyhow::anyhow!("sql.sets: {:?}: {e}", set.name))?;
                    let router = connect_router(tier, &set.nodes, id, registry)
                        .await
                        .with_context(|| format!("replica set {}", set.name))?;
                    anyhow::ensure!(
                        routers.insert(set.name.clone(), router).is_none(),
                        "sql.sets: {:?} twice",
                        set.name
                    );
                }
                tier.check()?;
                let config = store_postgres::ShardedConfig {
                    celebrity_followers: tier.celebrity_followers,
                    hot_share: tier.hot_key_share,
                    hot_ttl: std::time::Duration::from_millis(tier.hot_key_ttl_ms),
                    ..Default::default()
                };
                let connector: store_postgres::Connector = {
                    let (tier, registry) = (tier.clone(), registry.clone());
                    std::sync::Arc::new(move |name: String, nodes: Vec<String>| {
                        let (tier, registry) = (tier.clone(), registry.clone());
                        Box::pin(async move {
                            let id = domain::consistency::ReplicaSetId::parse(&name)
                                .map_err(|e| domain::StoreError::Unavailable(format!("set {name:?}: {e}")))?;
                            connect_router(&tier, &nodes, id, &registry)
                                .await
                                .map_err(|e| domain::StoreError::Unavailable(format!("set {name:?}: {e:#}")))
                        })
                    })
                };
                let store = store_postgres::ShardedStore::connect(
                    &tier.sets[0].name,
                    routers,
                    config,
                    Some(connector),
                )
                .await
                .context("opening the sharded store")?;
                // Where a process that meets a set in a later map finds it.
                for set in &tier.sets {
                    store
                        .register_set(&set.name, &set.nodes)
                        .await
                        .with_context(|| format!("registering replica set {}", set.name))?;
                }
                store
                    .register_metrics(&registry.component("scalestack"))
                    .context("registering the sharded store's metrics")?;
                Ok(SqlEngine::Sharded(store))
            }
            SqlTier::Postgres(tier) => {
                anyhow::ensure!(
                    !tier.nodes.is_empty(),
                    "sql.nodes is empty (up fills it in when it runs the PostgreSQL cluster)"
                );
                let router = connect_router(
                    tier,
                    &tier.nodes,
                    domain::consistency::ReplicaSetId::DEFAULT,
                    registry,
                )
                .await?;
                Ok(SqlEngine::Postgres(router))
            }
        }
    }

    /// The `Store` port.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            SqlEngine::Sqlite(pool) => Arc::new(store_sqlite::SqliteStore::new(pool.clone())),
            SqlEngine::Postgres(router) => router.store(),
            SqlEngine::Sharded(store) => Arc::new(store.clone()),
        }
    }

    /// Sessions in a table of the SQL store.
    pub fn sessions(&self) -> Arc<dyn SessionStore> {
        match self {
            SqlEngine::Sqlite(pool) => Arc::new(store_sqlite::SqlSessionStore::new(pool.clone())),
            SqlEngine::Postgres(router) => router.sessions(),
            SqlEngine::Sharded(store) => store.catalog().sessions(),
        }
    }

    /// A job queue in a table of the SQL store.
    pub fn queue(&self, config: QueueConfig) -> Arc<dyn JobQueue> {
        match self {
            SqlEngine::Sqlite(pool) => Arc::new(store_sqlite::SqlJobQueue::new(pool.clone(), config)),
            SqlEngine::Postgres(router) => router.queue(config),
            SqlEngine::Sharded(store) => store.catalog().queue(config),
        }
    }
}

/// A migrated DB router over `nodes`, its metrics in `registry`.
async fn connect_router(
    tier: &PostgresTier,
    nodes: &[String],
    replica_set: domain::consistency::ReplicaSetId,
    registry: &telemetry::Registry,
) -> anyhow::Result<store_postgres::router::PgRouter> {
    let router = store_postgres::router::PgRouter::connect(store_postgres::router::RouterConfig {
        nodes: nodes.to_vec(),
        max_connections: tier.max_connections,
        max_lag_ms: tier.max_lag_ms,
        probe_interval_ms: tier.probe_interval_ms,
        replica_set,
        local: tier.local_nodes.clone(),
    })
    .await
    .context("connecting to PostgreSQL")?;
    router.migrate().await.context("migrating PostgreSQL")?;
    router
        .register_metrics(&registry.component("scalestack"))
        .context("registering the DB router's metrics")?;
    Ok(router)
}
