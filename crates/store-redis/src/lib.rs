//! Redis adapters of two ports: [`RedisCache`] (`domain::ports::Cache`) and
//! [`RedisSessionStore`] (`domain::ports::SessionStore`), sharing one
//! connection made by [`connect`].
//!
//! A cache is never a single point of failure, so every call has a deadline
//! ([`RedisConfig::timeout_ms`]) and goes through a circuit breaker: after a
//! failure Redis is skipped for a back-off (500 ms, doubling to 5 s) and
//! calls fail at once, until one probe call succeeds. Keys live under
//! [`RedisConfig::prefix`]: `<prefix>cache:<key>` and
//! `<prefix>session:<sha256(token) hex>`.

mod breaker;
mod cache;
mod client;
mod metrics;
mod sessions;

pub use breaker::RedisStats;
pub use cache::RedisCache;
pub use sessions::{LayeredSessions, RedisSessionStore};

use domain::BackendError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Configuration of the Redis adapters (the `[redis]` table of a topology).
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Server URL, `redis://[:password@]host:port[/db]`. Default
    /// `redis://127.0.0.1:6379`. Never printed: it may hold a password.
    #[serde(default = "default_url")]
    pub url: String,
    /// Prepended to every key, so several deployments (or tests) can share
    /// one Redis. Default `scalestack:`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Deadline of every Redis call, connecting included, in milliseconds.
    /// Default 200.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Cache entries live `ttl × (1 ± ttl_jitter)`, drawn uniformly per
    /// `set`, so that entries set together do not expire together. In
    /// `[0, 1)`; default 0.1. Sessions are not jittered.
    #[serde(default = "default_ttl_jitter")]
    pub ttl_jitter: f64,
}

fn default_url() -> String {
    "redis://127.0.0.1:6379".into()
}

fn default_prefix() -> String {
    "scalestack:".into()
}

fn default_timeout_ms() -> u64 {
    200
}

fn default_ttl_jitter() -> f64 {
    0.1
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: default_url(),
            prefix: default_prefix(),
            timeout_ms: default_timeout_ms(),
            ttl_jitter: default_ttl_jitter(),
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"***")
            .field("prefix", &self.prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("ttl_jitter", &self.ttl_jitter)
            .finish()
    }
}

/// The cache and the session store on one shared, self-reconnecting
/// connection (they also share the breaker and its [`RedisStats`]).
///
/// No I/O happens here: the first call connects, so a process starts even
/// while Redis is down (use [`RedisCache::ping`] for readiness). Errors are
/// a malformed URL or out-of-range settings, as [`BackendError::Invalid`].
/// Must be called inside a Tokio runtime.
pub fn connect(config: &RedisConfig) -> Result<(RedisCache, RedisSessionStore), BackendError> {
    if config.timeout_ms == 0 {
        return Err(BackendError::Invalid("redis timeout_ms must be > 0".into()));
    }
    if !(0.0..1.0).contains(&config.ttl_jitter) {
        return Err(BackendError::Invalid("redis ttl_jitter must be in [0, 1)".into()));
    }
    let client = Arc::new(client::Client::new(
        &config.url,
        Duration::from_millis(config.timeout_ms),
    )?);
    Ok((
        RedisCache::new(client.clone(), &config.prefix, config.ttl_jitter),
        RedisSessionStore::new(client, &config.prefix),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: RedisConfig = toml::from_str("").unwrap();
        assert_eq!(c, RedisConfig::default());
        assert_eq!(c.prefix, "scalestack:");
        assert_eq!(c.timeout_ms, 200);
        assert_eq!(c.ttl_jitter, 0.1);
        let c: RedisConfig = toml::from_str("url = 'redis://:hunter2@h:1'\ntimeout_ms = 50").unwrap();
        assert_eq!(c.timeout_ms, 50);
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(toml::from_str::<RedisConfig>("timeout = 5").is_err());
    }

    #[tokio::test]
    async fn connect_refuses_bad_settings() {
        let bad = |c: RedisConfig| matches!(connect(&c), Err(BackendError::Invalid(_)));
        assert!(bad(RedisConfig {
            url: "http://nope".into(),
            ..RedisConfig::default()
        }));
        assert!(bad(RedisConfig {
            timeout_ms: 0,
            ..RedisConfig::default()
        }));
        assert!(bad(RedisConfig {
            ttl_jitter: 1.0,
            ..RedisConfig::default()
        }));
        assert!(bad(RedisConfig {
            ttl_jitter: f64::NAN,
            ..RedisConfig::default()
        }));
        // Lazy: no server needed to build the adapters.
        assert!(connect(&RedisConfig::default()).is_ok());
    }
}
