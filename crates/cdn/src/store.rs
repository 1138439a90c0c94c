//! Where stored objects live: a byte-bounded memory tier with S3-FIFO
//! eviction ([`memory`]), an optional disk tier whose index survives a
//! restart ([`disk`]), purge by key, tag or URL prefix, and fills that
//! become objects only when complete ([`fill`]). [`Store`] ties the tiers
//! together: a memory miss falls to disk and a disk hit is promoted.

#![deny(missing_docs)]

pub mod disk;
pub mod fill;
mod index;
pub mod memory;
pub mod object;
mod s3fifo;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

pub use disk::{DiskConfig, DiskError, DiskStore};
pub use fill::{Fill, FillError};
pub use memory::{MemoryConfig, MemoryStore};
pub use object::{CacheKey, Object, ObjectMeta, ENTRY_OVERHEAD, TAG_OVERHEAD};

/// What a purge names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// Every variant stored under this primary key.
    Key(CacheKey),
    /// Every object carrying this tag (a `Surrogate-Key` / `Cache-Tag`
    /// value), found through the tag index.
    Tag(Bytes),
    /// Every object whose [URL](ObjectMeta::url) starts with these bytes
    /// (a scan of the tier's index).
    Prefix(Bytes),
}

impl Purge {
    /// Whether `object` is one this purge names.
    pub fn matches(&self, object: &Object) -> bool {
        match self {
            Purge::Key(key) => object.key() == key,
            Purge::Tag(tag) => object.meta().tags.contains(tag),
            Purge::Prefix(prefix) => object.meta().url.starts_with(prefix),
        }
    }
}

/// How a purge treats what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PurgeMode {
    /// The objects are gone (the default).
    #[default]
    Hard,
    /// The objects stay, marked [stale](Object::is_soft_purged): never
    /// served as fresh again, but still there for revalidation and for
    /// grace when the origin fails.
    Soft,
}

/// Why a tier refused an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The object is charged more than the tier's per-object limit: the
    /// server streams such responses through uncached.
    #[error("object of {charge} bytes over the per-object limit of {limit}")]
    TooLarge {
        /// The object's charge (see [`Object::charge`]; file size on disk).
        charge: u64,
        /// The tier's limit.
        limit: u64,
    },
}

/// Counters and gauges of one tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Objects stored now.
    pub objects: u64,
    /// Bytes charged now (memory: see [`Object::charge`]; disk: file sizes).
    pub bytes: u64,
    /// The byte bound.
    pub capacity_bytes: u64,
    /// Objects stored since start (promotions from disk included).
    pub inserts: u64,
    /// Objects replaced by a newer one with the same key and variant.
    pub replaced: u64,
    /// Objects evicted for room (bytes or the variant limit).
    pub evictions: u64,
    /// Lookups answered by this tier.
    pub hits: u64,
    /// Lookups this tier could not answer.
    pub misses: u64,
    /// Objects refused as too large.
    pub refused: u64,
    /// Objects removed by hard purges.
    pub purged_hard: u64,
    /// Objects marked stale by soft purges.
    pub purged_soft: u64,
    /// Torn, truncated or corrupt objects found and dropped (disk only).
    pub corrupt: u64,
    /// Writes that failed (disk only: the object was not stored there).
    pub write_errors: u64,
}

/// The counters a tier bumps, lock-free.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    inserts: AtomicU64,
    replaced: AtomicU64,
    evictions: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    refused: AtomicU64,
    purged_hard: AtomicU64,
    purged_soft: AtomicU64,
    corrupt: AtomicU64,
    write_errors: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn inserted(&self, replaced: bool, evicted: usize) {
        Self::add(&self.inserts, 1);
        Self::add(&self.replaced, replaced as u64);
        Self::add(&self.evictions, evicted as u64);
    }

    pub(crate) fn looked_up(&self, hit: bool) {
        Self::add(if hit { &self.hits } else { &self.misses }, 1);
    }

    pub(crate) fn refused(&self) {
        Self::add(&self.refused, 1);
    }

    pub(crate) fn purged(&self, mode: PurgeMode, n: usize) {
        match mode {
            PurgeMode::Hard => Self::add(&self.purged_hard, n as u64),
            PurgeMode::Soft => Self::add(&self.purged_soft, n as u64),
        }
    }

    pub(crate) fn corrupt(&self) {
        Self::add(&self.corrupt, 1);
    }

    pub(crate) fn write_error(&self) {
        Self::add(&self.write_errors, 1);
    }

    pub(crate) fn snapshot(&self, objects: u64, bytes: u64, capacity_bytes: u64) -> TierStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TierStats {
            objects,
            bytes,
            capacity_bytes,
            inserts: get(&self.inserts),
            replaced: get(&self.replaced),
            evictions: get(&self.evictions),
            hits: get(&self.hits),
            misses: get(&self.misses),
            refused: get(&self.refused),
            purged_hard: get(&self.purged_hard),
            purged_soft: get(&self.purged_soft),
            corrupt: get(&self.corrupt),
            write_errors: get(&self.write_errors),
        }
    }
}

