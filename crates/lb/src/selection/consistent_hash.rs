//! Consistent hashing on a ring of virtual nodes (160 per unit of weight,
//! as ketama). A key maps to the first point at or after its hash; when that
//! backend is unavailable the walk continues clockwise, so only the keys of
//! a lost backend move. Every backend of the set is on the ring, healthy or
//! not, so a backend's return gives it back exactly its old keys.

use super::{stable_hash, Selector};
use crate::backend::Backend;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

const POINTS_PER_WEIGHT: u32 = 160;

#[derive(Default)]
pub struct ConsistentHash {
    ring: RwLock<(u64, Vec<(u64, SocketAddr)>)>,
}

fn build(all: &[Arc<Backend>]) -> Vec<(u64, SocketAddr)> {
    let mut ring: Vec<(u64, SocketAddr)> = all
        .iter()
        .flat_map(|b| {
            (0..POINTS_PER_WEIGHT * b.weight)
                .map(move |i| (stable_hash(format!("{}#{i}", b.addr).as_bytes()), b.addr))
        })
        .collect();
    ring.sort_unstable();
    ring
}

impl Selector for ConsistentHash {
    fn pick(
        &self,
        candidates: &[&Arc<Backend>],
        all: &[Arc<Backend>],
        key: u64,
        version: u64,
    ) -> Option<Arc<Backend>> {
        {
            let r = self.ring.read().unwrap_or_else(|e| e.into_inner());
            if r.0 != version || r.1.is_empty() {
                drop(r);
                *self.ring.write().unwrap_or_else(|e| e.into_inner()) = (version, build(all));
            }
        }
        let r = self.ring.read().unwrap_or_else(|e| e.into_inner());
        let ring = &r.1;
        if ring.is_empty() {
            return None;
        }
        let start = ring.partition_point(|(h, _)| *h < key);
        (0..ring.len())
            .map(|i| ring[(start + i) % ring.len()].1)
            .find_map(|addr| candidates.iter().find(|b| b.addr == addr))
            .map(|b| Arc::clone(b))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{choose, stable_hash};
    use super::*;

    #[test]
    fn same_key_same_backend_and_keys_spread() {
        let all = backends(&[1, 1, 1]);
        let sel = ConsistentHash::default();
        for k in 0..100u64 {
            let key = stable_hash(&k.to_le_bytes());
            let a = choose(&sel, &all, &[], key, 1).unwrap().addr;
            let b = choose(&sel, &all, &[], key, 1).unwrap().addr;
            assert_eq!(a, b);
        }
        let d = distribution(&sel, &all, 3000);
        assert!(d.values().all(|&n| (700..1300).contains(&n)), "{d:?}");
    }

    #[test]
    fn losing_a_backend_moves_only_its_keys() {
        let all = backends(&[1, 1, 1]);
        let sel = ConsistentHash::default();
        let keys: Vec<u64> = (0..2000u64).map(|k| stable_hash(&k.to_le_bytes())).collect();
        let before: Vec<_> = keys
            .iter()
            .map(|&k| choose(&sel, &all, &[], k, 1).unwrap().addr)
            .collect();
        all[1].drain();
        let after: Vec<_> = keys
            .iter()
            .map(|&k| choose(&sel, &all, &[], k, 1).unwrap().addr)
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != all[1].addr {
                assert_eq!(a, b, "a key of a surviving backend moved");
            } else {
                assert_ne!(*a, all[1].addr);
            }
        }
    }
}
