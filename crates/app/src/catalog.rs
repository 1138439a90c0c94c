//! Cache-aside reads of photo metadata and photo lists.
//!
//! - A photo is cached under `photo:{id}` only once its status is final
//!   (`ready` or `failed`): the worker that finishes processing is another
//!   process and cannot reach this server's in-process cache, so caching a
//!   `processing` photo would serve a stale status until the TTL.
//! - A user's list pages are cached under a *generation* key: every write
//!   that changes the list (upload, undone upload) deletes
//!   `uphotos-gen:{user}`, so all cached pages of that user become
//!   unreachable at once without enumerating them.
//! - A cache error counts as a miss and is logged: the cache is never a
//!   single point of failure. A failed invalidation is not forgotten: it is
//!   retried in the background until the cache takes it (other web servers
//!   may still reach the cache and serve the stale entry meanwhile).
//! - Misses are single-flight: when many requests miss one key at once (a
//!   hot entry expiring), one queries the store and the others share its
//!   answer. Across processes too, when the cache is shared (Redis): the
//!   one request that *claims* the load in the cache queries the store, the
//!   other web servers wait for the value it stores ([`Cache::claim_load`]).

use crate::metrics::Metrics;
use bytes::Bytes;
use cache::SingleFlight;
use domain::ports::{Cache, Store};
use domain::{Page, Photo, PhotoId, PhotoStatus, StoreError, UserId};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a load claim holds: far above one store query; also how long
/// other web servers wait if the claimant dies mid-load.
const CLAIM_TTL: Duration = Duration::from_secs(2);
/// How often a web server waiting on another's load looks for its value.
const CLAIM_POLL: Duration = Duration::from_millis(5);

/// Photo reads through the cache.
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn Store>,
    cache: Arc<dyn Cache>,
    metrics: Arc<Metrics>,
    ttl: Duration,
    /// Zero: lists are not cached.
    list_ttl: Duration,
    /// One store query per missing key, however many requests miss it at once.
    photo_loads: Arc<SingleFlight<Result<Option<Photo>, StoreError>>>,
    list_loads: Arc<SingleFlight<Result<Vec<PhotoId>, StoreError>>>,
    /// Invalidations the cache refused, retried until it takes them.
    pending: Arc<Pending>,
}

/// Keys whose invalidation the cache refused.
#[derive(Default)]
struct Pending(std::sync::Mutex<std::collections::BTreeSet<String>>);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// First retry of a refused invalidation; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

fn photo_key(id: PhotoId) -> String {
    format!("photo:{}", id.0)
}

fn generation_key(owner: UserId) -> String {
    format!("uphotos-gen:{}", owner.0)
}

impl Catalog {
    /// A catalog caching photos for `ttl` and lists for `list_ttl`.
    pub fn new(
        store: Arc<dyn Store>,
        cache: Arc<dyn Cache>,
        metrics: Arc<Metrics>,
        ttl: Duration,
        list_ttl: Duration,
    ) -> Self {
        Catalog {
            store,
            cache,
            metrics,
            ttl,
            list_ttl,
            photo_loads: Arc::default(),
            list_loads: Arc::default(),
            pending: Arc::default(),
        }
    }

    async fn cache_get(&self, name: &str, key: &str) -> Option<Bytes> {
        match self.cache.get(key).await {
            Ok(Some(v)) => {
                self.metrics.cache_lookup(name, "hit");
                Some(v)
            }
            Ok(None) => {
                self.metrics.cache_lookup(name, "miss");
                None
            }
            Err(e) => {
                self.metrics.cache_lookup(name, "error");
                tracing::warn!(error = %e, key, "cache read failed; reading the store");
                None
            }
        }
    }

    async fn cache_set(&self, key: &str, value: Bytes, ttl: Duration) {
        if let Err(e) = self.cache.set(key, value, ttl).await {
            tracing::warn!(error = %e, key, "cache write failed");
        }
    }

