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
    /// The other sites' cache Redis URLs (`up --site` sets them): every
    /// delete, the invalidation on write, is sent to them too, so another
    /// site serves a value this site's write made stale for at most the
    /// delete's trip plus its near-cache TTL. Default none.
    #[serde(default)]
    pub peers: Vec<String>,
    /// With `peers`: when the second delete goes (ms), which removes a
    /// stale value another site read from a lagging replica and cached
    /// between the two. Keep it at `[sql] max_lag_ms` or above. Default 1000.
    #[serde(default = "default_peer_again_ms")]
    pub peer_again_ms: u64,
    /// Size bound of the near-cache. Default 16 MiB.
    #[serde(default = "default_near_max_bytes")]
    pub near_max_bytes: usize,
}

fn default_ttl_jitter() -> f64 {
    0.1
}
fn default_peer_again_ms() -> u64 {
    1000
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
    let mut remote: Arc<dyn Cache> = Arc::new(remote);
    if !tier.peers.is_empty() {
        let mut peers: Vec<Arc<dyn Cache>> = Vec::new();
        for url in &tier.peers {
            let config = store_redis::RedisConfig {
                url: url.clone(),
                ..redis_config.clone()
            };
            let (peer, _) = store_redis::connect(&config).context("configuring a peer site's Redis cache")?;
            peers.push(Arc::new(peer));
        }
        // Again after the replicas' lag ceiling (see PeerInvalidation).
        let fan_out = cache::PeerInvalidation::new(remote, peers, Duration::from_millis(tier.peer_again_ms));
        let stats = fan_out.stats();
        let counter = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "cache_peer_invalidations_total",
                "Deletes sent to the other sites' caches, by result (sent, failed).",
            ),
            &["result"],
        )?;
        registry
            .component("scalestack")
            .register(Box::new(telemetry::Sampled::new(
                counter,
                move |c: &prometheus::IntCounterVec| {
                    use std::sync::atomic::Ordering::Relaxed;
                    let set = |label: &str, v: u64| {
                        let m = c.with_label_values(&[label]);
                        m.inc_by(v.saturating_sub(m.get()));
                    };
                    set("sent", stats.sent.load(Relaxed));
                    set("failed", stats.failed.load(Relaxed));
                },
            )))?;
        remote = Arc::new(fan_out);
    }
    if tier.near_ttl_ms == 0 {
        return Ok(remote);
    }
    let near = CacheConfig {
        policy: EvictionPolicy::Lru,
        max_bytes: tier.near_max_bytes,
    };
    Ok(Arc::new(cache::NearCache::new(
        near,
        Duration::from_millis(tier.near_ttl_ms),
        remote,
    )))
}
