//! Response rate limiting (UDP), after BIND's `rate-limit`: the same
//! answer to the same client network (/24 for IPv4, /56 for IPv6) beyond
//! `responses_per_second` is dropped, except every `slip`-th one, which
//! goes out empty and truncated: a real client retries over TCP, which
//! cannot be spoofed, while the victim of a spoofed flood gets nothing
//! bigger than the query. The clock is passed in, so the decisions are
//! unit-tested without waiting.

use crate::config::RrlConfig;
use crate::geo::{mask, Network};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// What to do with one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send it empty with TC=1.
    Slip,
    Drop,
}

/// Buckets kept at most; past this, full ones are forgotten.
const MAX_BUCKETS: usize = 65_536;

struct Bucket {
    tokens: f64,
    at: Instant,
    limited: u32,
}

/// The limiter shared by the answering threads.
pub struct Limiter {
    rate: f64,
    slip: u32,
    exempt: Vec<Network>,
    buckets: Mutex<HashMap<(IpAddr, u64), Bucket>>,
}

impl Limiter {
    /// None when the configuration turns limiting off.
    pub fn new(config: &RrlConfig) -> Option<Limiter> {
        (config.responses_per_second > 0).then(|| Limiter {
            rate: f64::from(config.responses_per_second),
            slip: config.slip,
            exempt: config.exempt.iter().filter_map(|n| n.parse().ok()).collect(),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// The verdict on sending `answer` (what identifies it: the name, type
    /// and response code) to `client` at `now`.
    pub fn check(&self, client: IpAddr, answer: impl Hash, now: Instant) -> Verdict {
        if self.exempt.iter().any(|n| n.contains(client)) {
            return Verdict::Send;
        }
        let net = mask(client, if client.is_ipv4() { 24 } else { 56 });
        let mut h = std::collections::hash_map::DefaultHasher::new();
        answer.hash(&mut h);
        let key = (net, h.finish());
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            let (rate, burst) = (self.rate, self.rate);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_BUCKETS {
                // Under a flood of distinct keys: limit rather than grow.
                return Verdict::Drop;
            }
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: self.rate,
            at: now,
            limited: 0,
        });
        // A bucket holds one second of answers.
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Send;
        }
        b.limited += 1;
        if self.slip > 0 && b.limited.is_multiple_of(self.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(rate: u32, slip: u32) -> Limiter {
        Limiter::new(&RrlConfig {
            responses_per_second: rate,
            slip,
            exempt: vec!["10.9.0.0/16".into()],
        })
        .unwrap()
    }

    #[test]
    fn answers_past_the_rate_are_dropped_or_slipped() {
        let l = limiter(5, 2);
        let t = Instant::now();
        let client: IpAddr = [192, 0, 2, 1].into();
        let verdicts: Vec<_> = (0..9).map(|_| l.check(client, "www A", t)).collect();
        assert_eq!(&verdicts[..5], &[Verdict::Send; 5]);
        assert_eq!(
            &verdicts[5..],
            &[Verdict::Drop, Verdict::Slip, Verdict::Drop, Verdict::Slip]
        );
        // A neighbour in the same /24 shares the bucket; another answer does not.
        assert_eq!(l.check([192, 0, 2, 200].into(), "www A", t), Verdict::Drop);
        assert_eq!(l.check(client, "cdn A", t), Verdict::Send);
        // Tokens come back with time.
        assert_eq!(
            l.check(client, "www A", t + Duration::from_millis(400)),
            Verdict::Send
        );
    }

    #[test]
    fn exempt_networks_and_off() {
        let l = limiter(1, 0);
        let t = Instant::now();
        for _ in 0..10 {
            assert_eq!(l.check([10, 9, 1, 1].into(), "x", t), Verdict::Send);
        }
        assert_eq!(l.check([10, 8, 1, 1].into(), "x", t), Verdict::Send);
        assert_eq!(l.check([10, 8, 1, 1].into(), "x", t), Verdict::Drop);
        assert!(Limiter::new(&RrlConfig {
            responses_per_second: 0,
            ..RrlConfig::default()
        })
        .is_none());
    }
}