/// The tiers an edge stores in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreConfig {
    /// The memory tier (default: [`MemoryConfig::default`]).
    pub memory: MemoryConfig,
    /// The disk tier; none by default.
    pub disk: Option<DiskConfig>,
}

/// How many objects a purge matched in each tier (a promoted object is in
/// both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Objects matched in memory.
    pub memory: usize,
    /// Objects matched on disk (0 without a disk tier).
    pub disk: usize,
}

/// Stats of every tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// The memory tier.
    pub memory: TierStats,
    /// The disk tier, if any.
    pub disk: Option<TierStats>,
}

/// The edge's storage: memory in front of an optional disk tier. Stores
/// write through to both; a memory miss looks on disk and a disk hit is
/// promoted to memory. Shareable between threads. With a disk tier,
/// [`Store::insert`], [`Store::get`], [`Store::lookup`] and [`Store::purge`]
/// do blocking file I/O: call them from `spawn_blocking` (or look in
/// [`Store::memory`] first, which never blocks on I/O).
#[derive(Debug)]
pub struct Store {
    memory: MemoryStore,
    disk: Option<DiskStore>,
    purges: Mutex<PurgeLog>,
}

/// Purges recent enough that a fill begun before them may still commit.
#[derive(Debug, Default)]
struct PurgeLog {
    /// The epoch the next purge gets.
    next: u64,
    /// The last [`PURGE_LOG_LEN`] purges with their epochs, oldest first.
    recent: VecDeque<(u64, Purge, PurgeMode)>,
}

/// Purges remembered for fills in progress; a fill older than all of them
/// is treated as purged (soft).
const PURGE_LOG_LEN: usize = 4096;

impl PurgeLog {
    /// The strongest purge since `epoch` that names `object`: `None` if
    /// none, a soft one if the log no longer reaches back that far.
    fn since(&self, epoch: u64, object: &Object) -> Option<PurgeMode> {
        if epoch == self.next {
            return None;
        }
        let oldest = self.recent.front().map_or(self.next, |(e, _, _)| *e);
        let mut found = (epoch < oldest).then_some(PurgeMode::Soft);
        for (_, purge, mode) in self.recent.iter().filter(|(e, _, _)| *e >= epoch) {
            if purge.matches(object) {
                if *mode == PurgeMode::Hard {
                    return Some(PurgeMode::Hard);
                }
                found = Some(PurgeMode::Soft);
            }
        }
        found
    }
}

impl Store {
    /// Opens the tiers `config` names (the disk tier rebuilds its index
    /// from its directory).
    pub fn open(config: StoreConfig) -> Result<Self, DiskError> {
        let disk = config.disk.map(DiskStore::open).transpose()?;
        Ok(Store {
            memory: MemoryStore::new(config.memory),
            disk,
            purges: Mutex::new(PurgeLog::default()),
        })
    }

    /// The memory tier alone.
    pub fn memory(&self) -> &MemoryStore {
        &self.memory
    }

    /// The disk tier, if configured.
    pub fn disk(&self) -> Option<&DiskStore> {
        self.disk.as_ref()
    }

    /// The largest body a fill may assemble: the larger of the tiers'
    /// per-object limits (the object may still be refused at commit if its
    /// head and metadata push it over).
    pub fn max_object_bytes(&self) -> u64 {
        let disk = self.disk.as_ref().map_or(0, DiskStore::max_object_bytes);
        self.memory.max_object_bytes().max(disk)
    }

