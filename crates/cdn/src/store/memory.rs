//! The memory tier: objects under a byte bound, evicted with S3-FIFO.
//!
//! Why S3-FIFO rather than SLRU or W-TinyLFU: it resists scans as well
//! (a key read once passes through the small queue and leaves without
//! touching the main queue, where keys read again live), it needs no
//! frequency sketch to size and age, and a hit moves nothing: it bumps a
//! 2-bit counter with an atomic under a *shared* lock, so concurrent hits
//! on one shard never serialise on a list splice as LRU and SLRU hits do.
//! Only inserts, evictions and purges take a shard's lock exclusively, and
//! no lock is ever held across an await (nothing here is async).
//!
//! Accounting charges every object its key, head, body, variant, URL and
//! tags plus a fixed per-entry and per-tag estimate of the maps, queues and
//! ghost slot it occupies ([`ENTRY_OVERHEAD`](super::ENTRY_OVERHEAD),
//! [`TAG_OVERHEAD`](super::TAG_OVERHEAD)), so the tier's resident memory
//! stays within its configured size plus a small overhead (the shard
//! array, and the slack of maps between growing and giving memory back:
//! `tests/store_resident.rs` measures under 0.5 MiB over an 8 MiB tier),
//! plus whatever readers still hold after an eviction.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use super::index::Index;
use super::object::{CacheKey, Object};
use super::{Counters, InsertError, Purge, PurgeMode, TierStats};

/// A shard never gets less than this many bytes (small tiers get fewer
/// shards rather than shards too small to hold an object).
const MIN_SHARD_BYTES: u64 = 1 << 20;

/// Sizes and limits of the memory tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Byte bound of everything stored (see the module docs for what is
    /// counted). Default 256 MiB.
    pub capacity_bytes: u64,
    /// Objects charged more than this are refused (the server streams them
    /// through uncached). Default 8 MiB; never more than one shard's share
    /// of the capacity.
    pub max_object_bytes: u64,
    /// Variants (`Vary`) kept per primary key; one more displaces the
    /// oldest. Default 16.
    pub max_variants: usize,
    /// Lock shards (keys are spread by a hash of the primary key, so all
    /// variants of a URL share a shard). Default 16; fewer when the
    /// capacity would leave a shard under 1 MiB, at least 1.
    pub shards: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            capacity_bytes: 256 << 20,
            max_object_bytes: 8 << 20,
            max_variants: 16,
            shards: 16,
        }
    }
}

#[derive(Debug)]
struct Shard {
    index: Index<Arc<Object>>,
    next_id: u64,
}

/// The memory tier: shareable between threads (`Send + Sync`), every
/// method takes `&self`.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[RwLock<Shard>]>,
    max_object: u64,
    capacity: u64,
    counters: Counters,
}

fn shard_of(key: &CacheKey, shards: usize) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

impl MemoryStore {
    /// An empty tier sized by `config`.
    pub fn new(config: MemoryConfig) -> Self {
        let by_size = (config.capacity_bytes / MIN_SHARD_BYTES).max(1);
        let shards = (config.shards.max(1) as u64).min(by_size) as usize;
        let per_shard = config.capacity_bytes / shards as u64;
        let shards: Box<[RwLock<Shard>]> = (0..shards)
            .map(|_| {
                RwLock::new(Shard {
                    index: Index::new(per_shard, config.max_variants),
                    next_id: 0,
                })
            })
            .collect();
        MemoryStore {
            max_object: config.max_object_bytes.min(per_shard),
            capacity: per_shard * shards.len() as u64,
            shards,
            counters: Counters::default(),
        }
    }

    /// The largest object charge accepted.
    pub fn max_object_bytes(&self) -> u64 {
        self.max_object
    }