    async fn cache_delete(&self, key: &str) {
        if let Err(e) = self.cache.delete(key).await {
            tracing::warn!(error = %e, key, "cache invalidation failed; retrying in the background");
            let first = {
                let mut pending = self.pending.lock();
                pending.insert(key.to_owned());
                pending.len() == 1
            };
            if first {
                tokio::spawn(retry_invalidations(self.cache.clone(), self.pending.clone()));
            }
        }
    }

    /// Invalidations refused by the cache and not yet retried successfully.
    pub fn pending_invalidations(&self) -> usize {
        self.pending.lock().len()
    }

    /// A photo, from the cache when possible.
    pub async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        let key = photo_key(id);
        if let Some(hit) = self.cache_get("photo", &key).await {
            if let Ok(photo) = serde_json::from_slice::<Photo>(&hit) {
                return Ok(Some(photo));
            }
        }
        let decode = |v: &[u8]| serde_json::from_slice::<Photo>(v).ok().map(Some);
        self.photo_loads
            .run(&key, || {
                self.load_once(&key, decode, async {
                    let photo = self.store.photo(id).await?;
                    if let Some(p) = &photo {
                        if p.status != PhotoStatus::Processing {
                            let bytes = serde_json::to_vec(p).expect("photo serialises");
                            self.cache_set(&key, bytes.into(), self.ttl).await;
                        }
                    }
                    Ok(photo)
                })
            })
            .await
    }

    /// Several photos in order, skipping any that vanished meanwhile.
    pub async fn photos(&self, ids: &[PhotoId]) -> Result<Vec<Photo>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(p) = self.photo(id).await? {
                out.push(p);
            }
        }
        Ok(out)
    }

    async fn generation(&self, owner: UserId) -> String {
        let key = generation_key(owner);
        if let Some(g) = self.cache_get("photo_list_generation", &key).await {
            return String::from_utf8_lossy(&g).into_owned();
        }
        let g = format!("{:x}", rand::random::<u64>());
        // The generation outlives the pages it names.
        self.cache_set(&key, Bytes::from(g.clone()), self.list_ttl * 10)
            .await;
        g
    }

    /// One page of a user's photo ids, newest first.
    pub async fn user_photo_ids(&self, owner: UserId, page: Page) -> Result<Vec<PhotoId>, StoreError> {
        // A request with a read floor (its user wrote moments ago) reads
        // through to the store, which honours the floor: a cached page may
        // have been filled from a replica that had not replayed that write
        // (another user's read between the invalidation and this one, or an
        // old generation still in another web server's near-cache).
        if self.list_ttl.is_zero() || domain::consistency::has_floor() {
            return self.store.user_photo_ids(owner, page).await;
        }
        let generation = self.generation(owner).await;
        let key = format!(
            "uphotos:{}:{generation}:{}:{}",
            owner.0,
            page.before.map_or(-1, |p| p.0),
            page.limit
        );
        if let Some(hit) = self.cache_get("photo_list", &key).await {
            if let Ok(ids) = serde_json::from_slice::<Vec<i64>>(&hit) {
                return Ok(ids.into_iter().map(PhotoId).collect());
            }
        }
        let decode = |v: &[u8]| {
            serde_json::from_slice::<Vec<i64>>(v)
                .ok()
                .map(|ids| ids.into_iter().map(PhotoId).collect())
        };
        self.list_loads
            .run(&key, || {
                self.load_once(&key, decode, async {
                    let ids = self.store.user_photo_ids(owner, page).await?;
                    let raw: Vec<i64> = ids.iter().map(|p| p.0).collect();
                    let bytes = serde_json::to_vec(&raw).expect("ids serialise");
                    self.cache_set(&key, bytes.into(), self.list_ttl).await;
                    Ok(ids)
                })
            })
            .await
    }

    /// Runs `load` (which stores the value under `key`) only if this
    /// process holds the cache's load claim on `key`; while another does,
    /// waits for the value it stores (`decode`d), and loads after all if the
    /// claim ends without one (a `processing` photo is not cached) or
    /// outlives [`CLAIM_TTL`] (its holder died).
    async fn load_once<T>(
        &self,
        key: &str,
        decode: impl Fn(&[u8]) -> Option<T>,
        load: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let cached = || async {
            match self.cache.get(key).await {
                Ok(Some(v)) => decode(&v),
                _ => None,
            }
        };
        let deadline = Instant::now() + CLAIM_TTL;
        let mut claimed = self.cache.claim_load(key, CLAIM_TTL).await;
        let waited = !claimed;
        while !claimed && Instant::now() < deadline {
            tokio::time::sleep(CLAIM_POLL).await;
            if let Some(value) = cached().await {
                return Ok(value);
            }
            claimed = self.cache.claim_load(key, CLAIM_TTL).await;
        }
        if waited {
            // The claim may have come free because its holder just stored
            // the value (after our last look): look once more.
            if let Some(value) = cached().await {
                if claimed {
                    self.cache.release_load(key).await;
                }
                return Ok(value);
            }
        }
        let result = load.await;
        if claimed {
            self.cache.release_load(key).await;
        }
        result
    }

    /// Invalidates what a change to one photo of `owner` makes stale.
    pub async fn invalidate(&self, owner: UserId, photo: Option<PhotoId>) {
        self.cache_delete(&generation_key(owner)).await;
        if let Some(id) = photo {
            self.cache_delete(&photo_key(id)).await;
        }
    }
}

