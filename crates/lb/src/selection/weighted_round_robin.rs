//! Smooth weighted round robin (nginx's): every pick adds each candidate's
//! weight to its running weight, takes the largest, and subtracts the total
//! from it. Shares match the weights exactly over a cycle, and a heavy
//! backend's turns are spread out instead of bunched.

use super::Selector;
use crate::backend::Backend;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct WeightedRoundRobin {
    /// Serialises picks: the update touches every candidate.
    lock: Mutex<()>,
}

impl Selector for WeightedRoundRobin {
    fn pick(&self, candidates: &[&Arc<Backend>], _: &[Arc<Backend>], _: u64, _: u64) -> Option<Arc<Backend>> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let total: i64 = candidates.iter().map(|b| b.weight as i64).sum();
        let mut best: Option<&Arc<Backend>> = None;
        for b in candidates {
            let w = b.current_weight.fetch_add(b.weight as i64, Relaxed) + b.weight as i64;
            if best.is_none_or(|x| x.current_weight.load(Relaxed) < w) {
                best = Some(b);
            }
        }
        let best = best?;
        best.current_weight.fetch_sub(total, Relaxed);
        Some(Arc::clone(best))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn shares_follow_weights_exactly() {
        let all = backends(&[1, 2, 3]);
        let d = distribution(&WeightedRoundRobin::default(), &all, 600);
        assert_eq!((d[&9000], d[&9001], d[&9002]), (100, 200, 300));
    }

    #[test]
    fn heavy_backend_is_interleaved() {
        let all = backends(&[5, 1, 1]);
        let sel = WeightedRoundRobin::default();
        let seq: Vec<u16> = (0..7)
            .map(|_| super::super::choose(&sel, &all, &[], 0, 1).unwrap().addr.port() - 9000)
            .collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0], "nginx's smooth sequence for 5:1:1");
    }
}
