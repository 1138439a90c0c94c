//! Least connections: the backend with the fewest requests in flight,
//! relative to its weight; ties go round robin.

use super::Selector;
use crate::backend::Backend;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Default)]
pub struct LeastConnections {
    offset: AtomicUsize,
}

impl Selector for LeastConnections {
    fn pick(&self, candidates: &[&Arc<Backend>], _: &[Arc<Backend>], _: u64, _: u64) -> Option<Arc<Backend>> {
        let n = candidates.len();
        let start = self.offset.fetch_add(1, Relaxed);
        (0..n)
            .map(|i| candidates[(start + i) % n])
            // in_flight / weight, compared without division.
            .min_by(|a, b| {
                let la = a.in_flight.load(Relaxed) as u128 * b.weight as u128;
                let lb = b.in_flight.load(Relaxed) as u128 * a.weight as u128;
                la.cmp(&lb)
            })
            .map(Arc::clone)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::backend::InFlight;

    #[test]
    fn picks_the_least_loaded() {
        let all = backends(&[1, 1, 1]);
        let _a = [InFlight::new(all[0].clone()), InFlight::new(all[0].clone())];
        let _b = InFlight::new(all[1].clone());
        let sel = LeastConnections::default();
        for _ in 0..5 {
            assert_eq!(
                super::super::choose(&sel, &all, &[], 0, 1).unwrap().addr,
                all[2].addr
            );
        }
    }

    #[test]
    fn held_requests_spread_evenly() {
        let all = backends(&[1, 1, 1]);
        let sel = LeastConnections::default();
        let held: Vec<InFlight> = (0..30)
            .map(|_| InFlight::new(super::super::choose(&sel, &all, &[], 0, 1).unwrap()))
            .collect();
        assert!(all.iter().all(|b| b.in_flight.load(Relaxed) == 10));
        drop(held);
    }
}
