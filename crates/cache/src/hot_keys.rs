//! Hot keys found continuously (the seed's celebrity problem): a
//! Space-Saving sketch (Metwally, Agrawal and El Abbadi, 2005) that keeps
//! the `capacity` most requested keys in bounded memory, however many
//! distinct keys pass through it, each with its count and the most that
//! count may overstate. Every key requested more than `total / capacity`
//! times is in it. Counts halve every `half_life`, so a key that cooled
//! down leaves the top and the sketch follows the load as it moves.
//!
//! Meant for a router's per-key request counters: the keys it reports hot
//! are the ones to serve from the near-cache and spread over replicas.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One key of the top, by estimated requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotKey {
    pub key: String,
    /// Estimated requests (decayed): never less than the true count.
    pub count: u64,
    /// How much `count` may overstate it: the true count is at least
    /// `count - error`.
    pub error: u64,
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    count: u64,
    error: u64,
}

struct Sketch {
    counters: HashMap<String, Counter>,
    /// Requests counted (decayed like the counters).
    total: u64,
    /// When the counts last halved.
    decayed_at: Instant,
}

/// A Space-Saving sketch of requests per key (see the module's
/// documentation). Shared by a process's tasks.
pub struct HotKeys {
    sketch: Mutex<Sketch>,
    capacity: usize,
    half_life: Duration,
}

impl HotKeys {
    /// Keeps the `capacity` (at least 1) most requested keys; counts halve
    /// every `half_life`.
    pub fn new(capacity: usize, half_life: Duration) -> HotKeys {
        HotKeys::starting(capacity, half_life, Instant::now())
    }