/// Retries the pending invalidations, with a doubling pause, until every one
/// is taken; the task ends when none is left (the next refusal starts one).
async fn retry_invalidations(cache: Arc<dyn Cache>, pending: Arc<Pending>) {
    let mut pause = RETRY_FIRST;
    loop {
        tokio::time::sleep(pause).await;
        let keys: Vec<String> = pending.lock().iter().cloned().collect();
        for key in keys {
            if cache.delete(&key).await.is_ok() {
                pending.lock().remove(&key);
            }
        }
        // Decided under the lock a refusal takes too: either it sees this
        // task's keys and leaves the retrying to it, or it finds the set
        // empty after this task ended and starts another.
        if pending.lock().is_empty() {
            tracing::info!("refused cache invalidations retried successfully");
            return;
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use domain::BackendError;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// An in-process cache whose deletes fail while `down` is above zero
    /// (a unit-test stand-in for an unreachable Redis).
    struct Flaky {
        inner: cache::InProcessCache,
        down: AtomicUsize,
    }

    #[async_trait]
    impl Cache for Flaky {
        async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
            self.inner.get(key).await
        }
        async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), BackendError> {
            self.inner.set(key, value, ttl).await
        }
        async fn delete(&self, key: &str) -> Result<(), BackendError> {
            if self.down.load(SeqCst) > 0 {
                self.down.fetch_sub(1, SeqCst);
                return Err(BackendError::Unavailable("down".into()));
            }
            self.inner.delete(key).await
        }
    }

    #[tokio::test]
    async fn a_refused_invalidation_is_retried_until_taken() {
        let dir = tempfile::tempdir().unwrap();
        let backends = backends::Backends::connect(&backends::BackendsConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .await
        .unwrap();
        let flaky = Arc::new(Flaky {
            inner: cache::InProcessCache::new(cache::CacheConfig::default()),
            down: AtomicUsize::new(3),
        });
        let catalog = Catalog::new(
            backends.store.clone(),
            flaky.clone(),
            Arc::new(Metrics::new()),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let owner = UserId(7);
        flaky
            .set(
                &generation_key(owner),
                Bytes::from_static(b"g1"),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        catalog.invalidate(owner, None).await;
        assert_eq!(catalog.pending_invalidations(), 1, "refused, remembered");
        let deadline = Instant::now() + Duration::from_secs(30);
        while catalog.pending_invalidations() > 0 {
            assert!(Instant::now() < deadline, "never retried");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            flaky.get(&generation_key(owner)).await.unwrap(),
            None,
            "taken at last"
        );
        assert_eq!(flaky.down.load(SeqCst), 0);
    }
}
