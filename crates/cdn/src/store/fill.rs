//! A fill in progress is not an object: the server assembles the origin's
//! answer in a [`Fill`] while it streams it to the client, and only a
//! complete body becomes visible to others, at [`Fill::commit`]. Dropping a
//! fill (the client aborted, the origin broke the connection, the answer
//! grew past the size limit) stores nothing.

use std::sync::Arc;

use bytes::Bytes;

use super::object::{CacheKey, Object, ObjectMeta};
use super::{InsertError, Store};

/// Why a fill did not become an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    /// The body grew past the store's per-object limit; the fill keeps
    /// refusing (and holds no body) from then on.
    #[error("body past the per-object limit of {limit} bytes")]
    TooLarge {
        /// The limit in force ([`Store::max_object_bytes`]).
        limit: u64,
    },
    /// The body's length is not the one the origin declared: a truncated
    /// (or overlong) answer is never stored.
    #[error("body of {got} bytes where {expected} were declared")]
    LengthMismatch {
        /// The declared length.
        expected: u64,
        /// The bytes received.
        got: u64,
    },
    /// No tier accepted the finished object.
    #[error(transparent)]
    Refused(#[from] InsertError),
}

/// A response being assembled; see the module docs. Made by
/// [`Store::begin_fill`].
#[derive(Debug)]
pub struct Fill {
    key: CacheKey,
    meta: ObjectMeta,
    head: Bytes,
    body: Vec<u8>,
    received: u64,
    expected: Option<u64>,
    limit: u64,
    too_large: bool,
    purge_epoch: u64,
}

impl Fill {
    pub(crate) fn new(
        key: CacheKey,
        meta: ObjectMeta,
        head: Bytes,
        expected: Option<u64>,
        limit: u64,
        purge_epoch: u64,
    ) -> Self {
        // A declared length within the limit is reserved at once, so the
        // body ends up in one allocation of exactly its size.
        let reserve = expected.filter(|n| *n <= limit).unwrap_or(0);
        Fill {
            key,
            meta,
            head,
            body: Vec::with_capacity(reserve as usize),
            received: 0,
            expected,
            limit,
            too_large: expected.is_some_and(|n| n > limit),
            purge_epoch,
        }
    }