    fn starting(capacity: usize, half_life: Duration, now: Instant) -> HotKeys {
        let capacity = capacity.max(1);
        HotKeys {
            sketch: Mutex::new(Sketch {
                counters: HashMap::with_capacity(capacity),
                total: 0,
                decayed_at: now,
            }),
            capacity,
            half_life: half_life.max(Duration::from_millis(1)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sketch> {
        self.sketch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one request for `key`.
    pub fn hit(&self, key: &str) {
        self.hit_at(key, 1, Instant::now());
    }

    fn hit_at(&self, key: &str, n: u64, now: Instant) {
        let mut s = self.lock();
        self.decay(&mut s, now);
        s.total = s.total.saturating_add(n);
        if let Some(c) = s.counters.get_mut(key) {
            c.count = c.count.saturating_add(n);
            return;
        }
        if s.counters.len() < self.capacity {
            s.counters.insert(key.to_owned(), Counter { count: n, error: 0 });
            return;
        }
        // Full: the new key takes the place of the least counted one, and
        // inherits its count as the bound of its own overstatement.
        let (victim, min) = s
            .counters
            .iter()
            .min_by_key(|(_, c)| c.count)
            .map(|(k, c)| (k.clone(), c.count))
            .expect("a full sketch has a counter");
        s.counters.remove(&victim);
        s.counters.insert(
            key.to_owned(),
            Counter {
                count: min.saturating_add(n),
                error: min,
            },
        );
    }

    /// Halves every count once per half-life elapsed since the last time.
    fn decay(&self, s: &mut Sketch, now: Instant) {
        let elapsed = now.saturating_duration_since(s.decayed_at);
        let halvings = (elapsed.as_nanos() / self.half_life.as_nanos()).min(64) as u32;
        if halvings == 0 {
            return;
        }
        s.decayed_at = now;
        let shift = |v: u64| v.checked_shr(halvings).unwrap_or(0);
        s.total = shift(s.total);
        s.counters.retain(|_, c| {
            c.count = shift(c.count);
            c.error = shift(c.error);
            c.count > 0
        });
    }

    /// The `n` most requested keys, the most first.
    pub fn top(&self, n: usize) -> Vec<HotKey> {
        self.top_at(n, Instant::now())
    }

    fn top_at(&self, n: usize, now: Instant) -> Vec<HotKey> {
        let mut s = self.lock();
        self.decay(&mut s, now);
        let mut keys: Vec<HotKey> = s
            .counters
            .iter()
            .map(|(k, c)| HotKey {
                key: k.clone(),
                count: c.count,
                error: c.error,
            })
            .collect();
        keys.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        keys.truncate(n);
        keys
    }

    /// Whether `key` surely takes at least `share` (0 to 1) of the requests
    /// counted: its guaranteed count (`count - error`) reaches it.
    pub fn is_hot(&self, key: &str, share: f64) -> bool {
        let mut s = self.lock();
        self.decay(&mut s, Instant::now());
        let Some(c) = s.counters.get(key) else {
            return false;
        };
        s.total > 0 && (c.count - c.error) as f64 >= share * s.total as f64
    }

    /// Requests counted (decayed).
    pub fn total(&self) -> u64 {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stream: a celebrity with 30 % of the requests, a few
    /// popular keys, and a long tail of 50 000 keys seen a few times each.
    fn stream() -> Vec<String> {
        let mut keys = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..100_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = match i % 10 {
                0..=2 => "user:celebrity".to_owned(),
                3 => format!("user:popular{}", x % 4),
                _ => format!("user:{}", x % 50_000),
            };
            keys.push(key);
        }
        keys
    }

    #[test]
    fn the_heavy_hitters_are_found_in_bounded_memory() {
        let t0 = Instant::now();
        let hot = HotKeys::starting(64, Duration::from_secs(3600), t0);
        let keys = stream();
        let mut truth: HashMap<&str, u64> = HashMap::new();
        for k in &keys {
            hot.hit_at(k, 1, t0);
            *truth.entry(k.as_str()).or_default() += 1;
        }
        assert!(hot.lock().counters.len() <= 64);
        assert_eq!(hot.total(), 100_000);
        let top = hot.top_at(5, t0);
        let names: Vec<&str> = top.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(names[0], "user:celebrity");
        let mut popular = names[1..].to_vec();
        popular.sort();
        assert_eq!(
            popular,
            ["user:popular0", "user:popular1", "user:popular2", "user:popular3"]
        );
        // Never under the truth, never over it by more than the error.
        for h in &top {
            let real = truth[h.key.as_str()];
            assert!(h.count >= real && h.count - h.error <= real, "{h:?} vs {real}");
        }
        assert!(hot.is_hot("user:celebrity", 0.25));
        assert!(!hot.is_hot("user:popular0", 0.25));
        assert!(!hot.is_hot("user:7", 0.01));
    }

    #[test]
    fn a_key_that_cools_down_leaves_the_top() {
        let t0 = Instant::now();
        let half_life = Duration::from_secs(10);
        let hot = HotKeys::starting(8, half_life, t0);
        for _ in 0..10_000 {
            hot.hit_at("user:yesterday", 1, t0);
        }
        assert_eq!(hot.top_at(1, t0)[0].key, "user:yesterday");
        // Five minutes later (30 half-lives) another key is the hot one.
        let later = t0 + half_life * 30;
        for _ in 0..100 {
            hot.hit_at("user:today", 1, later);
        }
        let top = hot.top_at(8, later);
        assert_eq!(top[0].key, "user:today");
        assert!(top.iter().all(|h| h.key != "user:yesterday"), "{top:?}");
        assert_eq!(hot.total(), 100);
    }

    #[test]
    fn an_evicted_key_carries_its_error() {
        let t0 = Instant::now();
        let hot = HotKeys::starting(2, Duration::from_secs(3600), t0);
        hot.hit_at("a", 5, t0);
        hot.hit_at("b", 3, t0);
        hot.hit_at("c", 1, t0); // takes b's place: count 4, error 3
        assert_eq!(
            hot.top_at(2, t0),
            vec![
                HotKey {
                    key: "a".into(),
                    count: 5,
                    error: 0
                },
                HotKey {
                    key: "c".into(),
                    count: 4,
                    error: 3
                },
            ]
        );
        assert!(!hot.is_hot("c", 0.2)); // surely only 1 of 9
        assert!(hot.is_hot("a", 0.5));
    }
}
