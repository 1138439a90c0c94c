//! Which node is the primary: the election the prober runs after each
//! round of probes, and the fencing of the nodes that lose it.

/// One node's answer to [`super::probe::PROBE_SQL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Observation {
    /// `pg_is_in_recovery()`: a standby replaying WAL.
    pub in_recovery: bool,
    /// The node's timeline (see [`super::probe::PROBE_SQL`]).
    pub timeline: u32,
    /// `pg_current_wal_lsn()`, on a node out of recovery.
    pub wal_lsn: Option<u64>,
    /// `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<u64>,
    /// `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<u64>,
}

/// The outcome of an election among the nodes' answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Election {
    /// The node elected, if any claims to be primary on a high enough
    /// timeline.
    pub primary: Option<usize>,
    /// Per node: claims to be primary but is not the one.
    pub fenced: Vec<bool>,
}

/// Picks the primary among the nodes that answered and are not in
/// recovery: the highest timeline wins (a promoted replica beats the old
/// primary it replaced), then the `incumbent`, then the furthest WAL
/// position, then the first in the list. A claimant on a timeline below
/// `fence` (the highest ever elected) cannot win. Every other claimant is
/// fenced.
pub(super) fn elect(seen: &[Option<Observation>], incumbent: Option<usize>, fence: u32) -> Election {
    let primary = seen
        .iter()
        .enumerate()
        .filter_map(|(i, o)| {
            o.filter(|o| !o.in_recovery && o.timeline >= fence)
                .map(|o| (i, o))
        })
        .max_by_key(|&(i, o)| {
            (
                o.timeline,
                incumbent == Some(i),
                o.wal_lsn.unwrap_or(0),
                std::cmp::Reverse(i),
            )
        })
        .map(|(i, _)| i);
    let fenced = seen
        .iter()
        .enumerate()
        .map(|(i, o)| o.is_some_and(|o| !o.in_recovery) && primary != Some(i))
        .collect();
    Election { primary, fenced }
}

#[cfg(test)]
pub(super) mod fixtures {
    use super::Observation;

    /// A primary's answer, for tests.
    pub(in crate::router) fn primary(timeline: u32, wal: u64) -> Option<Observation> {
        Some(Observation {
            in_recovery: false,
            timeline,
            wal_lsn: Some(wal),
            replay_lsn: None,
            receive_lsn: None,
        })
    }

    /// A replica's answer, for tests.
    pub(in crate::router) fn replica(timeline: u32, replay: u64) -> Option<Observation> {
        Some(Observation {
            in_recovery: true,
            timeline,
            wal_lsn: None,
            replay_lsn: Some(replay),
            receive_lsn: Some(replay),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{primary, replica};
    use super::*;

    #[test]
    fn the_one_node_out_of_recovery_is_primary() {
        let e = elect(&[replica(1, 5), primary(1, 9), None], None, 0);
        assert_eq!(e.primary, Some(1));
        assert_eq!(e.fenced, vec![false, false, false]);
        let e = elect(&[replica(1, 5), None], None, 0);
        assert_eq!(e.primary, None, "replicas only");
    }

    #[test]
    fn an_old_primary_back_after_a_failover_is_fenced() {
        // Node 0 came back on timeline 1; node 1 was promoted to timeline 2.
        let seen = [primary(1, 1_000_000), primary(2, 10), replica(2, 10)];
        let e = elect(&seen, None, 0);
        assert_eq!(e.primary, Some(1), "the highest timeline wins, whatever the LSN");
        assert_eq!(e.fenced, vec![true, false, false]);
        // Even alone (the new primary briefly unreachable), it stays fenced.
        let e = elect(&[primary(1, 1_000_000), None, replica(2, 10)], Some(1), 2);
        assert_eq!(e.primary, None);
        assert_eq!(e.fenced, vec![true, false, false]);
    }

    #[test]
    fn ties_keep_the_incumbent_then_the_furthest() {
        let seen = [primary(2, 5), primary(2, 9)];
        assert_eq!(elect(&seen, Some(0), 2).primary, Some(0));
        assert_eq!(elect(&seen, None, 2).primary, Some(1));
        assert_eq!(elect(&[primary(2, 5), primary(2, 5)], None, 0).primary, Some(0));
    }
}
