//! The bookkeeping both tiers share: objects by id, primary key to its
//! variants, the tag index, and the S3-FIFO order, kept in step on every
//! insert, eviction and purge.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use bytes::Bytes;

use super::object::{CacheKey, Object};
use super::s3fifo::S3Fifo;
use super::Purge;

/// What the index needs to know of an entry.
pub(crate) trait Indexed {
    fn key(&self) -> &CacheKey;
    fn variant(&self) -> &[u8];
    fn url(&self) -> &[u8];
    fn tags(&self) -> &[Bytes];
    fn charge(&self) -> u64;
}

impl Indexed for std::sync::Arc<Object> {
    fn key(&self) -> &CacheKey {
        Object::key(self)
    }
    fn variant(&self) -> &[u8] {
        &self.meta().variant
    }
    fn url(&self) -> &[u8] {
        &self.meta().url
    }
    fn tags(&self) -> &[Bytes] {
        &self.meta().tags
    }
    fn charge(&self) -> u64 {
        Object::charge(self)
    }
}

/// What an insert pushed out.
#[derive(Debug)]
pub(crate) struct Removed<V> {
    /// The entry with the same key and variant, replaced, with its id.
    pub(crate) replaced: Option<(u64, V)>,
    /// Entries evicted for room (bytes or the variant limit), with their ids.
    pub(crate) evicted: Vec<(u64, V)>,
}

/// Entries of one tier (or shard) under a byte bound.
#[derive(Debug)]
pub(crate) struct Index<V> {
    order: S3Fifo,
    max_variants: usize,
    entries: HashMap<u64, V>,
    by_key: HashMap<CacheKey, Vec<u64>>,
    tags: HashMap<Bytes, HashSet<u64>>,
}

/// The ghost hash of a key and variant (the same across restarts:
/// `DefaultHasher::new` has fixed keys).
fn ghost_hash(key: &CacheKey, variant: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    variant.hash(&mut h);
    h.finish()
}

/// Gives back a map's memory once it holds under a third of what it grew
/// for (maps never shrink by themselves: after many small objects gave way
/// to a few large ones, their slots would be memory the byte bound does not
/// see).
pub(crate) fn shrink_map<K: Eq + Hash, T>(map: &mut HashMap<K, T>) {
    if map.capacity() > 3 * map.len() + 64 {
        map.shrink_to(map.len());
    }
}

impl<V: Indexed> Index<V> {
    pub(crate) fn new(capacity: u64, max_variants: usize) -> Self {
        Index {
            order: S3Fifo::new(capacity),
            max_variants: max_variants.max(1),
            entries: HashMap::new(),
            by_key: HashMap::new(),
            tags: HashMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.order.bytes()
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.order.capacity()
    }

    /// Adds `value` as entry `id` (the caller refused anything larger than
    /// the capacity). Room is made first, so the new entry is never its own
    /// victim. `survivor` places it in the main queue (restart).
    pub(crate) fn insert(&mut self, id: u64, value: V, survivor: bool) -> Removed<V> {
        let mut removed = Removed {
            replaced: None,
            evicted: Vec::new(),
        };
        let existing = self.by_key.get(value.key()).cloned().unwrap_or_default();
        for old in &existing {
            if self.entries[old].variant() == value.variant() {
                removed.replaced = self.remove(*old).map(|v| (*old, v));
            }
        }
        // Too many variants: the oldest (lowest id) leaves.
        loop {
            let ids = self.by_key.get(value.key()).map(Vec::as_slice).unwrap_or(&[]);
            if ids.len() < self.max_variants {
                break;
            }
            let oldest = *ids.iter().min().expect("non-empty");
            removed.evicted.extend(self.remove(oldest).map(|v| (oldest, v)));
        }
        let charge = value.charge();
        while self.order.bytes() + charge > self.order.capacity() {
            let Some(victim) = self.order.evict() else {
                break;
            };
            removed.evicted.extend(self.unlink(victim).map(|v| (victim, v)));
        }
        let ghost = ghost_hash(value.key(), value.variant());
        if survivor {
            self.order.insert_main(id, charge, ghost);
        } else {
            self.order.insert(id, charge, ghost);
        }
        self.by_key.entry(value.key().clone()).or_default().push(id);
        for tag in value.tags() {
            self.tags.entry(tag.clone()).or_default().insert(id);
        }
        self.entries.insert(id, value);
        removed
    }

    /// Counts a read of `id` for the eviction order.
    pub(crate) fn touch(&self, id: u64) {
        self.order.touch(id);
    }

    /// The first variant under `key` that `matches` accepts.
    pub(crate) fn find(&self, key: &CacheKey, mut matches: impl FnMut(&V) -> bool) -> Option<(u64, &V)> {
        let ids = self.by_key.get(key)?;
        ids.iter()
            .map(|id| (*id, &self.entries[id]))
            .find(|(_, v)| matches(v))
    }

    /// Ids of every variant under `key`, oldest first.
    pub(crate) fn ids_of(&self, key: &CacheKey) -> Vec<u64> {
        self.by_key.get(key).cloned().unwrap_or_default()
    }

    /// Every variant under `key`.
    pub(crate) fn variants(&self, key: &CacheKey) -> Vec<&V> {
        self.by_key
            .get(key)
            .map(|ids| ids.iter().map(|id| &self.entries[id]).collect())
            .unwrap_or_default()
    }

    pub(crate) fn get(&self, id: u64) -> Option<&V> {
        self.entries.get(&id)
    }

    /// Ids of the entries a purge matches.
    pub(crate) fn matching(&self, purge: &Purge) -> Vec<u64> {
        match purge {
            Purge::Key(key) => self.by_key.get(key).cloned().unwrap_or_default(),
            Purge::Tag(tag) => self
                .tags
                .get(tag)
                .map(|ids| ids.iter().copied().collect())
                .unwrap_or_default(),
            Purge::Prefix(prefix) => self
                .entries
                .iter()
                .filter(|(_, v)| v.url().starts_with(prefix))
                .map(|(id, _)| *id)
                .collect(),
        }
    }

    /// Removes entry `id` from the order and every index.
    pub(crate) fn remove(&mut self, id: u64) -> Option<V> {
        self.order.remove(id);
        self.unlink(id)
    }

    /// Removes entry `id` from the maps (the order already forgot it).
    fn unlink(&mut self, id: u64) -> Option<V> {
        let value = self.entries.remove(&id)?;
        shrink_map(&mut self.entries);
        shrink_map(&mut self.by_key);
        shrink_map(&mut self.tags);
        if let Some(ids) = self.by_key.get_mut(value.key()) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_key.remove(value.key());
            }
        }
        for tag in value.tags() {
            if let Some(ids) = self.tags.get_mut(tag) {
                ids.remove(&id);
                if ids.capacity() > 3 * ids.len() + 64 {
                    ids.shrink_to(ids.len());
                }
                if ids.is_empty() {
                    self.tags.remove(tag);
                }
            }
        }
        Some(value)
    }

    /// Number of distinct tags indexed (tests check the index keeps step).
    #[cfg(test)]
    pub(crate) fn tag_count(&self) -> usize {
        self.tags.len()
    }

    /// Number of primary keys indexed.
    #[cfg(test)]
    pub(crate) fn key_count(&self) -> usize {
        self.by_key.len()
    }
}
