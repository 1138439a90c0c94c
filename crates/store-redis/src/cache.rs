//! The cache port on Redis: `GET`, `SET PX` with a jittered TTL, `DEL`,
//! and load claims (`SET NX PX` on `<prefix>load:<key>`) so that a stampede
//! on a missing key makes one store query across every web server.

use crate::breaker::RedisStats;
use crate::client::Client;
use async_trait::async_trait;
use bytes::Bytes;
use domain::{ports::Cache, BackendError};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

/// A cache shared by every web server, under `<prefix>cache:<key>`; load
/// claims under `<prefix>load:<key>`.
///
/// Every error (including a timeout or an open circuit breaker) is a
/// [`BackendError::Unavailable`] that the caller counts and treats as a miss.
#[derive(Clone)]
pub struct RedisCache {
    client: Arc<Client>,
    prefix: String,
    claim_prefix: String,
    ttl_jitter: f64,
}

impl RedisCache {
    pub(crate) fn new(client: Arc<Client>, prefix: &str, ttl_jitter: f64) -> Self {
        RedisCache {
            client,
            prefix: format!("{prefix}cache:"),
            claim_prefix: format!("{prefix}load:"),
            ttl_jitter,
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Counters of the connection, shared with the session store made by the
    /// same [`connect`](crate::connect).
    pub fn stats(&self) -> RedisStats {
        self.client.stats()
    }

    /// Exports the connection's breaker state and counters to `registry`
    /// (`breaker_open`, `failures_total`, `skips_total`, labelled `tier`).
    pub fn register_metrics(&self, registry: &prometheus::Registry, tier: &str) {
        crate::metrics::register(&self.client, registry, tier);
    }

    /// One `PING` round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), BackendError> {
        self.client.run::<()>(&redis::cmd("PING")).await
    }
}

/// `ttl` scaled by a uniform factor in `[1 - jitter, 1 + jitter]`, in whole
/// milliseconds and never below 1 ms (Redis refuses an expiry of 0).
pub(crate) fn jittered_ttl_ms(ttl: Duration, jitter: f64, rng: &mut impl Rng) -> u64 {
    let ms = ttl.as_millis().min(u64::MAX as u128) as f64;
    let factor = if jitter > 0.0 {
        1.0 + rng.gen_range(-jitter..=jitter)
    } else {
        1.0
    };
    // `as` saturates, so an absurd TTL cannot wrap around.
    ((ms * factor).round() as u64).max(1)
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        let value: Option<Vec<u8>> = self.client.run(redis::cmd("GET").arg(self.key(key))).await?;
        Ok(value.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), BackendError> {
        let px = jittered_ttl_ms(ttl, self.ttl_jitter, &mut rand::thread_rng());
        self.client
            .run::<()>(
                redis::cmd("SET")
                    .arg(self.key(key))
                    .arg(value.as_ref())
                    .arg("PX")
                    .arg(px),
            )
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.client.run::<()>(redis::cmd("DEL").arg(self.key(key))).await
    }

    async fn claim_load(&self, key: &str, ttl: Duration) -> bool {
        let claim = redis::cmd("SET")
            .arg(format!("{}{key}", self.claim_prefix))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().clamp(1, u64::MAX as u128) as u64)
            .clone();
        // `OK` when claimed, nil when another holds it; an error (Redis down)
        // means nobody can coordinate: load.
        !matches!(self.client.run::<Option<String>>(&claim).await, Ok(None))
    }

    async fn release_load(&self, key: &str) {
        let _ = self
            .client
            .run::<()>(redis::cmd("DEL").arg(format!("{}{key}", self.claim_prefix)))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn jitter_stays_within_bounds_and_spreads() {
        let mut rng = StdRng::seed_from_u64(7);
        let ttl = Duration::from_secs(100);
        let samples: Vec<u64> = (0..10_000).map(|_| jittered_ttl_ms(ttl, 0.1, &mut rng)).collect();
        assert!(samples.iter().all(|&ms| (90_000..=110_000).contains(&ms)));
        // Spread over the whole interval, not bunched at the nominal TTL.
        assert!(samples.iter().any(|&ms| ms < 92_000));
        assert!(samples.iter().any(|&ms| ms > 108_000));
    }

    #[test]
    fn zero_jitter_is_exact_and_ttl_is_at_least_one_ms() {
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(jittered_ttl_ms(Duration::from_millis(1234), 0.0, &mut rng), 1234);
        assert_eq!(jittered_ttl_ms(Duration::ZERO, 0.5, &mut rng), 1);
        assert_eq!(jittered_ttl_ms(Duration::from_micros(10), 0.0, &mut rng), 1);
        assert!(jittered_ttl_ms(Duration::MAX, 0.1, &mut rng) > 0);
    }
}
