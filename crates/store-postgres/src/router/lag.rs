//! Replication lag in time, measured without trusting any clock but the
//! router's: when the primary was first seen at each WAL position, so how
//! long it has been past what a replica has replayed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The primary's WAL positions kept for measuring lag: at most this many...
const HISTORY_MAX_ENTRIES: usize = 8192;
/// ...and none older than this (a replica behind all of them has a lag of
/// at least this, far above any sensible ceiling).
const HISTORY_MAX_AGE: Duration = Duration::from_secs(600);

/// When the prober first saw the primary at each WAL position, oldest
/// first, positions strictly increasing.
#[derive(Debug, Default)]
pub(super) struct LagHistory {
    seen: VecDeque<(u64, Instant)>,
}

impl LagHistory {
    /// Records the primary at `lsn` at `now` (if it moved).
    pub fn observe(&mut self, lsn: u64, now: Instant) {
        if self.seen.back().is_none_or(|&(last, _)| lsn > last) {
            self.seen.push_back((lsn, now));
        }
        while self.seen.len() > HISTORY_MAX_ENTRIES
            || (self.seen.len() > 1
                && self
                    .seen
                    .front()
                    .is_some_and(|&(_, at)| now.saturating_duration_since(at) > HISTORY_MAX_AGE))
        {
            self.seen.pop_front();
        }
    }

    /// The primary's last known position.
    pub fn latest(&self) -> Option<u64> {
        self.seen.back().map(|&(lsn, _)| lsn)
    }

    /// How long the primary has been past `replayed`: since it was first
    /// seen at a position beyond it; zero if it never was. `None` when
    /// `replayed` is behind every position seen: the lag is then unknown
    /// (at least the history's span, which after a start or a failover may
    /// be a moment while the replica is hours behind), so the replica must
    /// not count as caught up.
    pub fn lag(&self, replayed: u64, now: Instant) -> Option<Duration> {
        let first_ahead = self.seen.partition_point(|&(lsn, _)| lsn <= replayed);
        if first_ahead == 0 && !self.seen.is_empty() {
            return None;
        }
        Some(
            self.seen
                .get(first_ahead)
                .map_or(Duration::ZERO, |&(_, at)| now.saturating_duration_since(at)),
        )
    }

    pub fn clear(&mut self) {
        self.seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_how_long_the_primary_has_been_ahead() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut h = LagHistory::default();
        assert_eq!(h.lag(0, t0), Some(Duration::ZERO), "nothing known");
        h.observe(100, t0);
        h.observe(100, t0 + ms(50)); // unchanged: the first sighting counts
        h.observe(200, t0 + ms(100));
        h.observe(300, t0 + ms(200));
        let now = t0 + ms(1000);
        assert_eq!(h.latest(), Some(300));
        assert_eq!(h.lag(300, now), Some(Duration::ZERO), "caught up");
        assert_eq!(h.lag(400, now), Some(Duration::ZERO), "ahead of what we saw");
        assert_eq!(h.lag(250, now), Some(ms(800)), "behind since 300 appeared");
        assert_eq!(h.lag(200, now), Some(ms(800)));
        assert_eq!(h.lag(199, now), Some(ms(900)), "behind since 200 appeared");
        assert_eq!(h.lag(100, now), Some(ms(900)));
        // Behind the first sighting: how far behind is unknown, not small.
        assert_eq!(h.lag(99, now), None);
        assert_eq!(h.lag(0, now), None);
        // An idle primary: a caught-up replica's lag stays zero for ever.
        assert_eq!(h.lag(300, now + Duration::from_secs(3600)), Some(Duration::ZERO));
        h.clear();
        assert_eq!((h.latest(), h.lag(0, now)), (None, Some(Duration::ZERO)));
    }

    #[test]
    fn lag_history_is_bounded() {
        let t0 = Instant::now();
        let mut h = LagHistory::default();
        for i in 0..(HISTORY_MAX_ENTRIES as u64 + 10) {
            h.observe(i + 1, t0);
        }
        assert_eq!(h.seen.len(), HISTORY_MAX_ENTRIES);
        let later = t0 + HISTORY_MAX_AGE + Duration::from_secs(1);
        h.observe(u64::MAX, later);
        assert_eq!(h.seen.len(), 1, "old positions age out, the newest stays");
        assert_eq!(
            h.lag(0, later),
            None,
            "behind every position kept: at least their age"
        );
    }
}
