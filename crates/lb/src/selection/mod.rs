//! Backend selection: one module per algorithm, all behind [`Selector`].
//!
//! Every selector skips backends that are unavailable (unhealthy, draining,
//! ejected) or already tried by this request. If passive ejection has taken
//! out every healthy backend, selection falls back to the ejected ones
//! ("panic mode", as Envoy calls it): a guess beats a certain 503.

mod consistent_hash;
mod least_connections;
mod power_of_two;
mod round_robin;
mod weighted_round_robin;

use crate::backend::Backend;
use crate::config::Algorithm;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use consistent_hash::ConsistentHash;
pub use least_connections::LeastConnections;
pub use power_of_two::PowerOfTwo;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::WeightedRoundRobin;

/// Picks a backend for a request.
pub trait Selector: Send + Sync {
    /// Chooses among `candidates` (already filtered); `key` is the request's
    /// hash key for algorithms that use one; `version` identifies the
    /// backend set (for caches such as the hash ring).
    fn pick(
        &self,
        candidates: &[&Arc<Backend>],
        all: &[Arc<Backend>],
        key: u64,
        version: u64,
    ) -> Option<Arc<Backend>>;
}

/// The selector of an algorithm.
pub fn selector(algorithm: Algorithm) -> Box<dyn Selector> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::default()),
        Algorithm::WeightedRoundRobin => Box::new(WeightedRoundRobin::default()),
        Algorithm::LeastConnections => Box::new(LeastConnections::default()),
        Algorithm::PowerOfTwo => Box::new(PowerOfTwo),
        Algorithm::ConsistentHash => Box::new(ConsistentHash::default()),
    }
}

/// Filters the set and asks the selector.
pub fn choose(
    selector: &dyn Selector,
    all: &[Arc<Backend>],
    tried: &[SocketAddr],
    key: u64,
    version: u64,
) -> Option<Arc<Backend>> {
    let now = Instant::now();
    let fresh = |b: &&Arc<Backend>| !tried.contains(&b.addr);
    let available: Vec<&Arc<Backend>> = all.iter().filter(fresh).filter(|b| b.is_available(now)).collect();
    if !available.is_empty() {
        return selector.pick(&available, all, key, version);
    }
    let panic_mode: Vec<&Arc<Backend>> = all
        .iter()
        .filter(fresh)
        .filter(|b| b.is_healthy() && !b.is_draining())
        .collect();
    if panic_mode.is_empty() {
        return None;
    }
    selector.pick(&panic_mode, all, key, version)
}

/// A stable hash (the same across builds and restarts, unlike std's
/// `DefaultHasher`), so a consistent-hash ring maps keys the same way after
/// the LB restarts: FNV-1a, then murmur3's 64-bit finaliser, because FNV
/// alone leaves similar inputs ("127.0.0.1:9101#1", "#2", ...) clustered on
/// the ring.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use crate::config::BackendSpec;
    use std::collections::HashMap;

    pub fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        let metrics = crate::metrics::Metrics::new();
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 9000 + i).parse().unwrap();
                let b = Backend::new(&BackendSpec { addr, weight: w }, metrics.backend(addr));
                b.set_healthy(true);
                Arc::new(b)
            })
            .collect()
    }

    /// Picks `n` times with keys 0..n and counts picks per backend port.
    pub fn distribution(sel: &dyn Selector, all: &[Arc<Backend>], n: u64) -> HashMap<u16, u64> {
        let mut counts = HashMap::new();
        for k in 0..n {
            let b = choose(sel, all, &[], stable_hash(&k.to_le_bytes()), 1).unwrap();
            *counts.entry(b.addr.port()).or_insert(0) += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn unavailable_and_tried_backends_are_skipped() {
        let all = backends(&[1, 1, 1]);
        all[0].drain();
        let sel = RoundRobin::default();
        let tried = [all[1].addr];
        for _ in 0..10 {
            assert_eq!(choose(&sel, &all, &tried, 0, 1).unwrap().addr, all[2].addr);
        }
        let tried = [all[1].addr, all[2].addr];
        assert!(choose(&sel, &all, &tried, 0, 1).is_none());
    }

    #[test]
    fn panic_mode_uses_ejected_backends_when_nothing_else_is_left() {
        let all = backends(&[1]);
        let c = crate::config::OutlierConfig {
            consecutive_failures: 1,
            ..Default::default()
        };
        all[0].record_result(crate::backend::RequestResult::Failed, &c);
        assert!(all[0].is_ejected(Instant::now()));
        assert_eq!(
            choose(&RoundRobin::default(), &all, &[], 0, 1).unwrap().addr,
            all[0].addr
        );
    }
}
