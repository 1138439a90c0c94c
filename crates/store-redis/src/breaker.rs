//! A circuit breaker in front of Redis, so that an outage costs each request
//! a fast error instead of a connect timeout.
//!
//! Closed, every call goes through. The first transport failure opens the
//! breaker for the minimum back-off; while it is open calls are *skipped*
//! (refused at once). When the back-off has passed, exactly one call is let
//! through as a probe: if it succeeds the breaker closes and the back-off is
//! reset, if it fails the breaker opens again for twice as long, up to the
//! maximum. Only probes lengthen the back-off, so a burst of requests that
//! were all in flight when Redis died opens the breaker once, not N times.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counters of the breaker, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Calls that reached Redis (or tried to) and failed, timeouts included.
    pub failures: u64,
    /// Calls refused without trying Redis because the breaker was open.
    pub skips: u64,
    /// Whether the breaker is open right now (Redis considered down).
    pub open: bool,
}

struct State {
    /// `Some` while open: calls are skipped until then.
    open_until: Option<Instant>,
    /// How long the next opening lasts.
    backoff: Duration,
    /// A probe is in flight; everyone else is skipped meanwhile.
    probing: bool,
}

pub(crate) struct Breaker {
    min: Duration,
    max: Duration,
    state: Mutex<State>,
    failures: AtomicU64,
    skips: AtomicU64,
}

/// The right to make one call; report its outcome with [`Permit::success`]
/// or [`Permit::failure`]. A permit dropped without an outcome (the caller's
/// future was cancelled) leaves the breaker as it was, and frees the probe
/// slot so that the next call can probe.
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    /// A closed breaker whose back-off starts at `min` and doubles to `max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Breaker {
            min,
            max: max.max(min),
            state: Mutex::new(State {
                open_until: None,
                backoff: min,
                probing: false,
            }),
            failures: AtomicU64::new(0),
            skips: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is three plain fields updated without panicking code in
        // between, so a poisoned lock still guards a consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit to call Redis at `now`, or `None` if the call must be skipped.
    pub(crate) fn admit(&self, now: Instant) -> Option<Permit<'_>> {
        let mut state = self.lock();
        let probe = match state.open_until {
            None => false,
            Some(until) if now < until || state.probing => {
                drop(state);
                self.skips.fetch_add(1, Relaxed);
                return None;
            }
            Some(_) => {
                state.probing = true;
                true
            }
        };
        Some(Permit {
            breaker: self,
            probe,
            reported: false,
        })
    }

    /// Counts a failed call that does not say anything about Redis being
    /// reachable (for example an error reply).
    pub(crate) fn count_failure(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    /// Current counters.
    pub(crate) fn stats(&self) -> RedisStats {
        RedisStats {
            failures: self.failures.load(Relaxed),
            skips: self.skips.load(Relaxed),
            open: self.lock().open_until.is_some(),
        }
    }
}

impl Permit<'_> {
    /// Redis answered.
    pub(crate) fn success(mut self) {
        self.reported = true;
        if !self.probe {
            // A call admitted while closed changes nothing: either the
            // breaker is still closed, or a later failure opened it and only
            // a probe may close it again.
            return;
        }
        let mut state = self.breaker.lock();
        state.open_until = None;
        state.backoff = self.breaker.min;
        state.probing = false;
        drop(state);
        tracing::info!("redis is reachable again; circuit breaker closed");
    }

    /// Redis could not be reached or did not answer in time, at `now`.
    pub(crate) fn failure(mut self, now: Instant) {
        self.reported = true;
        self.breaker.failures.fetch_add(1, Relaxed);
        let mut state = self.breaker.lock();
        if !self.probe && state.open_until.is_some() {
            // Another in-flight call already opened the breaker.
            return;
        }
        let backoff = state.backoff;
        state.open_until = Some(now + backoff);
        state.backoff = (backoff * 2).min(self.breaker.max);
        state.probing = false;
        drop(state);
        tracing::warn!(
            backoff_ms = backoff.as_millis() as u64,
            "redis unavailable; circuit breaker open"
        );
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.lock().probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn breaker() -> Breaker {
        Breaker::new(500 * MS, 5000 * MS)
    }

    #[test]
    fn closed_breaker_admits_everything() {
        let b = breaker();
        let now = Instant::now();
        for _ in 0..3 {
            b.admit(now).unwrap().success();
        }
        assert_eq!(b.stats(), RedisStats::default());
    }

    #[test]
    fn failure_opens_then_one_probe_closes() {
        let b = breaker();
        let t0 = Instant::now();
        b.admit(t0).unwrap().failure(t0);
        assert!(b.stats().open);
        assert!(b.admit(t0 + 499 * MS).is_none());
        let probe = b.admit(t0 + 500 * MS).unwrap();
        // Only one probe at a time.
        assert!(b.admit(t0 + 501 * MS).is_none());
        probe.success();
        assert!(!b.stats().open);
        assert!(b.admit(t0 + 502 * MS).is_some());
        assert_eq!(
            b.stats(),
            RedisStats {
                failures: 1,
                skips: 2,
                open: false
            }
        );
    }

    #[test]
    fn failed_probes_double_the_backoff_up_to_the_max() {
        let b = breaker();
        let mut now = Instant::now();
        b.admit(now).unwrap().failure(now);
        let mut waits = Vec::new();
        for _ in 0..6 {
            // Find when the next probe is admitted, in 100 ms steps.
            let start = now;
            let probe = loop {
                now += 100 * MS;
                if let Some(p) = b.admit(now) {
                    break p;
                }
            };
            waits.push((now - start).as_millis());
            probe.failure(now);
        }
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
    }

    #[test]
    fn in_flight_failures_open_only_once() {
        let b = breaker();
        let t0 = Instant::now();
        let permits: Vec<_> = (0..5).map(|_| b.admit(t0).unwrap()).collect();
        for p in permits {
            p.failure(t0);
        }
        assert_eq!(b.stats().failures, 5);
        // Still the minimum back-off.
        assert!(b.admit(t0 + 500 * MS).is_some());
    }

    #[test]
    fn cancelled_probe_frees_the_slot() {
        let b = breaker();
        let t0 = Instant::now();
        b.admit(t0).unwrap().failure(t0);
        drop(b.admit(t0 + 600 * MS).unwrap());
        assert!(b.stats().open);
        assert!(b.admit(t0 + 601 * MS).is_some());
    }
}
