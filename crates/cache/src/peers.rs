//! Invalidation across sites: each site has its own shared cache (its
//! Redis), and a write in one site must not leave the others serving the
//! value it made stale until their TTL. [`PeerInvalidation`] sends every
//! delete (the invalidation on write) to the other sites' caches as well,
//! in the background: a site that is down or slow delays no write, and
//! its cache comes back empty anyway (a cache restarts cold). Reads and
//! fills stay local.
//!
//! Each peer gets the delete twice: at once, and again `again_after`
//! later. A read in the other site between the two may miss, load the row
//! from a replica that has not replayed the write yet and fill the cache
//! with the old value; the second delete, after the replicas' lag ceiling,
//! removes that ("delayed double delete"), so the stale window is bounded
//! by `again_after` plus the near-cache TTL instead of the cache TTL.

use async_trait::async_trait;
use bytes::Bytes;
use domain::ports::Cache;
use domain::BackendError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A site's cache with the other sites' caches to invalidate.
pub struct PeerInvalidation {
    local: Arc<dyn Cache>,
    peers: Vec<Arc<dyn Cache>>,
    again_after: Duration,
    stats: Arc<PeerStats>,
}

/// Deletes sent to the peers, by outcome.
#[derive(Debug, Default)]
pub struct PeerStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
}

impl PeerInvalidation {
    /// `local` serves reads and fills; every delete also goes to `peers`,
    /// at once and again `again_after` later.
    pub fn new(local: Arc<dyn Cache>, peers: Vec<Arc<dyn Cache>>, again_after: Duration) -> Self {
        PeerInvalidation {
            local,
            peers,
            again_after,
            stats: Arc::default(),
        }
    }

    /// The peer deletes so far (for metrics).
    pub fn stats(&self) -> Arc<PeerStats> {
        self.stats.clone()
    }
}

#[async_trait]
impl Cache for PeerInvalidation {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        self.local.get(key).await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), BackendError> {
        self.local.set(key, value, ttl).await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        for peer in &self.peers {
            let (peer, key, stats) = (peer.clone(), key.to_owned(), self.stats.clone());
            let again_after = self.again_after;
            tokio::spawn(async move {
                for pause in [Duration::ZERO, again_after] {
                    tokio::time::sleep(pause).await;
                    let counter = match peer.delete(&key).await {
                        Ok(()) => &stats.sent,
                        Err(_) => &stats.failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        self.local.delete(key).await
    }

    async fn claim_load(&self, key: &str, ttl: Duration) -> bool {
        self.local.claim_load(key, ttl).await
    }

    async fn release_load(&self, key: &str) {
        self.local.release_load(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheConfig, InProcessCache};

    #[tokio::test]
    async fn a_delete_reaches_every_peer_and_reads_stay_local() {
        let cache = || Arc::new(InProcessCache::new(CacheConfig::default())) as Arc<dyn Cache>;
        let (local, east, west) = (cache(), cache(), cache());
        let ttl = Duration::from_secs(60);
        for c in [&local, &east, &west] {
            c.set("user:1", Bytes::from_static(b"old"), ttl).await.unwrap();
        }
        let site = PeerInvalidation::new(
            local.clone(),
            vec![east.clone(), west.clone()],
            Duration::from_millis(50),
        );
        site.set("user:2", Bytes::from_static(b"mine"), ttl)
            .await
            .unwrap();
        assert!(east.get("user:2").await.unwrap().is_none(), "fills stay local");
        site.delete("user:1").await.unwrap();
        assert!(local.get("user:1").await.unwrap().is_none());
        for _ in 0..100 {
            if east.get("user:1").await.unwrap().is_none() && west.get("user:1").await.unwrap().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            east.get("user:1").await.unwrap().is_none(),
            "the peers still hold the stale value"
        );
        // A stale refill in a peer between the two deletes is removed by
        // the second.
        east.set("user:1", Bytes::from_static(b"old"), ttl).await.unwrap();
        for _ in 0..100 {
            if site.stats().sent.load(Ordering::Relaxed) == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            site.stats().sent.load(Ordering::Relaxed),
            4,
            "two deletes per peer"
        );
        assert!(
            east.get("user:1").await.unwrap().is_none(),
            "the stale refill is gone"
        );
    }
}
