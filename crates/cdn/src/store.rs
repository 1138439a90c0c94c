//! Where stored objects live: a byte-bounded memory tier with S3-FIFO
//! eviction ([`memory`]), an optional disk tier whose index survives a
//! restart ([`disk`]), purge by key, tag or URL prefix, and fills that
//! become objects only when complete ([`fill`]). [`Store`] ties the tiers
//! together: a memory miss falls to disk and a disk hit is promoted.

pub mod disk;
pub mod fill;
mod index;
pub mod memory;
pub mod object;
mod s3fifo;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
}

impl Store {
    /// Opens the tiers `config` names (the disk tier rebuilds its index
    /// from its directory).
    pub fn open(config: StoreConfig) -> Result<Self, DiskError> {
        let disk = config.disk.map(DiskStore::open).transpose()?;
        Ok(Store {
            memory: MemoryStore::new(config.memory),
            disk,
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
        self.lookup(key, |o| o.meta().variant == variant)
    }

    /// The first object under `key` that `matches` accepts, from memory,
    /// else from disk (then promoted).
    pub fn lookup(&self, key: &CacheKey, mut matches: impl FnMut(&Object) -> bool) -> Option<Arc<Object>> {
        if let Some(found) = self.memory.lookup(key, &mut matches) {
            return Some(found);
        }
        let disk = self.disk.as_ref()?;
        let found = Arc::new(disk.lookup(key, &mut matches)?);
        // A promotion too large for memory is still served from disk.
        let _ = self.memory.insert_arc(found.clone());
        Some(found)
    }

    /// Purges in every tier.
    pub fn purge(&self, purge: &Purge, mode: PurgeMode) -> Purged {
        Purged {
            memory: self.memory.purge(purge, mode),
            disk: self.disk.as_ref().map_or(0, |d| d.purge(purge, mode)),
        }
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
        Fill::new(key, meta, head, expected_len, self.max_object_bytes())
    }

    /// Stats of every tier.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            memory: self.memory.stats(),
            disk: self.disk.as_ref().map(DiskStore::stats),
        }
    }
}