    /// Stores `object` in every tier that accepts it. Refused only when no
    /// tier takes it; a disk write error is counted in the disk's
    /// `write_errors` and the object stays in memory.
    pub fn insert(&self, object: Object) -> Result<Arc<Object>, InsertError> {
        let object = Arc::new(object);
        let in_memory = self.memory.insert_arc(object.clone());
        let on_disk = match &self.disk {
            Some(disk) => match disk.insert(&object) {
                Ok(()) => true,
                Err(DiskError::TooLarge { .. }) => false,
                Err(err) => {
                    tracing::warn!(error = %err, key = ?object.key(), "disk tier write failed");
                    false
                }
            },
            None => false,
        };
        match in_memory {
            Ok(object) => Ok(object),
            Err(_) if on_disk => Ok(object),
            Err(err) => Err(err),
        }
    }

    /// The object under `key` with exactly `variant` (see
    /// [`MemoryStore::get`]), from memory, else from disk (then promoted).
    pub fn get(&self, key: &CacheKey, variant: &[u8]) -> Option<Arc<Object>> {
        if let Some(found) = self.memory.get(key, variant) {
            return Some(found);
        }
        let found = Arc::new(self.disk.as_ref()?.get(key, variant)?);
        self.promote(&found);
        Some(found)
    }

    /// Puts a disk hit in memory (an object too large for memory is still
    /// served, from disk).
    fn promote(&self, object: &Arc<Object>) {
        let _ = self.memory.insert_arc(object.clone());
    }

    /// The first object under `key` that `matches` accepts, from memory,
    /// else from disk (then promoted).
    pub fn lookup(&self, key: &CacheKey, mut matches: impl FnMut(&Object) -> bool) -> Option<Arc<Object>> {
        if let Some(found) = self.memory.lookup(key, &mut matches) {
            return Some(found);
        }
        let disk = self.disk.as_ref()?;
        let found = Arc::new(disk.lookup(key, &mut matches)?);
        self.promote(&found);
        Some(found)
    }

    /// Purges in every tier. A fill in progress when the purge came is
    /// treated as purged too when it commits (see [`Fill::commit`]).
    pub fn purge(&self, purge: &Purge, mode: PurgeMode) -> Purged {
        // Logged before the tiers are purged: a commit either lands in a
        // tier before the purge reaches it, or finds the purge in the log
        // once it has landed.
        {
            let mut log = self.purges.lock().expect("purge log lock");
            let epoch = log.next;
            log.next += 1;
            log.recent.push_back((epoch, purge.clone(), mode));
            if log.recent.len() > PURGE_LOG_LEN {
                log.recent.pop_front();
            }
        }
        self.purge_tiers(purge, mode)
    }

    /// Starts assembling a response into an object (see [`Fill`]): nothing
    /// is visible until [`Fill::commit`]. `expected_len` is the body length
    /// the origin declared, if it did.
    pub fn begin_fill(
        &self,
        key: CacheKey,
        meta: ObjectMeta,
        head: Bytes,
        expected_len: Option<u64>,
    ) -> Fill {
        let epoch = self.purges.lock().expect("purge log lock").next;
        Fill::new(key, meta, head, expected_len, self.max_object_bytes(), epoch)
    }

    /// Stores a fill's object, then applies any purge that came while the
    /// fill was in progress and names it: a hard one removes it again
    /// (every variant under its key), a soft one marks it stale. The object
    /// is returned either way (the clients waiting for this fill get it).
    pub(crate) fn insert_filled(&self, object: Object, epoch: u64) -> Result<Arc<Object>, InsertError> {
        let object = self.insert(object)?;
        let late = self.purges.lock().expect("purge log lock").since(epoch, &object);
        if let Some(mode) = late {
            let purge = Purge::Key(object.key().clone());
            match mode {
                PurgeMode::Hard => {
                    self.purge_tiers(&purge, PurgeMode::Hard);
                }
                PurgeMode::Soft => {
                    object.mark_soft_purged();
                    self.purge_tiers(&purge, PurgeMode::Soft);
                }
            }
        }
        Ok(object)
    }

    fn purge_tiers(&self, purge: &Purge, mode: PurgeMode) -> Purged {
        Purged {
            memory: self.memory.purge(purge, mode),
            disk: self.disk.as_ref().map_or(0, |d| d.purge(purge, mode)),
        }
    }

    /// Stats of every tier.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            memory: self.memory.stats(),
            disk: self.disk.as_ref().map(DiskStore::stats),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    use super::*;

