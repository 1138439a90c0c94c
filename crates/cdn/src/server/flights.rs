//! Request coalescing and hit-for-miss: the origin fetches in flight, by
//! primary key, shared by every thread.
//!
//! The first request to miss a key leads a *flight* (it fetches); later
//! ones wait for its [`Outcome`] (bounded by the caller) and answer from
//! the object it stored. An answer that turns out uncacheable releases the
//! waiters at once and leaves a *hit-for-miss* mark for a while: requests
//! for that key then go to the origin in parallel instead of queueing
//! behind one another (Varnish's hit-for-miss). A later cacheable answer
//! is stored as usual and clears the mark.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::store::Object;

/// How a flight ended, as its waiters see it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The answer was stored: this object (which may be another variant
    /// than a waiter needs: it then looks up again).
    Stored(Arc<Object>),
    /// The answer could not be shared (not storable, too large): every
    /// waiter fetches for itself.
    Uncacheable,
    /// The origin failed (refused, timed out, broken): waiters answer with
    /// what they have (stale content) or this status, instead of hammering
    /// an origin that is down.
    Failed(u16),
    /// The leader went away without an outcome: waiters fetch for
    /// themselves.
    Abandoned,
}

/// What a request that missed should do.
pub enum Join {
    /// Fetch, then [`FlightGuard::finish`].
    Lead(FlightGuard),
    /// Another request is fetching: wait for its outcome.
    Wait(watch::Receiver<Option<Outcome>>),
    /// The key is marked hit-for-miss: fetch without coalescing.
    Pass,
}

enum Entry {
    Flight(watch::Sender<Option<Outcome>>),
    HitForMiss(Instant),
}

const SHARDS: usize = 16;
/// A shard past this many entries drops its expired hit-for-miss marks.
const SWEEP_AT: usize = 4096;

/// The flights of one edge.
pub struct Flights {
    shards: [Mutex<HashMap<Bytes, Entry>>; SHARDS],
    hit_for_miss: Duration,
}

