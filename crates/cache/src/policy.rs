//! Eviction policies: each maps an entry's history to its place in the
//! eviction order (smallest leaves first).

use serde::{Deserialize, Serialize};

/// Which entry leaves first when the cache is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvictionPolicy {
    /// Least recently used (the default).
    #[default]
    Lru,
    /// Least frequently used; ties go to the least recently used.
    Lfu,
    /// First in, first out: reads do not matter.
    Fifo,
}

impl EvictionPolicy {
    /// Order key of a fresh entry inserted at `tick`.
    pub(crate) fn on_insert(self, tick: u64) -> (u64, u64) {
        (0, tick)
    }

    /// Order key after a read at `tick`; `hits` counts reads so far.
    pub(crate) fn on_access(self, current: (u64, u64), hits: u64, tick: u64) -> (u64, u64) {
        match self {
            EvictionPolicy::Lru => (0, tick),
            EvictionPolicy::Lfu => (hits, tick),
            EvictionPolicy::Fifo => current,
        }
    }
}
