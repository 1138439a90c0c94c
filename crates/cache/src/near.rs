//! A near-cache: a small in-process cache with a short TTL in front of a
//! shared cache (Redis). Hot keys (the seed's celebrity problem: one user's
//! photos taking most reads) are then served from the web server's memory
//! instead of a network round trip each; the price is that another server's
//! invalidation reaches this one only when the near entry expires, so the
//! near TTL is the staleness bound and is kept short (default 2 s).
//!
//! Remote errors on reads degrade to a miss only after the near layer was
//! tried; remote errors are passed up so the caller can count them.

use crate::{CacheConfig, InProcessCache};
use async_trait::async_trait;
use bytes::Bytes;
use domain::ports::Cache;
use domain::BackendError;
use std::sync::Arc;
use std::time::Duration;

/// An in-process layer in front of a shared cache.
pub struct NearCache {
    near: InProcessCache,
    remote: Arc<dyn Cache>,
    near_ttl: Duration,
}

impl NearCache {
    /// `near` bounds the local layer's size; entries live at most `near_ttl`.
    pub fn new(near: CacheConfig, near_ttl: Duration, remote: Arc<dyn Cache>) -> Self {
        NearCache {
            near: InProcessCache::new(near),
            remote,
            near_ttl,
        }
    }
}

#[async_trait]
impl Cache for NearCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        if let Ok(Some(v)) = self.near.get(key).await {
            return Ok(Some(v));
        }
        let v = self.remote.get(key).await?;
        if let Some(v) = &v {
            let _ = self.near.set(key, v.clone(), self.near_ttl).await;
        }
        Ok(v)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), BackendError> {
        let _ = self.near.set(key, value.clone(), ttl.min(self.near_ttl)).await;
        self.remote.set(key, value, ttl).await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let _ = self.near.delete(key).await;
        self.remote.delete(key).await
    }

    async fn claim_load(&self, key: &str, ttl: Duration) -> bool {
        self.remote.claim_load(key, ttl).await
    }

    async fn release_load(&self, key: &str) {
        self.remote.release_load(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// A remote cache that counts reads (a stand-in for Redis in a unit test).
    #[derive(Default)]
    struct Counting {
        inner: Option<InProcessCache>,
        gets: AtomicUsize,
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl Cache for Counting {
        async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
            self.gets.fetch_add(1, SeqCst);
            if self.down.load(SeqCst) {
                return Err(BackendError::Unavailable("down".into()));
            }
            self.inner.as_ref().unwrap().get(key).await
        }
        async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), BackendError> {
            self.inner.as_ref().unwrap().set(key, value, ttl).await
        }
        async fn delete(&self, key: &str) -> Result<(), BackendError> {
            self.inner.as_ref().unwrap().delete(key).await
        }
    }

    /// The `Cache` port's battery on a near layer over an in-process
    /// "remote" (claims are then those of one process: always granted).
    #[tokio::test]
    async fn conforms_to_the_cache_port() {
        let remote = Arc::new(InProcessCache::new(CacheConfig::default()));
        let near = NearCache::new(CacheConfig::default(), Duration::from_secs(2), remote);
        conformance::cache::run_all(&near, conformance::cache::Claims::AlwaysGranted).await;
    }

    /// Another server's delete reaches this one's near layer only when the
    /// near entry expires: the near TTL bounds the staleness, however long
    /// the entry's own TTL.
    #[tokio::test]
    async fn another_servers_delete_is_seen_once_the_near_ttl_ran_out() {
        let shared: Arc<dyn Cache> = Arc::new(InProcessCache::new(CacheConfig::default()));
        let v = Bytes::from_static(b"v");
        let server = |near_ttl| NearCache::new(CacheConfig::default(), near_ttl, shared.clone());

        // The price: within the near TTL, this server still serves it.
        let (this, other) = (server(Duration::from_secs(60)), server(Duration::from_secs(60)));
        this.set("k", v.clone(), Duration::from_secs(60)).await.unwrap();
        other.delete("k").await.unwrap();
        assert_eq!(shared.get("k").await.unwrap(), None);
        assert_eq!(this.get("k").await.unwrap(), Some(v.clone()), "stale");
        this.delete("k").await.unwrap();
        assert_eq!(
            this.get("k").await.unwrap(),
            None,
            "its own delete is seen at once"
        );

        // The bound: once the near entry expired, the delete is seen.
        let (this, other) = (
            server(Duration::from_millis(50)),
            server(Duration::from_millis(50)),
        );
        this.set("k", v.clone(), Duration::from_secs(60)).await.unwrap();
        other.delete("k").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while this.get("k").await.unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "stale past the near TTL");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn hot_keys_are_served_locally_and_writes_go_through() {
        let remote = Arc::new(Counting {
            inner: Some(InProcessCache::new(CacheConfig::default())),
            ..Default::default()
        });
        let near = NearCache::new(CacheConfig::default(), Duration::from_secs(60), remote.clone());
        remote
            .set("hot", Bytes::from_static(b"v"), Duration::from_secs(60))
            .await
            .unwrap();
        for _ in 0..100 {
            assert_eq!(near.get("hot").await.unwrap().as_deref(), Some(&b"v"[..]));
        }
        assert_eq!(remote.gets.load(SeqCst), 1, "one remote read, then local");
        near.delete("hot").await.unwrap();
        assert_eq!(
            near.get("hot").await.unwrap(),
            None,
            "a local delete reaches both layers"
        );
        near.set("k", Bytes::from_static(b"x"), Duration::from_secs(60))
            .await
            .unwrap();
        assert!(remote.inner.as_ref().unwrap().get("k").await.unwrap().is_some());
        // With the remote down, what the near layer holds is still served.
        remote.down.store(true, SeqCst);
        assert!(near.get("k").await.unwrap().is_some());
        assert!(near.get("other").await.is_err(), "remote errors reach the caller");
    }
}