    /// Appends a piece of the body. Fails once the body passes the limit
    /// (or at once when the declared length already did): the server goes
    /// on streaming to its client and drops the fill.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), FillError> {
        self.received += chunk.len() as u64;
        if self.too_large || self.received > self.limit {
            self.too_large = true;
            self.body = Vec::new();
            return Err(FillError::TooLarge { limit: self.limit });
        }
        self.body.extend_from_slice(chunk);
        Ok(())
    }

    /// Body bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The primary key the object will be stored under.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Makes the complete body an object in `store` and returns it (the
    /// coalesced waiters are answered from it). Refused when the body went
    /// past the limit, differs from the declared length, or no tier takes
    /// it; then nothing is stored. A purge that came while the fill was in
    /// progress and names the object applies to it: a hard one leaves it
    /// out of the store (with every variant under its key), a soft one
    /// stores it marked stale, so content fetched before a purge is never
    /// served as fresh after it.
    pub fn commit(self, store: &Store) -> Result<Arc<Object>, FillError> {
        let epoch = self.purge_epoch;
        let object = self.finish()?;
        Ok(store.insert_filled(object, epoch)?)
    }

    /// The complete object, without storing it.
    pub fn finish(mut self) -> Result<Object, FillError> {
        if self.too_large {
            return Err(FillError::TooLarge { limit: self.limit });
        }
        if let Some(expected) = self.expected {
            if expected != self.received {
                return Err(FillError::LengthMismatch {
                    expected,
                    got: self.received,
                });
            }
        }
        // Whatever a grown Vec over-allocated would be resident memory the
        // accounting does not see.
        self.body.shrink_to_fit();
        Ok(Object::new(
            self.key,
            self.meta,
            self.head,
            Bytes::from(self.body),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::super::{MemoryConfig, StoreConfig};
    use super::*;

    fn store(max_object: u64) -> Store {
        Store::open(StoreConfig {
            memory: MemoryConfig {
                capacity_bytes: 4 << 20,
                max_object_bytes: max_object,
                max_variants: 4,
                shards: 1,
            },
            disk: None,
        })
        .unwrap()
    }

    fn begin(store: &Store, expected: Option<u64>) -> Fill {
        store.begin_fill(
            "/f".into(),
            ObjectMeta::new(SystemTime::UNIX_EPOCH),
            Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
            expected,
        )
    }

    #[test]
    fn a_complete_fill_becomes_an_object_only_at_commit() {
        let store = store(1 << 20);
        let mut fill = begin(&store, Some(10));
        fill.push(b"hello").unwrap();
        assert!(store.get(&"/f".into(), b"").is_none());
        fill.push(b"world").unwrap();
        assert_eq!(fill.received(), 10);
        assert!(store.get(&"/f".into(), b"").is_none());
        let object = fill.commit(&store).unwrap();
        assert_eq!(object.body(), "helloworld");
        assert_eq!(store.get(&"/f".into(), b"").unwrap().body(), "helloworld");
    }

    #[test]
    fn a_dropped_fill_leaves_nothing_behind() {
        let store = store(1 << 20);
        let mut fill = begin(&store, None);
        fill.push(b"half of it").unwrap();
        drop(fill);
        assert!(store.get(&"/f".into(), b"").is_none());
        let stats = store.stats().memory;
        assert_eq!((stats.objects, stats.bytes, stats.inserts), (0, 0, 0));
    }

    #[test]
    fn a_dropped_fill_does_not_disturb_the_object_it_would_have_replaced() {
        let store = store(1 << 20);
        let mut first = begin(&store, None);
        first.push(b"old").unwrap();
        first.commit(&store).unwrap();
        let mut second = begin(&store, Some(100));
        second.push(b"new but trunc").unwrap();
        drop(second);
        assert_eq!(store.get(&"/f".into(), b"").unwrap().body(), "old");
    }

    #[test]
    fn a_body_shorter_or_longer_than_declared_is_not_stored() {
        let store = store(1 << 20);
        let mut short = begin(&store, Some(10));
        short.push(b"12345").unwrap();
        assert_eq!(
            short.commit(&store).unwrap_err(),
            FillError::LengthMismatch { expected: 10, got: 5 }
        );
        let mut long = begin(&store, Some(2));
        long.push(b"12345").unwrap();
        assert!(matches!(
            long.commit(&store),
            Err(FillError::LengthMismatch { expected: 2, got: 5 })
        ));
        assert!(store.get(&"/f".into(), b"").is_none());
    }

    #[test]
    fn a_body_past_the_limit_is_refused_while_it_streams() {
        let store = store(1000);
        let mut fill = begin(&store, None);
        fill.push(&[0; 600]).unwrap();
        assert_eq!(fill.push(&[0; 600]), Err(FillError::TooLarge { limit: 1000 }));
        assert!(fill.body.capacity() == 0, "the refused body is released");
        assert!(fill.push(b"x").is_err());
        assert!(fill.commit(&store).is_err());
        // A declared length past the limit is refused from the first byte.
        let mut declared = begin(&store, Some(5000));
        assert!(declared.push(b"x").is_err());
        assert!(store.get(&"/f".into(), b"").is_none());
    }

    #[test]
    fn a_body_within_the_limit_whose_object_is_not_is_refused_at_commit() {
        let store = store(1000);
        let mut fill = begin(&store, None);
        fill.push(&[0; 990]).unwrap();
        assert!(matches!(
            fill.commit(&store),
            Err(FillError::Refused(InsertError::TooLarge { limit: 1000, .. }))
        ));
        assert_eq!(store.stats().memory.refused, 1);
    }
}
