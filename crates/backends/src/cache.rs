//! The cache tier (`[cache]`): an in-process cache in every process, or
//! Redis shared by every process behind an in-process near-cache.

use anyhow::Context;
use cache::{CacheConfig, EvictionPolicy};
use domain::ports::Cache;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

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

impl Default for CacheTier {
    fn default() -> Self {
        CacheTier::Embedded {
            config: CacheConfig::default(),
        }
    }
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
    #[serde(default = "crate::default_redis_prefix")]
    pub prefix: String,
    /// Deadline of each Redis call, ms; past it the call is a miss. Default 200.
    #[serde(default = "crate::default_redis_timeout_ms")]
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

fn default_ttl_jitter() -> f64 {
    0.1
}
fn default_near_ttl_ms() -> u64 {
    2000
}
fn default_near_max_bytes() -> usize {
    16 << 20
}

/// Builds the `Cache` port the tier names. The Redis client's breaker is
/// exported to `registry` (component `scalestack_redis`, `tier="cache"`).
pub fn build(tier: &CacheTier, registry: &telemetry::Registry) -> anyhow::Result<Arc<dyn Cache>> {
    let tier = match tier {
        CacheTier::Embedded { config } => return Ok(Arc::new(cache::InProcessCache::new(*config))),
        CacheTier::Redis(tier) => tier,
    };
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
    remote.register_metrics(&registry.component("scalestack_redis"), "cache");
    if tier.near_ttl_ms == 0 {
        return Ok(Arc::new(remote));
    }
    let near = CacheConfig {
        policy: EvictionPolicy::Lru,
        max_bytes: tier.near_max_bytes,
    };
    Ok(Arc::new(cache::NearCache::new(
        near,
        Duration::from_millis(tier.near_ttl_ms),
        Arc::new(remote),
    )))
}