    /// The byte bound in force (the configured size rounded down to a
    /// multiple of the shard count).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity
    }

    /// Number of lock shards in force.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn shard(&self, key: &CacheKey) -> &RwLock<Shard> {
        &self.shards[shard_of(key, self.shards.len())]
    }

    /// Stores `object`, replacing the object with the same key and variant
    /// and evicting others as needed. Refused when its
    /// [charge](Object::charge) exceeds [`MemoryStore::max_object_bytes`].
    pub fn insert(&self, object: Object) -> Result<Arc<Object>, InsertError> {
        self.insert_arc(Arc::new(object))
    }

    /// As [`MemoryStore::insert`], for an object already shared.
    pub fn insert_arc(&self, object: Arc<Object>) -> Result<Arc<Object>, InsertError> {
        let charge = object.charge();
        if charge > self.max_object {
            self.counters.refused();
            return Err(InsertError::TooLarge {
                charge,
                limit: self.max_object,
            });
        }
        let removed = {
            let mut shard = self.shard(object.key()).write().expect("shard lock");
            let id = shard.next_id;
            shard.next_id += 1;
            shard.index.insert(id, object.clone(), false)
        };
        // The removed objects are dropped here, outside the lock.
        self.counters
            .inserted(removed.replaced.is_some(), removed.evicted.len());
        Ok(object)
    }

    /// The object under `key` whose variant is exactly `variant` (empty for
    /// a response without `Vary`). Counts a hit or a miss.
    pub fn get(&self, key: &CacheKey, variant: &[u8]) -> Option<Arc<Object>> {
        self.lookup(key, |o| o.meta().variant == variant)
    }

    /// The first object under `key` that `matches` accepts (the server
    /// checks a variant's `Vary` fields against the request). Counts a hit
    /// or a miss. `matches` runs under the shard's shared lock: keep it
    /// short.
    pub fn lookup(&self, key: &CacheKey, mut matches: impl FnMut(&Object) -> bool) -> Option<Arc<Object>> {
        let found = {
            let shard = self.shard(key).read().expect("shard lock");
            shard.index.find(key, |o| matches(o.as_ref())).map(|(id, o)| {
                shard.index.touch(id);
                o.clone()
            })
        };
        self.counters.looked_up(found.is_some());
        found
    }

    /// Every stored variant under `key`, oldest first. Counts nothing and
    /// does not count as a read for eviction.
    pub fn variants(&self, key: &CacheKey) -> Vec<Arc<Object>> {
        let shard = self.shard(key).read().expect("shard lock");
        shard.index.variants(key).into_iter().cloned().collect()
    }

    /// Purges what `purge` names: hard removes the objects, soft marks them
    /// [stale](Object::is_soft_purged) and keeps them. Returns how many
    /// objects it matched.
    pub fn purge(&self, purge: &Purge, mode: PurgeMode) -> usize {
        let shards: Vec<&RwLock<Shard>> = match purge {
            Purge::Key(key) => vec![self.shard(key)],
            _ => self.shards.iter().collect(),
        };
        let mut count = 0;
        for shard in shards {
            match mode {
                PurgeMode::Soft => {
                    let shard = shard.read().expect("shard lock");
                    for id in shard.index.matching(purge) {
                        if let Some(o) = shard.index.get(id) {
                            o.mark_soft_purged();
                            count += 1;
                        }
                    }
                }
                PurgeMode::Hard => {
                    let removed: Vec<Arc<Object>> = {
                        let mut shard = shard.write().expect("shard lock");
                        let ids = shard.index.matching(purge);
                        ids.into_iter().filter_map(|id| shard.index.remove(id)).collect()
                    };
                    count += removed.len();
                }
            }
        }
        self.counters.purged(mode, count);
        count
    }

    /// Counters and gauges of this tier.
    pub fn stats(&self) -> TierStats {
        let (mut objects, mut bytes) = (0, 0);
        for shard in self.shards.iter() {
            let shard = shard.read().expect("shard lock");
            objects += shard.index.len() as u64;
            bytes += shard.index.bytes();
        }
        self.counters.snapshot(objects, bytes, self.capacity)
    }

    /// Checks that every shard's maps agree (tests).
    #[cfg(test)]
    fn shard_capacities(&self) -> Vec<u64> {
        self.shards
            .iter()
            .map(|s| s.read().unwrap().index.capacity())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;

    use super::super::object::ObjectMeta;
    use super::super::ENTRY_OVERHEAD;
    use super::*;

    fn object(key: &str, body: usize) -> Object {
        Object::new(
            key.into(),
            ObjectMeta::new(SystemTime::UNIX_EPOCH).with_url(format!("h{key}")),
            Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
            Bytes::from(vec![7u8; body]),
        )
    }

    fn one_shard(capacity: u64) -> MemoryStore {
        MemoryStore::new(MemoryConfig {
            capacity_bytes: capacity,
            max_object_bytes: capacity,
            max_variants: 4,
            shards: 1,
        })
    }

    #[test]
    fn stored_objects_are_found_and_missing_ones_counted() {
        let store = one_shard(1 << 20);
        let stored = store.insert(object("/a", 100)).unwrap();
        let got = store.get(&"/a".into(), b"").unwrap();
        assert!(Arc::ptr_eq(&stored, &got));
        assert_eq!(got.body().len(), 100);
        assert!(store.get(&"/b".into(), b"").is_none());
        let stats = store.stats();
        assert_eq!((stats.hits, stats.misses, stats.inserts), (1, 1, 1));
        assert_eq!(stats.objects, 1);
        assert_eq!(stats.bytes, stored.charge());
    }

    /// Hot keys read a few times survive a one-time scan of ten times the
    /// capacity in cold keys; the same trace through an LRU of the same
    /// capacity loses every one of them.
    #[test]
    fn hot_keys_survive_a_scan_larger_than_the_capacity_where_lru_loses_them() {
        let body = 1000;
        let charge = object("/hot/000", body).charge();
        let capacity = charge * 100;
        let store = one_shard(capacity);
        let mut lru = Lru::new(100);
        let hot: Vec<String> = (0..20).map(|i| format!("/hot/{i:03}")).collect();
        for key in &hot {
            store.insert(object(key, body)).unwrap();
            lru.access(key);
        }
        for _ in 0..3 {
            for key in &hot {
                assert!(store.get(&key.as_str().into(), b"").is_some());
                lru.access(key);
            }
        }
        // The scan: 1000 cold keys, each missed once then filled.
        for i in 0..1000 {
            let key = format!("/cold/{i:04}");
            assert!(store.get(&key.as_str().into(), b"").is_none());
            store.insert(object(&key, body)).unwrap();
            lru.access(&key);
            assert!(store.stats().bytes <= capacity);
        }
        for key in &hot {
            assert!(
                store.get(&key.as_str().into(), b"").is_some(),
                "{key} was flushed by the scan"
            );
            assert!(!lru.contains(key), "the LRU kept {key}: the scan proves nothing");
        }
        assert!(store.stats().evictions >= 900);
    }

    #[test]
    fn hot_keys_survive_a_scan_with_the_default_shards() {
        let store = MemoryStore::new(MemoryConfig {
            capacity_bytes: 16 << 20,
            ..MemoryConfig::default()
        });
        assert_eq!(store.shard_count(), 16);
        let hot: Vec<String> = (0..200).map(|i| format!("/hot/{i}")).collect();
        for key in &hot {
            store.insert(object(key, 10_000)).unwrap();
            assert!(store.get(&key.as_str().into(), b"").is_some());
        }
        // Twelve times the capacity in keys read once.
        for i in 0..20_000 {
            let key = format!("/cold/{i}");
            store.get(&key.as_str().into(), b"");
            store.insert(object(&key, 10_000)).unwrap();
        }
        let lost = hot
            .iter()
            .filter(|k| store.variants(&k.as_str().into()).is_empty())
            .count();
        assert_eq!(lost, 0, "{lost} hot keys flushed by the scan");
        assert!(store.stats().evictions > 18_000);
    }

    /// A plain LRU over equal-sized entries, the baseline the scan test
    /// compares with.
    struct Lru {
        capacity: usize,
        order: VecDeque<String>,
    }

    impl Lru {
        fn new(capacity: usize) -> Self {
            Lru {
                capacity,
                order: VecDeque::new(),
            }
        }
        fn access(&mut self, key: &str) {
            self.order.retain(|k| k != key);
            self.order.push_back(key.to_owned());
            if self.order.len() > self.capacity {
                self.order.pop_front();
            }
        }
        fn contains(&self, key: &str) -> bool {
            self.order.iter().any(|k| k == key)
        }
    }

    #[test]
    fn the_byte_bound_holds_with_every_part_counted() {
        let store = one_shard(64 * 1024);
        for i in 0..500 {
            let meta = ObjectMeta::new(SystemTime::UNIX_EPOCH)
                .with_tag(format!("tag-{}", i % 7))
                .with_url(format!("host/p/{i}"))
                .with_variant(format!("v{}", i % 3));
            let o = Object::new(
                format!("/k/{i}").into(),
                meta,
                Bytes::from(vec![b'h'; 200]),
                Bytes::from(vec![b'b'; 37 * (i % 50)]),
            );
            store.insert(o).unwrap();
            let stats = store.stats();
            assert!(stats.bytes <= 64 * 1024, "{} over the bound", stats.bytes);
        }
        // The gauge is the sum of what is stored, overheads included.
        let shard = store.shards[0].read().unwrap();
        let sum: u64 = shard.index_charges();
        assert_eq!(sum, store.stats().bytes);
        assert!(sum >= shard.index.len() as u64 * ENTRY_OVERHEAD);
    }

    impl Shard {
        fn index_charges(&self) -> u64 {
            (0..self.next_id)
                .filter_map(|id| self.index.get(id))
                .map(|o| o.charge())
                .sum()
        }
    }

    #[test]
    fn objects_over_the_size_limit_are_refused_and_counted() {
        let store = MemoryStore::new(MemoryConfig {
            capacity_bytes: 1 << 20,
            max_object_bytes: 10_000,
            max_variants: 4,
            shards: 1,
        });
        assert_eq!(store.max_object_bytes(), 10_000);
        let err = store.insert(object("/big", 10_000)).unwrap_err();
        assert!(matches!(err, InsertError::TooLarge { limit: 10_000, .. }));
        assert!(store.get(&"/big".into(), b"").is_none());
        store.insert(object("/small", 1000)).unwrap();
        let stats = store.stats();
        assert_eq!((stats.refused, stats.objects, stats.inserts), (1, 1, 1));
    }

    #[test]
    fn the_size_limit_never_exceeds_a_shard_and_small_tiers_get_fewer_shards() {
        let store = MemoryStore::new(MemoryConfig {
            capacity_bytes: 3 << 20,
            max_object_bytes: 100 << 20,
            max_variants: 4,
            shards: 16,
        });
        assert_eq!(store.shard_count(), 3);
        assert_eq!(store.max_object_bytes(), 1 << 20);
        assert_eq!(store.shard_capacities(), vec![1 << 20; 3]);
        assert_eq!(store.capacity_bytes(), 3 << 20);
        let default = MemoryStore::new(MemoryConfig::default());
        assert_eq!(default.shard_count(), 16);
        assert_eq!(default.max_object_bytes(), 8 << 20);
    }

    #[test]
    fn variants_live_side_by_side_and_replace_their_own_kind() {
        let store = one_shard(1 << 20);
        let with = |variant: &str, body: &'static [u8]| {
            Object::new(
                "/page".into(),
                ObjectMeta::new(SystemTime::UNIX_EPOCH).with_variant(variant.to_owned()),
                Bytes::new(),
                Bytes::from_static(body),
            )
        };
        store.insert(with("gzip", b"zipped")).unwrap();
        store.insert(with("identity", b"plain")).unwrap();
        assert_eq!(store.get(&"/page".into(), b"gzip").unwrap().body(), "zipped");
        assert_eq!(store.get(&"/page".into(), b"identity").unwrap().body(), "plain");
        assert!(store.get(&"/page".into(), b"br").is_none());
        store.insert(with("gzip", b"zipped2")).unwrap();
        assert_eq!(store.variants(&"/page".into()).len(), 2);
        assert_eq!(store.get(&"/page".into(), b"gzip").unwrap().body(), "zipped2");
        let found = store
            .lookup(&"/page".into(), |o| o.body().starts_with(b"pl"))
            .unwrap();
        assert_eq!(found.meta().variant, "identity");
        // Replacing is not evicting.
        assert_eq!(store.stats().evictions, 0);
        assert_eq!(store.stats().objects, 2);
    }

    #[test]
    fn a_variant_past_the_limit_displaces_the_oldest() {
        let store = one_shard(1 << 20);
        for v in 0..6 {
            let o = Object::new(
                "/v".into(),
                ObjectMeta::new(SystemTime::UNIX_EPOCH).with_variant(format!("{v}")),
                Bytes::new(),
                Bytes::new(),
            );
            store.insert(o).unwrap();
        }
        let kept: Vec<Bytes> = store
            .variants(&"/v".into())
            .iter()
            .map(|o| o.meta().variant.clone())
            .collect();
        assert_eq!(kept, vec!["2", "3", "4", "5"]);
        assert_eq!(store.stats().evictions, 2);
    }

    fn tagged(key: &str, url: &str, tags: &[&str]) -> Object {
        let mut meta = ObjectMeta::new(SystemTime::UNIX_EPOCH)
            .with_url(url.to_owned())
            .with_fresh_for(Duration::from_secs(60));
        for t in tags {
            meta = meta.with_tag(t.to_string());
        }
        Object::new(key.into(), meta, Bytes::new(), Bytes::from_static(b"x"))
    }

    fn tagged_store() -> MemoryStore {
        let store = MemoryStore::new(MemoryConfig {
            capacity_bytes: 4 << 20,
            shards: 4,
            ..MemoryConfig::default()
        });
        store
            .insert(tagged("k1", "h/photos/1/small", &["photo-1", "photos"]))
            .unwrap();
        store
            .insert(tagged("k2", "h/photos/1/large", &["photo-1", "photos"]))
            .unwrap();
        store
            .insert(tagged("k3", "h/photos/2/small", &["photo-2", "photos"]))
            .unwrap();
        store.insert(tagged("k4", "h/static/app.js", &[])).unwrap();
        store
    }

    fn present(store: &MemoryStore) -> Vec<&'static str> {
        ["k1", "k2", "k3", "k4"]
            .into_iter()
            .filter(|k| !store.variants(&(*k).into()).is_empty())
            .collect()
    }

    #[test]
    fn hard_purges_by_key_tag_and_prefix_remove_exactly_what_they_name() {
        let store = tagged_store();
        assert_eq!(store.purge(&Purge::Tag("photo-1".into()), PurgeMode::Hard), 2);
        assert_eq!(present(&store), vec!["k3", "k4"]);
        assert_eq!(store.purge(&Purge::Tag("photo-1".into()), PurgeMode::Hard), 0);
        assert_eq!(
            store.purge(&Purge::Prefix("h/static/".into()), PurgeMode::Hard),
            1
        );
        assert_eq!(present(&store), vec!["k3"]);
        assert_eq!(store.purge(&Purge::Key("k3".into()), PurgeMode::Hard), 1);
        assert!(present(&store).is_empty());
        let stats = store.stats();
        assert_eq!((stats.objects, stats.bytes, stats.purged_hard), (0, 0, 4));
        // The indexes kept step: nothing is left in them.
        for shard in store.shards.iter() {
            let shard = shard.read().unwrap();
            assert_eq!((shard.index.tag_count(), shard.index.key_count()), (0, 0));
        }
    }

    #[test]
    fn soft_purges_keep_the_objects_marked_stale() {
        let store = tagged_store();
        let held = store.get(&"k1".into(), b"").unwrap();
        assert_eq!(
            store.purge(&Purge::Prefix("h/photos/".into()), PurgeMode::Soft),
            3
        );
        assert!(held.is_soft_purged());
        assert_eq!(present(&store), vec!["k1", "k2", "k3", "k4"]);
        assert!(store.get(&"k3".into(), b"").unwrap().is_soft_purged());
        assert!(!store.get(&"k4".into(), b"").unwrap().is_soft_purged());
        // A fresh fill replaces the stale copy with an unmarked one.
        store
            .insert(tagged("k3", "h/photos/2/small", &["photo-2"]))
            .unwrap();
        assert!(!store.get(&"k3".into(), b"").unwrap().is_soft_purged());
        assert_eq!(store.stats().purged_soft, 3);
        // A hard purge after a soft one still removes.
        assert_eq!(store.purge(&Purge::Tag("photos".into()), PurgeMode::Hard), 2);
    }

    #[test]
    fn evictions_keep_the_tag_index_in_step() {
        let capacity = 1 << 20;
        let store = one_shard(capacity);
        for i in 0..5000 {
            store
                .insert(Object::new(
                    format!("/k{i}").into(),
                    ObjectMeta::new(SystemTime::UNIX_EPOCH).with_tag(format!("t{i}")),
                    Bytes::new(),
                    Bytes::from(vec![0u8; 1000]),
                ))
                .unwrap();
        }
        let stats = store.stats();
        assert!(stats.evictions > 0);
        let shard = store.shards[0].read().unwrap();
        assert_eq!(shard.index.tag_count() as u64, stats.objects);
        assert_eq!(shard.index.key_count() as u64, stats.objects);
        drop(shard);
        // A purge by the tag of an evicted object finds nothing.
        assert_eq!(store.purge(&Purge::Tag("t0".into()), PurgeMode::Hard), 0);
        assert_eq!(store.purge(&Purge::Tag("t4999".into()), PurgeMode::Hard), 1);
    }

    #[test]
    fn threads_share_the_tier_and_the_counts_add_up() {
        let store = Arc::new(MemoryStore::new(MemoryConfig {
            capacity_bytes: 8 << 20,
            ..MemoryConfig::default()
        }));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        let key = format!("/t{t}/{}", i % 300);
                        if store.get(&key.as_str().into(), b"").is_none() {
                            store.insert(object(&key, 500)).unwrap();
                        }
                        if i % 500 == 0 {
                            store.purge(&Purge::Prefix(format!("h/t{t}/1").into()), PurgeMode::Hard);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let stats = store.stats();
        assert_eq!(stats.hits + stats.misses, 8000);
        assert_eq!(stats.inserts, stats.misses);
        assert!(stats.bytes <= store.capacity_bytes());
        assert_eq!(
            stats.inserts,
            stats.objects + stats.evictions + stats.purged_hard + stats.replaced
        );
    }
}
