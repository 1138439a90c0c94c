//! What the store keeps: a cache key, the stored response (head and body)
//! and the metadata the edge needs to serve, revalidate and purge it.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// The primary cache key of a stored response (method, host, path and
/// query as the policy builds it; the store treats it as opaque bytes).
/// Several objects may share one primary key, one per `Vary` variant.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(Bytes);

impl CacheKey {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key's bytes as a shared buffer (no copy).
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// Length of the key in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the key is empty (legal, if odd).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({:?})", String::from_utf8_lossy(&self.0))
    }
}

impl From<Bytes> for CacheKey {
    fn from(bytes: Bytes) -> Self {
        CacheKey(bytes)
    }
}

impl From<Vec<u8>> for CacheKey {
    fn from(bytes: Vec<u8>) -> Self {
        CacheKey(Bytes::from(bytes))
    }
}

impl From<&[u8]> for CacheKey {
    fn from(bytes: &[u8]) -> Self {
        CacheKey(Bytes::copy_from_slice(bytes))
    }
}

impl From<String> for CacheKey {
    fn from(s: String) -> Self {
        CacheKey(Bytes::from(s))
    }
}

impl From<&str> for CacheKey {
    fn from(s: &str) -> Self {
        CacheKey(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// What the edge knows about a stored response besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The secondary key: the request's normalised values of the fields the
    /// response's `Vary` names, as the policy writes them. Empty (the
    /// default) for a response without `Vary`. Objects under one primary key
    /// with the same variant replace each other.
    pub variant: Bytes,
    /// The URL the object answers (host and path, as the server writes
    /// it); purge by prefix matches its start. Empty by default (then only
    /// an empty prefix matches).
    pub url: Bytes,
    /// Purge tags (the origin's `Surrogate-Key` / `Cache-Tag` values, one
    /// per tag). None by default.
    pub tags: Vec<Bytes>,
    /// When the request that fetched the response was sent (RFC 9111's
    /// `request_time`). Defaults to the `stored_at` given to [`ObjectMeta::new`].
    pub requested_at: SystemTime,
    /// When the response was received (RFC 9111's `response_time`).
    pub stored_at: SystemTime,
    /// Freshness lifetime as the policy computed it. Zero by default (stale
    /// at once: served only after revalidation or as stale content).
    pub fresh_for: Duration,
}

impl ObjectMeta {
    /// Metadata of a response received at `stored_at`: no variant, no URL,
    /// no tags, requested at `stored_at`, fresh for zero seconds.
    pub fn new(stored_at: SystemTime) -> Self {
        ObjectMeta {
            variant: Bytes::new(),
            url: Bytes::new(),
            tags: Vec::new(),
            requested_at: stored_at,
            stored_at,
            fresh_for: Duration::ZERO,
        }
    }

    /// Sets the variant (secondary) key.
    pub fn with_variant(mut self, variant: impl Into<Bytes>) -> Self {
        self.variant = variant.into();
        self
    }

    /// Sets the URL prefix purges match.
    pub fn with_url(mut self, url: impl Into<Bytes>) -> Self {
        self.url = url.into();
        self
    }

    /// Adds a purge tag.
    pub fn with_tag(mut self, tag: impl Into<Bytes>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Sets the freshness lifetime.
    pub fn with_fresh_for(mut self, fresh_for: Duration) -> Self {
        self.fresh_for = fresh_for;
        self
    }

    /// Sets when the request was sent.
    pub fn with_requested_at(mut self, requested_at: SystemTime) -> Self {
        self.requested_at = requested_at;
        self
    }
}

/// Estimated bytes the store spends on an object beyond its key, head,
/// body, variant, URL and tags: the object's allocation and fields, its
/// slots in the maps and queues, and its share of the eviction policy's
/// ghost list. Counted against the byte bound so many tiny objects cannot
/// hold much more memory than configured.
pub const ENTRY_OVERHEAD: u64 = 1152;

/// Estimated bytes per purge tag beyond the tag's own bytes (its slot in the
/// object and in the tag index).
pub const TAG_OVERHEAD: u64 = 192;

/// A stored response: immutable once stored, except for the soft-purge mark.
/// Shared as `Arc<Object>`; a reader keeps its copy alive even after the
/// store dropped it.
#[derive(Debug)]
pub struct Object {
    key: CacheKey,
    meta: ObjectMeta,
    head: Bytes,
    body: Bytes,
    soft_purged: AtomicBool,
}

impl Object {
    /// A stored response under `key`: `head` is the response head as it is
    /// stored (status line and fields), `body` the whole body. Not soft
    /// purged. `head` and `body` should own their memory exactly (a slice
    /// of a larger buffer keeps the whole buffer alive while only the
    /// slice is charged); [`Fill`](super::Fill) builds bodies that do.
    pub fn new(key: CacheKey, meta: ObjectMeta, head: Bytes, body: Bytes) -> Self {
        Object {
            key,
            meta,
            head,
            body,
            soft_purged: AtomicBool::new(false),
        }
    }

    /// The primary key.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// The metadata.
    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    /// The stored response head.
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// The stored body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether a soft purge marked the object stale: it must not be served
    /// as fresh, only revalidated or served as stale content (grace,
    /// `stale-if-error`).
    pub fn is_soft_purged(&self) -> bool {
        self.soft_purged.load(Ordering::Acquire)
    }

    pub(crate) fn mark_soft_purged(&self) {
        self.soft_purged.store(true, Ordering::Release);
    }

    /// Bytes this object is charged in a tier's budget: key, head, body,
    /// variant, URL, tags and the fixed estimates [`ENTRY_OVERHEAD`] and
    /// [`TAG_OVERHEAD`].
    pub fn charge(&self) -> u64 {
        charge_of(
            &self.key,
            &self.meta,
            self.head.len() as u64,
            self.body.len() as u64,
        )
    }
}

/// The charge of an object with these parts (see [`Object::charge`]).
pub(crate) fn charge_of(key: &CacheKey, meta: &ObjectMeta, head: u64, body: u64) -> u64 {
    let tags: u64 = meta.tags.iter().map(|t| t.len() as u64 + TAG_OVERHEAD).sum();
    key.len() as u64 + meta.variant.len() as u64 + meta.url.len() as u64 + tags + head + body + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_counts_every_part_and_the_overheads() {
        let meta = ObjectMeta::new(SystemTime::UNIX_EPOCH)
            .with_variant("gzip")
            .with_url("h/a")
            .with_tag("t1")
            .with_tag("tag2");
        let o = Object::new(
            "key".into(),
            meta,
            Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
            Bytes::from(vec![0u8; 1000]),
        );
        let expected = 3 + 4 + 3 + (2 + TAG_OVERHEAD) + (4 + TAG_OVERHEAD) + 19 + 1000 + ENTRY_OVERHEAD;
        assert_eq!(o.charge(), expected);
    }

    #[test]
    fn soft_purge_marks_and_keys_convert() {
        let o = Object::new(
            CacheKey::from(b"k".as_slice()),
            ObjectMeta::new(SystemTime::UNIX_EPOCH),
            Bytes::new(),
            Bytes::new(),
        );
        assert!(!o.is_soft_purged());
        o.mark_soft_purged();
        assert!(o.is_soft_purged());
        assert_eq!(CacheKey::from("k"), CacheKey::from(String::from("k")));
        assert_eq!(CacheKey::from(vec![b'k']).as_bytes(), b"k");
        assert_eq!(format!("{:?}", CacheKey::from("k")), "CacheKey(\"k\")");
    }
}
