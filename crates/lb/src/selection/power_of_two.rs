//! Power of two random choices: sample two backends, take the one with
//! fewer requests in flight. Nearly as good as least connections without
//! looking at every backend, and without herding onto one idle backend.

use super::Selector;
use crate::backend::Backend;
use rand::Rng;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

pub struct PowerOfTwo;

impl Selector for PowerOfTwo {
    fn pick(&self, candidates: &[&Arc<Backend>], _: &[Arc<Backend>], _: u64, _: u64) -> Option<Arc<Backend>> {
        let n = candidates.len();
        if n <= 1 {
            return candidates.first().map(|b| Arc::clone(b));
        }
        let mut rng = rand::thread_rng();
        let i = rng.gen_range(0..n);
        let j = (i + rng.gen_range(1..n)) % n;
        let (a, b) = (candidates[i], candidates[j]);
        let la = a.in_flight.load(Relaxed) as u128 * b.weight as u128;
        let lb = b.in_flight.load(Relaxed) as u128 * a.weight as u128;
        Some(Arc::clone(if la <= lb { a } else { b }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::backend::InFlight;

    #[test]
    fn never_picks_the_busiest_of_two() {
        let all = backends(&[1, 1]);
        let _busy: Vec<_> = (0..5).map(|_| InFlight::new(all[0].clone())).collect();
        for _ in 0..50 {
            assert_eq!(
                super::super::choose(&PowerOfTwo, &all, &[], 0, 1).unwrap().addr,
                all[1].addr
            );
        }
    }

    #[test]
    fn the_idle_backend_wins_only_when_sampled() {
        // Idle, busy, busy: the idle one is in two of the three possible
        // pairs, so it takes about 2/3 of the picks (least connections
        // would take it always, a random choice a third of the time).
        let all = backends(&[1, 1, 1]);
        let _busy: Vec<_> = (0..5)
            .flat_map(|_| [InFlight::new(all[1].clone()), InFlight::new(all[2].clone())])
            .collect();
        let idle = (0..3000)
            .filter(|_| super::super::choose(&PowerOfTwo, &all, &[], 0, 1).unwrap().addr == all[0].addr)
            .count();
        assert!((1650..2350).contains(&idle), "{idle} of 3000");
    }

    #[test]
    fn idle_backends_share_roughly_evenly() {
        let all = backends(&[1, 1, 1, 1]);
        let d = distribution(&PowerOfTwo, &all, 4000);
        assert!(d.values().all(|&n| (700..1300).contains(&n)), "{d:?}");
    }
}