    fn config(dir: &Path, memory_max_object: u64) -> StoreConfig {
        StoreConfig {
            memory: MemoryConfig {
                capacity_bytes: 1 << 20,
                max_object_bytes: memory_max_object,
                max_variants: 4,
                shards: 1,
            },
            disk: Some(DiskConfig {
                capacity_bytes: 4 << 20,
                sync: false,
                ..DiskConfig::new(dir)
            }),
        }
    }

    fn object(key: &str, body: &[u8], tag: &str) -> Object {
        Object::new(
            key.into(),
            ObjectMeta::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
                .with_url(format!("h{key}"))
                .with_tag(tag.to_owned()),
            Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
            Bytes::copy_from_slice(body),
        )
    }

    fn object_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("objects")).unwrap().count()
    }

    #[test]
    fn a_memory_miss_falls_to_disk_and_the_disk_hit_is_promoted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(config(dir.path(), 64 * 1024)).unwrap();
        let key: CacheKey = "/a".into();
        store.insert(object("/a", b"body", "t")).unwrap();
        assert_eq!(object_files(dir.path()), 1, "stores write through");
        store.memory().purge(&Purge::Key(key.clone()), PurgeMode::Hard);
        assert!(store.memory().get(&key, b"").is_none());
        assert_eq!(store.get(&key, b"").unwrap().body(), "body");
        // Promoted: the next hit is memory's, and disk sees no new lookup.
        let disk_hits = store.stats().disk.unwrap().hits;
        assert_eq!(disk_hits, 1);
        assert_eq!(store.get(&key, b"").unwrap().body(), "body");
        let stats = store.stats();
        assert_eq!(stats.disk.unwrap().hits, 1);
        assert_eq!(stats.memory.hits, 1);
        assert!(store.get(&"/none".into(), b"").is_none());
        assert_eq!(store.stats().disk.unwrap().misses, 1);
    }

    #[test]
    fn after_a_restart_objects_come_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(config(dir.path(), 64 * 1024)).unwrap();
            let mut fill = store.begin_fill(
                "/kept".into(),
                ObjectMeta::new(SystemTime::UNIX_EPOCH).with_tag("t"),
                Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
                Some(8),
            );
            fill.push(b"kept 4").unwrap();
            fill.push(b"ev").unwrap();
            fill.commit(&store).unwrap();
        }
        let store = Store::open(config(dir.path(), 64 * 1024)).unwrap();
        assert_eq!(store.memory().stats().objects, 0);
        assert_eq!(store.get(&"/kept".into(), b"").unwrap().body(), "kept 4ev");
        assert_eq!(store.memory().stats().objects, 1);
    }

    #[test]
    fn an_aborted_fill_leaves_nothing_in_either_tier() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(config(dir.path(), 64 * 1024)).unwrap();
        let mut fill = store.begin_fill(
            "/aborted".into(),
            ObjectMeta::new(SystemTime::UNIX_EPOCH),
            Bytes::new(),
            None,
        );
        fill.push(b"first half").unwrap();
        drop(fill);
        assert!(store.get(&"/aborted".into(), b"").is_none());
        assert_eq!(object_files(dir.path()), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        drop(store);
        let store = Store::open(config(dir.path(), 64 * 1024)).unwrap();
        assert!(store.get(&"/aborted".into(), b"").is_none());
    }

    #[test]
    fn an_object_too_large_for_memory_is_kept_on_disk_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(config(dir.path(), 1000)).unwrap();
        assert_eq!(store.max_object_bytes(), 4 << 20);
        let big = vec![b'x'; 5000];
        let stored = store.insert(object("/big", &big, "t")).unwrap();
        assert_eq!(stored.body().len(), 5000);
        assert_eq!(store.memory().stats().objects, 0);
        assert_eq!(store.get(&"/big".into(), b"").unwrap().body().len(), 5000);
        assert_eq!(store.memory().stats().objects, 0, "too large to promote");
        // Without a disk tier the same object is refused.
        let memory_only = Store::open(StoreConfig {
            disk: None,
            ..config(dir.path(), 1000)
        })
        .unwrap();
        assert_eq!(memory_only.max_object_bytes(), 1000);
        assert!(matches!(
            memory_only.insert(object("/big", &big, "t")),
            Err(InsertError::TooLarge { limit: 1000, .. })
        ));
    }

    #[test]
    fn purges_reach_both_tiers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(config(dir.path(), 64 * 1024)).unwrap();
        store.insert(object("/p/1", b"1", "photo-1")).unwrap();
        store.insert(object("/p/2", b"2", "photo-2")).unwrap();
        let soft = store.purge(&Purge::Tag("photo-1".into()), PurgeMode::Soft);
        assert_eq!(soft, Purged { memory: 1, disk: 1 });
        assert!(store.get(&"/p/1".into(), b"").unwrap().is_soft_purged());
        // Soft-purged on disk too: after a restart it is still stale.
        drop(store);
        let store = Store::open(config(dir.path(), 64 * 1024)).unwrap();
        assert!(store.get(&"/p/1".into(), b"").unwrap().is_soft_purged());
        assert!(!store.get(&"/p/2".into(), b"").unwrap().is_soft_purged());
        let hard = store.purge(&Purge::Prefix("h/p/".into()), PurgeMode::Hard);
        assert_eq!(hard, Purged { memory: 2, disk: 2 });
        assert!(store.get(&"/p/1".into(), b"").is_none());
        assert_eq!(object_files(dir.path()), 0);
    }

    fn begin(store: &Store, key: &str, tag: &str) -> Fill {
        let mut fill = store.begin_fill(
            key.into(),
            ObjectMeta::new(SystemTime::UNIX_EPOCH)
                .with_tag(tag.to_owned())
                .with_url(format!("h{key}")),
            Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
            None,
        );
        fill.push(b"fetched before the purge").unwrap();
        fill
    }

    #[test]
    fn a_hard_purge_during_a_fill_keeps_its_object_out_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(config(dir.path(), 64 * 1024)).unwrap();
        let in_flight = begin(&store, "/photo/1", "photo-1");
        let unrelated = begin(&store, "/photo/2", "photo-2");
        store.purge(&Purge::Tag("photo-1".into()), PurgeMode::Hard);
        // The waiting clients still get the answer.
        let object = in_flight.commit(&store).unwrap();
        assert_eq!(object.body(), "fetched before the purge");
        assert!(store.get(&"/photo/1".into(), b"").is_none());
        assert_eq!(object_files(dir.path()), 0);
        // A purge that names another object does not touch this one.
        unrelated.commit(&store).unwrap();
        assert!(!store.get(&"/photo/2".into(), b"").unwrap().is_soft_purged());
        // A fill begun after the purge is stored as usual.
        begin(&store, "/photo/1", "photo-1").commit(&store).unwrap();
        assert!(!store.get(&"/photo/1".into(), b"").unwrap().is_soft_purged());
        assert_eq!(object_files(dir.path()), 2);
    }

    #[test]
    fn a_soft_purge_during_a_fill_stores_its_object_stale_in_both_tiers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(config(dir.path(), 64 * 1024)).unwrap();
            let in_flight = begin(&store, "/app.js", "static");
            store.purge(&Purge::Prefix("h/app".into()), PurgeMode::Soft);
            assert!(in_flight.commit(&store).unwrap().is_soft_purged());
            assert!(store.get(&"/app.js".into(), b"").unwrap().is_soft_purged());
        }
        let store = Store::open(config(dir.path(), 64 * 1024)).unwrap();
        assert!(store.get(&"/app.js".into(), b"").unwrap().is_soft_purged());
    }

    #[test]
    fn a_fill_older_than_the_purge_log_is_stored_stale() {
        let store = Store::open(StoreConfig::default()).unwrap();
        let old = begin(&store, "/old", "t");
        for i in 0..=PURGE_LOG_LEN {
            store.purge(&Purge::Key(format!("/other/{i}").into()), PurgeMode::Hard);
        }
        assert!(old.commit(&store).unwrap().is_soft_purged());
        let recent = begin(&store, "/recent", "t");
        store.purge(&Purge::Key("/other".into()), PurgeMode::Hard);
        assert!(!recent.commit(&store).unwrap().is_soft_purged());
    }

    #[test]
    fn purges_match_by_key_tag_and_url_prefix() {
        let o = object("/p/1", b"", "photo-1");
        assert!(Purge::Key("/p/1".into()).matches(&o));
        assert!(!Purge::Key("/p/10".into()).matches(&o));
        assert!(Purge::Tag("photo-1".into()).matches(&o));
        assert!(!Purge::Tag("photo".into()).matches(&o));
        assert!(Purge::Prefix("h/p/".into()).matches(&o));
        assert!(!Purge::Prefix("/p/".into()).matches(&o));
    }
}
