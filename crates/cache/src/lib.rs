//! The embedded cache adapter: an in-process map bounded in bytes, with a TTL
//! per entry and one of three eviction policies (the seed's 캐시 section).
//!
//! Every entry carries an *order key* in a `BTreeMap`; eviction pops the
//! smallest. The policy only decides what that key is:
//! - LRU: the tick of the last access,
//! - LFU: (access count, tick of last access), so ties fall back to LRU,
//! - FIFO: the tick of insertion, never updated by reads.
//!
//! Expired entries are dropped when touched and before any live entry is
//! evicted, so a TTL never costs a live entry its place.

mod hot_keys;
mod near;
mod peers;
mod policy;
mod single_flight;

pub use hot_keys::{HotKey, HotKeys};
pub use near::NearCache;
pub use peers::{PeerInvalidation, PeerStats};
pub use policy::EvictionPolicy;
pub use single_flight::SingleFlight;

use async_trait::async_trait;
use bytes::Bytes;
use domain::{ports::Cache, BackendError};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Fixed cost charged per entry on top of key and value bytes, so that a
/// flood of tiny entries is still bounded.
const ENTRY_OVERHEAD: usize = 64;

/// Configuration of an [`InProcessCache`].
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Which entry leaves first when the cache is full. Default LRU.
    #[serde(default)]
    pub policy: EvictionPolicy,
    /// Bound on key + value bytes (+64 per entry). Default 64 MiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

fn default_max_bytes() -> usize {
    64 << 20
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            policy: EvictionPolicy::default(),
            max_bytes: default_max_bytes(),
        }
    }
}

struct Entry {
    value: Bytes,
    /// Key into `Inner::order`.
    order: (u64, u64),
    /// Key into `Inner::expiry`: the deadline and the insertion tick.
    expiry: (Instant, u64),
    hits: u64,
}

struct Inner {
    map: HashMap<String, Entry>,
    /// Eviction order: the first entry leaves first.
    order: BTreeMap<(u64, u64), String>,
    /// Deadlines, earliest first, so expired entries are dropped in order.
    expiry: BTreeMap<(Instant, u64), String>,
    bytes: usize,
    tick: u64,
}

impl Inner {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let e = self.map.remove(key)?;
        self.order.remove(&e.order);
        self.expiry.remove(&e.expiry);
        self.bytes -= cost(key, &e.value);
        Some(e)
    }
}

/// Counters an operator wants to see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub evictions: u64,
    pub expirations: u64,
}

/// A thread-safe in-process cache.
pub struct InProcessCache {
    config: CacheConfig,
    inner: Mutex<Inner>,
    evictions: AtomicU64,
    expirations: AtomicU64,
}

fn cost(key: &str, value: &Bytes) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl InProcessCache {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Self {
        InProcessCache {
            config,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: BTreeMap::new(),
                expiry: BTreeMap::new(),
                bytes: 0,
                tick: 0,
            }),
            evictions: AtomicU64::new(0),
            expirations: AtomicU64::new(0),
        }
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            entries: inner.map.len(),
            bytes: inner.bytes,
            evictions: self.evictions.load(Relaxed),
            expirations: self.expirations.load(Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation keeps the three indexes consistent before it can
        // panic, so a poisoned lock still guards a usable cache.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks a key up at `now` (exposed for deterministic tests).
    pub fn get_at(&self, key: &str, now: Instant) -> Option<Bytes> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.map.get_mut(key)?;
        if entry.expiry.0 <= now {
            inner.remove(key);
            self.expirations.fetch_add(1, Relaxed);
            return None;
        }
        entry.hits += 1;
        let new_order = self.config.policy.on_access(entry.order, entry.hits, tick);
        let value = entry.value.clone();
        if new_order != entry.order {
            let old = std::mem::replace(&mut entry.order, new_order);
            let k = inner.order.remove(&old).expect("order index in sync");
            inner.order.insert(new_order, k);
        }
        Some(value)
    }

    /// Stores a value at `now` (exposed for deterministic tests). A value
    /// larger than the whole cache is not stored.
    pub fn set_at(&self, key: &str, value: Bytes, ttl: Duration, now: Instant) {
        let c = cost(key, &value);
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.remove(key);
        if c > self.config.max_bytes {
            return;
        }
        // Expired entries go before any live one is evicted.
        while let Some((&(at, _), k)) = inner.expiry.first_key_value() {
            if at > now {
                break;
            }
            let k = k.clone();
            inner.remove(&k);
            self.expirations.fetch_add(1, Relaxed);
        }
        while inner.bytes + c > self.config.max_bytes {
            let Some((_, victim)) = inner.order.first_key_value() else {
                break;
            };
            let victim = victim.clone();
            inner.remove(&victim);
            self.evictions.fetch_add(1, Relaxed);
        }
        inner.tick += 1;
        let order = self.config.policy.on_insert(inner.tick);
        let expiry = (now + ttl, inner.tick);
        inner.order.insert(order, key.to_owned());
        inner.expiry.insert(expiry, key.to_owned());
        inner.bytes += c;
        inner.map.insert(
            key.to_owned(),
            Entry {
                value,
                order,
                expiry,
                hits: 0,
            },
        );
    }
}

#[async_trait]
impl Cache for InProcessCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        Ok(self.get_at(key, Instant::now()))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), BackendError> {
        self.set_at(key, value, ttl, Instant::now());
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.lock().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    /// A cache with room for exactly three entries of 1-byte keys and
    /// 1-byte values.
    fn cache(policy: EvictionPolicy) -> InProcessCache {
        InProcessCache::new(CacheConfig {
            policy,
            max_bytes: 3 * (2 + ENTRY_OVERHEAD),
        })
    }

