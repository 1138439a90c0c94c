//! The session store tier (`[sessions]`): a table of the SQL store, or
//! Redis in front of that table.

use crate::sql::SqlEngine;
use anyhow::Context;
use domain::ports::SessionStore;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

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
    /// Prefix of every key. Default `scalestack:`.
    #[serde(default = "crate::default_redis_prefix")]
    pub prefix: String,
    /// Deadline of each Redis call, ms. Default 200.
    #[serde(default = "crate::default_redis_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest a session stays in Redis before it is re-read from SQL.
    /// Default 300.
    #[serde(default = "default_session_fast_ttl_secs")]
    pub fast_ttl_secs: u64,
}

fn default_session_fast_ttl_secs() -> u64 {
    300
}

/// Builds the `SessionStore` port the tier names; the durable sessions are
/// always the SQL store's table. Redis fallbacks and the breaker are
/// exported to `registry`.
pub fn build(
    tier: &SessionsTier,
    sql: &SqlEngine,
    registry: &telemetry::Registry,
) -> anyhow::Result<Arc<dyn SessionStore>> {
    let durable = sql.sessions();
    let tier = match tier {
        SessionsTier::Embedded => return Ok(durable),
        SessionsTier::Redis(tier) => tier,
    };
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
    fast.register_metrics(&registry.component("scalestack_redis"), "sessions");
    Ok(Arc::new(
        store_redis::LayeredSessions::new(fast, durable, Duration::from_secs(tier.fast_ttl_secs))
            .with_metrics(&registry.component("scalestack")),
    ))
}
