//! Round robin: each available backend in turn.

use super::Selector;
use crate::backend::Backend;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Selector for RoundRobin {
    fn pick(&self, candidates: &[&Arc<Backend>], _: &[Arc<Backend>], _: u64, _: u64) -> Option<Arc<Backend>> {
        let i = self.next.fetch_add(1, Relaxed);
        candidates.get(i % candidates.len().max(1)).map(|b| Arc::clone(b))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn equal_shares() {
        let all = backends(&[1, 5, 1]);
        let d = distribution(&RoundRobin::default(), &all, 300);
        assert!(d.values().all(|&n| n == 100), "{d:?}");
    }
}
