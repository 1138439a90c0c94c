//! The session store port on Redis. Tokens are 256 random bits; only their
//! SHA-256 is stored, under `<prefix>session:<hex>`, and Redis expires the
//! key with the session.

use crate::breaker::RedisStats;
use crate::client::Client;
use async_trait::async_trait;
use domain::ports::SessionStore;
use domain::{now_millis, BackendError, Session, SessionToken, UserId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Sessions in Redis. Unlike the cache, its errors are real errors: the
/// caller decides whether a request without a readable session proceeds.
#[derive(Clone)]
pub struct RedisSessionStore {
    client: Arc<Client>,
    prefix: String,
}

/// What is stored under a session key.
#[derive(Serialize, Deserialize)]
struct Record {
    user_id: i64,
    expires_at_ms: i64,
}

impl RedisSessionStore {
    pub(crate) fn new(client: Arc<Client>, prefix: &str) -> Self {
        RedisSessionStore {
            client,
            prefix: format!("{prefix}session:"),
        }
    }

    /// The Redis key of a token.
    fn key(&self, token: &SessionToken) -> String {
        format!("{}{}", self.prefix, token.digest())
    }

    /// Counters of the connection, shared with the cache made by the same
    /// [`connect`](crate::connect).
    pub fn stats(&self) -> RedisStats {
        self.client.stats()
    }

    /// Exports the connection's breaker state and counters to `registry`
    /// (`breaker_open`, `failures_total`, `skips_total`, labelled `tier`).
    pub fn register_metrics(&self, registry: &prometheus::Registry, tier: &str) {
        crate::metrics::register(&self.client, registry, tier);
    }

    /// Stores a session issued elsewhere (by the durable store a
    /// [`LayeredSessions`] fronts), for at most `ttl`.
    pub async fn put(
        &self,
        token: &SessionToken,
        session: &Session,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        let left = session.expires_at_ms.saturating_sub(now_millis());
        let px = (left.min(ttl.as_millis().min(i64::MAX as u128 / 2) as i64)).max(1);
        let record = Record {
            user_id: session.user_id.0,
            expires_at_ms: session.expires_at_ms,
        };
        let json = serde_json::to_vec(&record).expect("a record serialises");
        self.client
            .run::<()>(redis::cmd("SET").arg(self.key(token)).arg(json).arg("PX").arg(px))
            .await
    }
}

/// Sessions in Redis in front of a durable session store (SQL): reads hit
/// Redis and fall back to the durable store on a miss (then refill Redis)
/// or on any Redis error, so a Redis outage or restart logs nobody out.
/// Logout deletes from Redis first and fails if Redis cannot be reached:
/// otherwise a stale Redis copy could keep a logged-out token working.
pub struct LayeredSessions {
    fast: RedisSessionStore,
    durable: Arc<dyn SessionStore>,
    /// Longest a session stays in Redis before it is re-read from the
    /// durable store.
    fast_ttl: Duration,
    /// Session reads served by the durable store because Redis failed. The
    /// outage itself is logged once, when the circuit breaker opens.
    fallbacks: prometheus::IntCounter,
}

impl LayeredSessions {
    /// Redis sessions (`fast`, kept at most `fast_ttl`) in front of
    /// `durable`. Fallbacks are counted but exported nowhere until
    /// [`LayeredSessions::with_metrics`].
    pub fn new(fast: RedisSessionStore, durable: Arc<dyn SessionStore>, fast_ttl: Duration) -> Self {
        LayeredSessions {
            fast,
            durable,
            fast_ttl,
            fallbacks: prometheus::IntCounter::new(FALLBACKS_NAME, FALLBACKS_HELP).expect("valid metric"),
        }
    }

    /// Exports the fallback count as `session_redis_fallbacks_total` in
    /// `registry` (the web tier's is prefixed `scalestack_`).
    pub fn with_metrics(self, registry: &prometheus::Registry) -> Self {
        let _ = registry.register(Box::new(self.fallbacks.clone()));
        self
    }

    /// Session reads served by the durable store because Redis failed.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.get()
    }
}

const FALLBACKS_NAME: &str = "session_redis_fallbacks_total";
const FALLBACKS_HELP: &str = "Session reads served from SQL because Redis failed";

#[async_trait]
impl SessionStore for LayeredSessions {
    async fn create(&self, user: UserId, ttl: Duration) -> Result<SessionToken, BackendError> {
        let token = self.durable.create(user, ttl).await?;
        let session = Session {
            user_id: user,
            expires_at_ms: now_millis().saturating_add(ttl.as_millis().min(i64::MAX as u128 / 2) as i64),
        };
        if let Err(e) = self.fast.put(&token, &session, self.fast_ttl).await {
            tracing::warn!(error = %e, "session not copied to redis; it will be read from the store");
        }
        Ok(token)
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<Session>, BackendError> {
        match self.fast.get(token).await {
            Ok(Some(s)) => return Ok(Some(s)),
            Ok(None) => {}
            Err(e) => {
                self.fallbacks.inc();
                tracing::debug!(error = %e, "redis unavailable for sessions; reading the store");
                return self.durable.get(token).await;
            }
        }
        let found = self.durable.get(token).await?;
        if let Some(s) = &found {
            let _ = self.fast.put(token, s, self.fast_ttl).await;
        }
        Ok(found)
    }

    async fn delete(&self, token: &SessionToken) -> Result<(), BackendError> {
        self.fast.delete(token).await?;
        self.durable.delete(token).await
    }
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(&self, user: UserId, ttl: Duration) -> Result<SessionToken, BackendError> {
        let token = SessionToken::generate();
        // Redis refuses an expiry of 0; a 1 ms session is as good as dead.
        let px = (ttl.as_millis().min(i64::MAX as u128 / 2) as i64).max(1);
        let record = Record {
            user_id: user.0,
            expires_at_ms: now_millis().saturating_add(px),
        };
        let json = serde_json::to_vec(&record).expect("a record serialises");
        // NX: a (2^-256 unlikely) token collision fails rather than hijacks.
        let reply: redis::Value = self
            .client
            .run(
                redis::cmd("SET")
                    .arg(self.key(&token))
                    .arg(json)
                    .arg("PX")
                    .arg(px)
                    .arg("NX"),
            )
            .await?;
        match reply {
            redis::Value::Nil => Err(BackendError::Unavailable("session token collision".into())),
            _ => Ok(token),
        }
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<Session>, BackendError> {
        let value: Option<Vec<u8>> = self.client.run(redis::cmd("GET").arg(self.key(token))).await?;
        let Some(value) = value else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(&value)
            .map_err(|e| BackendError::Unavailable(format!("corrupt session record: {e}")))?;
        // Redis expires the key itself; this guards against its clock being
        // behind ours.
        if record.expires_at_ms <= now_millis() {
            return Ok(None);
        }
        Ok(Some(Session {
            user_id: UserId(record.user_id),
            expires_at_ms: record.expires_at_ms,
        }))
    }

    async fn delete(&self, token: &SessionToken) -> Result<(), BackendError> {
        self.client
            .run::<()>(redis::cmd("DEL").arg(self.key(token)))
            .await
    }
}