    fn put(c: &InProcessCache, k: &str, now: Instant) {
        c.set_at(k, Bytes::from_static(b"v"), TTL, now);
    }

    /// Which of a..d are stored, without touching their eviction order.
    fn present(c: &InProcessCache) -> Vec<&'static str> {
        ["a", "b", "c", "d"]
            .into_iter()
            .filter(|k| c.lock().map.contains_key(*k))
            .collect()
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        let now = Instant::now();
        let c = cache(EvictionPolicy::Lru);
        put(&c, "a", now);
        put(&c, "b", now);
        put(&c, "c", now);
        // b is the most used but, after a and c are read, the least recent;
        // a, the first in, is what FIFO and LFU (on its tie with c) evict.
        for _ in 0..3 {
            assert!(c.get_at("b", now).is_some());
        }
        assert!(c.get_at("a", now).is_some());
        assert!(c.get_at("c", now).is_some());
        put(&c, "d", now);
        assert_eq!(present(&c), ["a", "c", "d"]);
        assert_eq!(c.stats().evictions, 1);
    }

    #[test]
    fn lfu_evicts_least_frequently_used() {
        let now = Instant::now();
        let c = cache(EvictionPolicy::Lfu);
        put(&c, "a", now);
        put(&c, "b", now);
        put(&c, "c", now);
        for _ in 0..3 {
            c.get_at("a", now);
        }
        c.get_at("b", now);
        c.get_at("b", now);
        c.get_at("c", now); // c: 1 hit, the least
        put(&c, "d", now);
        assert_eq!(present(&c), ["a", "b", "d"]);
    }

    #[test]
    fn lfu_ties_fall_back_to_lru() {
        let now = Instant::now();
        let c = cache(EvictionPolicy::Lfu);
        put(&c, "a", now);
        put(&c, "b", now);
        put(&c, "c", now);
        c.get_at("b", now);
        c.get_at("a", now);
        c.get_at("c", now);
        put(&c, "d", now); // all have one hit; b was touched longest ago
        assert_eq!(present(&c), ["a", "c", "d"]);
    }

    #[test]
    fn fifo_ignores_reads() {
        let now = Instant::now();
        let c = cache(EvictionPolicy::Fifo);
        put(&c, "a", now);
        put(&c, "b", now);
        put(&c, "c", now);
        for _ in 0..10 {
            c.get_at("a", now);
        }
        put(&c, "d", now);
        assert_eq!(present(&c), ["b", "c", "d"]);
    }

    #[test]
    fn ttl_expires_entries() {
        let now = Instant::now();
        let c = cache(EvictionPolicy::Lru);
        c.set_at("a", Bytes::from_static(b"v"), Duration::from_secs(1), now);
        assert!(c.get_at("a", now).is_some());
        assert!(c.get_at("a", now + Duration::from_secs(2)).is_none());
        assert_eq!(c.stats().entries, 0);
        assert_eq!(c.stats().expirations, 1);
    }

    #[test]
    fn expired_entries_go_before_live_ones() {
        let now = Instant::now();
        let c = cache(EvictionPolicy::Lru);
        c.set_at("a", Bytes::from_static(b"v"), Duration::from_secs(1), now);
        put(&c, "b", now);
        put(&c, "c", now);
        let later = now + Duration::from_secs(5);
        put(&c, "d", later);
        assert_eq!(present(&c), ["b", "c", "d"]);
        assert_eq!(c.stats().evictions, 0);
    }

    #[test]
    fn byte_bound_holds_and_overwrite_is_accounted() {
        let now = Instant::now();
        let c = InProcessCache::new(CacheConfig {
            policy: EvictionPolicy::Lru,
            max_bytes: 1000,
        });
        for i in 0..100 {
            c.set_at(&format!("k{i}"), Bytes::from(vec![0; 100]), TTL, now);
            assert!(c.stats().bytes <= 1000);
        }
        c.set_at("k99", Bytes::from(vec![0; 10]), TTL, now);
        let s = c.stats();
        assert!(s.bytes <= 1000 && s.entries >= 1);
        // Larger than the whole cache: not stored, nothing else evicted.
        let before = c.stats().entries;
        c.set_at("huge", Bytes::from(vec![0; 2000]), TTL, now);
        assert!(c.get_at("huge", now).is_none());
        assert_eq!(c.stats().entries, before);
    }

    /// The `Cache` port's battery, under each eviction policy (the
    /// contract is the same; only the order of eviction differs, above).
    #[tokio::test]
    async fn conforms_to_the_cache_port_under_every_policy() {
        for policy in [EvictionPolicy::Lru, EvictionPolicy::Lfu, EvictionPolicy::Fifo] {
            let c = InProcessCache::new(CacheConfig {
                policy,
                ..CacheConfig::default()
            });
            conformance::cache::run_all(&c, conformance::cache::Claims::AlwaysGranted).await;
        }
    }

    #[tokio::test]
    async fn a_delete_gives_its_bytes_back() {
        let c = InProcessCache::new(CacheConfig::default());
        c.set("k", Bytes::from_static(b"v"), TTL).await.unwrap();
        assert_eq!(c.stats().bytes, cost("k", &Bytes::from_static(b"v")));
        c.delete("k").await.unwrap();
        assert_eq!(c.get("k").await.unwrap(), None);
        assert_eq!(c.stats().bytes, 0);
        assert_eq!(c.stats().entries, 0);
    }
}