impl Flights {
    /// No flights; uncacheable answers are remembered for `hit_for_miss`
    /// (zero: never).
    pub fn new(hit_for_miss: Duration) -> Arc<Self> {
        Arc::new(Flights {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hit_for_miss,
        })
    }

    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, HashMap<Bytes, Entry>> {
        // FNV-1a: cheap, and keys are ours (no attacker-chosen collisions
        // beyond one shard's lock).
        let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        self.shards[(h as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the flight for `key`, or leads a new one.
    pub fn join(self: &Arc<Self>, key: &Bytes) -> Join {
        let now = Instant::now();
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some(Entry::Flight(tx)) => return Join::Wait(tx.subscribe()),
            Some(Entry::HitForMiss(until)) if *until > now => return Join::Pass,
            _ => {}
        }
        if shard.len() >= SWEEP_AT {
            shard.retain(|_, e| !matches!(e, Entry::HitForMiss(until) if *until <= now));
        }
        let (tx, _) = watch::channel(None);
        shard.insert(key.clone(), Entry::Flight(tx));
        Join::Lead(FlightGuard {
            flights: self.clone(),
            key: key.clone(),
            done: false,
        })
    }

    /// Leads a background refresh of `key` unless a fetch of it is already
    /// in flight (a stale-while-revalidate refresh runs once).
    pub fn refresh(self: &Arc<Self>, key: &Bytes) -> Option<FlightGuard> {
        match self.join(key) {
            Join::Lead(guard) => Some(guard),
            Join::Wait(_) | Join::Pass => None,
        }
    }

    /// Drops `key`'s hit-for-miss mark, if it has one (a cacheable answer
    /// was stored after all).
    pub fn forget(&self, key: &Bytes) {
        let mut shard = self.shard(key);
        if matches!(shard.get(key), Some(Entry::HitForMiss(_))) {
            shard.remove(key);
        }
    }

    /// Flights and hit-for-miss marks held now.
    pub fn held(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    fn end(&self, key: &Bytes, outcome: Outcome) {
        let mut shard = self.shard(key);
        let entry = shard.remove(key);
        if matches!(outcome, Outcome::Uncacheable) && !self.hit_for_miss.is_zero() {
            shard.insert(key.clone(), Entry::HitForMiss(Instant::now() + self.hit_for_miss));
        }
        drop(shard);
        if let Some(Entry::Flight(tx)) = entry {
            tx.send_replace(Some(outcome));
        }
    }
}

/// The leader's hold on a flight. Dropping it without [`finish`](Self::finish)
/// releases the waiters as [`Outcome::Abandoned`].
pub struct FlightGuard {
    flights: Arc<Flights>,
    key: Bytes,
    done: bool,
}

impl FlightGuard {
    /// Ends the flight: waiters get `outcome`; an uncacheable one marks the
    /// key hit-for-miss.
    pub fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.flights.end(&self.key, outcome);
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.done {
            self.flights.end(&self.key, Outcome::Abandoned);
        }
    }
}

/// Waits for a flight's outcome, at most `patience`; `None` when it did not
/// come in time (the waiter then fetches for itself).
pub async fn wait(mut rx: watch::Receiver<Option<Outcome>>, patience: Duration) -> Option<Outcome> {
    let got = tokio::time::timeout(patience, rx.wait_for(Option::is_some)).await;
    match got {
        Ok(Ok(v)) => v.clone(),
        // The sender went away without a value: only if the guard was
        // leaked; treat as abandoned.
        Ok(Err(_)) => Some(Outcome::Abandoned),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn one_leads_and_the_others_wait_for_its_outcome() {
        let f = Flights::new(Duration::from_secs(60));
        let Join::Lead(guard) = f.join(&key("a")) else {
            panic!("first leads")
        };
        let waiters: Vec<_> = (0..3)
            .map(|_| match f.join(&key("a")) {
                Join::Wait(rx) => rx,
                _ => panic!("later ones wait"),
            })
            .collect();
        assert!(
            matches!(f.join(&key("b")), Join::Lead(_)),
            "another key is its own flight"
        );
        guard.finish(Outcome::Failed(502));
        for rx in waiters {
            assert!(matches!(
                wait(rx, Duration::from_secs(5)).await,
                Some(Outcome::Failed(502))
            ));
        }
        assert!(
            matches!(f.join(&key("a")), Join::Lead(_)),
            "a failure leaves no mark"
        );
    }

    #[tokio::test]
    async fn uncacheable_marks_hit_for_miss_and_a_dropped_leader_abandons() {
        let f = Flights::new(Duration::from_secs(60));
        let Join::Lead(guard) = f.join(&key("a")) else {
            panic!()
        };
        let Join::Wait(rx) = f.join(&key("a")) else {
            panic!()
        };
        guard.finish(Outcome::Uncacheable);
        assert!(matches!(
            wait(rx, Duration::from_secs(5)).await,
            Some(Outcome::Uncacheable)
        ));
        assert!(
            matches!(f.join(&key("a")), Join::Pass),
            "hit-for-miss: no queueing"
        );
        assert!(f.refresh(&key("a")).is_none());

        let Join::Lead(guard) = f.join(&key("c")) else {
            panic!()
        };
        let Join::Wait(rx) = f.join(&key("c")) else {
            panic!()
        };
        drop(guard);
        assert!(matches!(
            wait(rx, Duration::from_secs(5)).await,
            Some(Outcome::Abandoned)
        ));
    }

    #[tokio::test]
    async fn a_refresh_runs_once_and_a_wait_is_bounded() {
        let f = Flights::new(Duration::ZERO);
        let g = f.refresh(&key("a")).expect("first refresh leads");
        assert!(f.refresh(&key("a")).is_none(), "second refresh is not started");
        let Join::Wait(rx) = f.join(&key("a")) else {
            panic!()
        };
        assert!(wait(rx, Duration::from_millis(10)).await.is_none());
        g.finish(Outcome::Uncacheable);
        assert!(
            matches!(f.join(&key("a")), Join::Lead(_)),
            "zero hit-for-miss: no mark"
        );
    }
}
